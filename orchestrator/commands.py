"""`leap run` and `leap report`."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


def configure(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run LEAP end to end (starts the services it needs)",
                         description="Run LEAP: baseline, BC (iteration 0), LEAP iterations, evaluation, report. "
                                     "Services without an address in the config are started locally.")
    run.add_argument("--config", help="YAML run config, layered over the preset (default: the default preset)")
    run.add_argument("--preset", help="named preset: default (the full run) or smoke (a tiny one)")
    run.add_argument("--run-dir", help="where the run is written (default runs/<preset>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run at its first unfinished phase")
    run.add_argument("--platform", choices=["local", "kubernetes"], default="local",
                     help="local: start/use services by address; kubernetes: trainer Jobs and replica hot swap "
                          "through the Kubernetes API")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--audit-student-inputs", metavar="FILE",
                     help="append every request sent to the student (JSON lines) to FILE, for privacy audits")
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="print the results table of a run again")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from orchestrator.config import load_config, load_snapshot
    from orchestrator.episodes import ServiceStubs
    from orchestrator.launcher import LocalServices
    from orchestrator.loop import LeapRun
    from orchestrator.progress import ProgressReporter
    from orchestrator.report import print_report
    from services.runtime.logs import configure_logging

    configure_logging("warning", "text")
    console = Console()
    if args.resume:
        run_dir = Path(args.resume)
        snapshot = run_dir / "config.yaml"
        if not snapshot.exists():
            console.print(f"[red]{run_dir} is not a run directory (no config.yaml)")
            return 2
        config = load_config(args.config, args.preset) if args.config else load_snapshot(snapshot)
    else:
        config = load_config(args.config, args.preset)
        run_dir = Path(args.run_dir or f"runs/{config.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    LeapRun.prepare_run_dir(run_dir, config, resume=bool(args.resume))
    reporter = ProgressReporter(console, enabled=not args.quiet)
    reporter.note(f"[bold]LEAP run[/] {config.name} -> {run_dir}")
    services = LocalServices(run_dir)
    started = time.monotonic()
    if args.platform == "kubernetes":
        missing = [name for name, addr in (("environment", config.environment.address),
                                           ("student", config.student.address),
                                           ("teacher", config.teacher.address)) if not addr]
        if missing:
            console.print(f"[red]--platform kubernetes needs the address of: {', '.join(missing)} "
                          "(set environment.address, student.address, teacher.address in the config)")
            return 2
    try:
        with console.status("starting services (the student loads its model)..."):
            addresses = services.start(config, start_trainer=args.platform != "kubernetes")
        reporter.note("services: " + ", ".join(f"{k} {v}" for k, v in addresses.items()))
        stubs = ServiceStubs(addresses)
        try:
            platform = None
            if args.platform == "kubernetes":
                from orchestrator.platforms.kubernetes import KubernetesPlatform

                platform = KubernetesPlatform.from_environment()
            leap = LeapRun(config, run_dir, stubs, reporter, platform=platform,
                           act_hook=_audit_hook(args.audit_student_inputs) if args.audit_student_inputs else None)
            if args.platform == "kubernetes":
                from orchestrator.platforms.kubernetes import (
                    install_termination_handler,
                    use_health_checked_student_channel,
                )

                use_health_checked_student_channel(leap)
                install_termination_handler(platform, leap.run_label)
            results = leap.run()
        finally:
            stubs.close()
    finally:
        services.stop()
    print_report(results, console)
    console.print(f"took {time.monotonic() - started:.0f}s; results: {run_dir / 'results.md'}, "
                  f"plot: {run_dir / 'results.png'}")
    logging.getLogger("leap").info("run finished")
    return 0


def _audit_hook(path: str):
    import json
    import threading

    from google.protobuf import json_format

    lock = threading.Lock()

    def record(item) -> None:
        line = json.dumps(json_format.MessageToDict(item), sort_keys=True)
        with lock, open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    return record


def cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from orchestrator.config import load_snapshot
    from orchestrator.report import collect_results, print_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").exists():
        Console().print(f"[red]{run_dir} is not a run directory (no config.yaml)")
        return 2
    config = load_snapshot(run_dir / "config.yaml")
    print_report(collect_results(run_dir, config), Console())
    return 0
