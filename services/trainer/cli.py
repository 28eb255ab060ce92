"""`leap trainer serve`: the trainer service. Imports nothing heavy at module level."""

from __future__ import annotations

import argparse
import os

from services.runtime.config import add_server_arguments, env_default

DEFAULT_PORT = 50081


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="trainer_command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve leap.v1.TrainerService (LoRA SFT / DPO / KTO jobs)",
                           description="Run fine-tuning jobs one at a time on one device, persisted under "
                                       "--state-dir, writing versioned checkpoints under each job's run directory.")
    serve.add_argument("--runs-dir", default=env_default("runs-dir", "runs"),
                       help="shared run root: relative dataset paths and run_dir values resolve under it, and a "
                            "job without run_dir writes its checkpoints here [LEAP_RUNS_DIR]")
    serve.add_argument("--state-dir", default=env_default("state-dir", ""),
                       help="job store (one JSON file per job); default <runs-dir>/.trainer [LEAP_STATE_DIR]")
    serve.add_argument("--device", default=env_default("device", "auto"), choices=["auto", "cpu", "cuda", "mps"],
                       help="where jobs train; auto picks cuda when available [LEAP_DEVICE]")
    serve.add_argument("--max-dataset-mb", type=float, default=env_default("max-dataset-mb", 512.0),
                       help="largest dataset file accepted, in MiB [LEAP_MAX_DATASET_MB]")
    serve.add_argument("--max-dataset-rows", type=int, default=env_default("max-dataset-rows", 1_000_000),
                       help="most rows in one dataset file [LEAP_MAX_DATASET_ROWS]")
    serve.add_argument("--watch-workers", type=int, default=env_default("watch-workers", 64),
                       help="WatchJob streams served at once, on threads of their own (more wait until one "
                            "closes); health and control calls keep the --max-workers threads [LEAP_WATCH_WORKERS]")
    add_server_arguments(serve, DEFAULT_PORT)
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from services.runtime.config import ServerConfig
    from services.runtime.logs import configure_logging
    from services.runtime.server import serve_forever
    from services.trainer.datasets import DatasetLimits
    from services.trainer.server import create_service, registrations
    from services.trainer.store import StateDirInUse

    config = ServerConfig.from_args(args)
    configure_logging(config.log_level, config.log_format)
    runs_dir = os.path.abspath(args.runs_dir)
    state_dir = args.state_dir or os.path.join(runs_dir, ".trainer")
    try:
        limits = DatasetLimits(max_bytes=int(args.max_dataset_mb * 1024 * 1024), max_rows=args.max_dataset_rows)
        service = create_service(state_dir, runs_dir, device=args.device, dataset_limits=limits)
    except StateDirInUse as exc:
        raise SystemExit(f"leap trainer serve: {exc}") from exc
    return serve_forever(
        config, registrations(service, watch_threads=args.watch_workers), label="trainer",
        on_shutdown=[lambda: service.runner.shutdown(timeout=config.grace_seconds), service.store.close],
    )
