"""Environment service throughput: the household engine, the service in-process, and over loopback gRPC.

    .venv/bin/python bench/environment_bench.py [--episodes 200] [--repeats 3]

One fixed workload is recorded first: seeded train tasks, each played by the prior searcher with 30 %
random candidate actions mixed in (so episodes contain wrong turns and "Nothing happens."), up to the
default horizon. The very same action lists are then replayed:

1. engine      the backend's episodes directly (the raw library call, no service);
2. in-process  through EnvironmentSessions (validation, locks, session table): no transport;
3. grpc        through EnvironmentClient over loopback to a server in a separate process
               (`leap env serve`), one session at a time;
4. concurrent  1, 8 and 32 client threads, each with its own sessions, against that server:
               aggregate steps/s.

Plus the privileged side the teacher uses per corrected step: GetExpertActions (planner) over gRPC.
Steps/s count Step calls (Reset and Close are timed too but not counted as steps). Each figure is
the median of --repeats runs. Results go to bench/results/environment.json and environment.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from services.environment.backends.household import ENGINE, HouseholdBackend  # noqa: E402
from services.environment.backends.household.experts import PRIOR_SEARCHER, advise  # noqa: E402
from services.environment.client import EnvironmentClient, PrivilegedClient, task_ref  # noqa: E402
from services.environment.service import EnvironmentSessions  # noqa: E402
from services.runtime.files import atomic_write_json, atomic_write_text  # noqa: E402

TOKEN = "bench-token"


def record_workload(backend: HouseholdBackend, episodes: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    workload = []
    for i in range(episodes):
        task_id = f"train-{i:05d}"
        episode = backend.start(task_id, 0)
        obs = episode.reset()
        actions = []
        while not obs.done:
            if rng.random() < 0.3:
                action = rng.choice(obs.candidates)
            else:
                action = advise(episode.scene, episode.state, episode.knowledge, PRIOR_SEARCHER).next_action
            obs = episode.step(action)
            actions.append(action)
        workload.append((task_id, actions))
    return workload


def run_engine(backend, workload) -> float:
    start = time.perf_counter()
    for task_id, actions in workload:
        episode = backend.start(task_id, 0)
        episode.reset()
        for action in actions:
            episode.step(action)
    return time.perf_counter() - start


def run_in_process(sessions: EnvironmentSessions, workload) -> float:
    start = time.perf_counter()
    for task_id, actions in workload:
        r = sessions.reset("household", task_id=task_id)
        for action in actions:
            sessions.step(r.session_id, action)
        sessions.close(r.session_id)
    return time.perf_counter() - start


def run_grpc(client: EnvironmentClient, workload) -> float:
    start = time.perf_counter()
    for task_id, actions in workload:
        r = client.reset("household", task_id=task_id)
        for action in actions:
            client.step(r.session_id, action)
        client.close_session(r.session_id)
    return time.perf_counter() - start


def run_concurrent(address: str, workload, threads: int) -> tuple[float, int]:
    """Each thread replays its share of the workload (round robin) on its own sessions."""
    shares = [workload[k::threads] for k in range(threads)]
    # Enough episodes per thread to keep every thread busy.
    shares = [share or workload[:1] for share in shares]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)
    clients = [EnvironmentClient(address, timeout_s=60) for _ in range(min(threads, 8))]

    def worker(k: int) -> None:
        client = clients[k % len(clients)]
        barrier.wait()
        try:
            run_grpc(client, shares[k])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    for client in clients:
        client.close()
    if errors:
        raise errors[0]
    return elapsed, sum(len(a) for share in shares for _, a in share)


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    port_file = tmp / "port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAP_")}
    env.update(PYTHONPATH=str(ROOT), LEAP_PRIVILEGED_TOKEN=TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "env", "serve", "--port", "0",
                             "--port-file", str(port_file), "--log-level", "warning", "--max-workers", "48",
                             "--max-sessions", "4096"],
                            cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("the environment server did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{int(port_file.read_text())}"


def median_rate(fn, steps: int, repeats: int) -> dict:
    times = [fn() for _ in range(repeats)]
    med = statistics.median(times)
    return {"steps": steps, "seconds_median": round(med, 4), "steps_per_s": round(steps / med, 1),
            "seconds_all": [round(t, 4) for t in times]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "environment.json"))
    args = parser.parse_args(argv)

    backend = HouseholdBackend()
    workload = record_workload(backend, args.episodes)
    steps = sum(len(actions) for _, actions in workload)
    results: dict = {}

    run_engine(backend, workload)  # warm the task cache for everyone
    results["engine"] = median_rate(lambda: run_engine(backend, workload), steps, args.repeats)
    sessions = EnvironmentSessions({"household": backend})
    results["in_process"] = median_rate(lambda: run_in_process(sessions, workload), steps, args.repeats)
    sessions.stop()

    with tempfile.TemporaryDirectory() as tmp:
        proc, address = start_server(Path(tmp))
        try:
            with EnvironmentClient(address, timeout_s=60) as client:
                client.wait_ready()
                run_grpc(client, workload[:20])  # warm up the channel and the server's task cache
                results["grpc_loopback"] = median_rate(lambda: run_grpc(client, workload), steps, args.repeats)
            concurrency = {}
            for threads in (1, 8, 32):
                runs = [run_concurrent(address, workload, threads) for _ in range(args.repeats)]
                elapsed = statistics.median(t for t, _ in runs)
                total = runs[0][1]
                concurrency[str(threads)] = {"sessions": threads, "steps": total,
                                             "seconds_median": round(elapsed, 4),
                                             "steps_per_s": round(total / elapsed, 1)}
            results["grpc_concurrent"] = concurrency
            with PrivilegedClient(address, TOKEN, timeout_s=60) as oracle:
                calls = [(task_id, actions[:k]) for task_id, actions in workload[:50]
                         for k in range(0, len(actions), 3)]

                def advice_run():
                    start = time.perf_counter()
                    for task_id, history in calls:
                        oracle.expert_actions(task_ref("household", task_id), history, "planner")
                    return time.perf_counter() - start
                advice = median_rate(advice_run, len(calls), args.repeats)
                advice["calls"] = advice.pop("steps")
                advice["calls_per_s"] = advice.pop("steps_per_s")
                results["privileged_expert_actions_grpc"] = advice
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    ratios = {
        "in_process_over_engine": round(results["in_process"]["steps_per_s"] / results["engine"]["steps_per_s"], 3),
        "grpc_over_in_process": round(results["grpc_loopback"]["steps_per_s"]
                                      / results["in_process"]["steps_per_s"], 4),
        "in_process_speedup_over_grpc": round(results["in_process"]["steps_per_s"]
                                              / results["grpc_loopback"]["steps_per_s"], 1),
    }
    report = {
        "benchmark": "environment",
        "engine": ENGINE,
        "workload": {"episodes": args.episodes, "steps": steps, "repeats": args.repeats,
                     "policy": "prior searcher with 30% random candidates, default horizon 20",
                     "mean_steps_per_episode": round(steps / args.episodes, 2)},
        "machine": {"python": platform.python_version(), "grpc": grpc.__version__, "cpus": os.cpu_count(),
                    "platform": platform.platform(), "note": "shared 2-core machine; figures vary ~15% run to run"},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
        "ratios": ratios,
    }
    out = Path(args.out)
    atomic_write_json(out, report)
    atomic_write_text(out.with_suffix(".md"), to_markdown(report))
    print(to_markdown(report))
    return 0


def to_markdown(report: dict) -> str:
    r = report["results"]
    w = report["workload"]
    m = report["machine"]
    ratios = report["ratios"]

    def row(path: str, rate: str, seconds: float) -> str:
        return f"| {path} | {rate} | {seconds} |"

    lines = [
        f"# Environment service benchmark ({report['engine']})",
        "",
        f"{w['episodes']} seeded train episodes, {w['steps']} steps ({w['policy']}); median of {w['repeats']} "
        f"runs; Python {m['python']}, grpcio {m['grpc']}, {m['cpus']} CPUs ({m['note']}). {report['timestamp']}.",
        "",
        "| path | steps/s | seconds |",
        "| --- | ---: | ---: |",
        row("engine (HouseholdEpisode.step, the raw library call)", f"{r['engine']['steps_per_s']:,.0f}",
            r["engine"]["seconds_median"]),
        row("service in-process (EnvironmentSessions)", f"{r['in_process']['steps_per_s']:,.0f}",
            r["in_process"]["seconds_median"]),
        row("gRPC loopback, 1 session at a time", f"{r['grpc_loopback']['steps_per_s']:,.0f}",
            r["grpc_loopback"]["seconds_median"]),
    ]
    for key, c in r["grpc_concurrent"].items():
        lines.append(row(f"gRPC loopback, {key} concurrent sessions (aggregate)", f"{c['steps_per_s']:,.0f}",
                         c["seconds_median"]))
    p = r["privileged_expert_actions_grpc"]
    lines += [
        row("GetExpertActions (planner, replayed history) over gRPC", f"{p['calls_per_s']:,.0f} calls/s",
            p["seconds_median"]),
        "",
        f"Ratios: service in-process / engine = {ratios['in_process_over_engine']}; gRPC / in-process = "
        f"{ratios['grpc_over_in_process']} (in-process is {ratios['in_process_speedup_over_grpc']}x faster than "
        "one gRPC session).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
