"""The real benchmark engines beside household: steps/s over gRPC, expert demonstrations, parity.

    .venv/bin/python bench/alfworld_bench.py [--tasks 50] [--episodes 10] [--cache DIR]

One `leap env serve` process hosts household, alfworld (household tasks exported as ALFWorld game
folders: `--tasks` valid_unseen tasks, a few train tasks) and textworld (tw-cooking, treasure hunter,
tw-simple games made from seed 0). Then, in one run:

1. steps/s over loopback gRPC for each environment: `--episodes` train episodes of a seeded random
   walk over the candidates, up to 30 steps each (only Step calls are timed), beside the raw engine
   call on the very same actions in this process (household: HouseholdEpisode.step; alfworld: the
   Engine (TextWorld PddlEnv) step; textworld: TextWorld's env.step);
2. GetDemonstration with the planner on every exported valid_unseen task (ALFWorld engine): wins;
3. GetDemonstration with the searcher (ALFWorld's hand-coded expert), horizon 50: its win rate;
4. GetExpertActions over a growing history (what the oracle teacher calls at every step): calls/s;
5. parity over the same tasks: the household planner's plan wins each exported game in the ALFWorld
   engine, and the command lists agree at every step except for the explained kinds of difference.
Results go to bench/results/alfworld.json and alfworld.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKEN = "bench-token"
HORIZON = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def walk(env, name: str, task_ids: list[str], seed: int) -> tuple[list[list[str]], int, float]:
    """Seeded random walks over gRPC; (actions per episode, steps, seconds spent in Step)."""
    rng = random.Random(seed)
    episodes, steps, spent = [], 0, 0.0
    for task_id in task_ids:
        reset = env.reset(name, task_id=task_id, horizon=HORIZON)
        obs, actions = reset.observation, []
        while not obs.done and obs.candidates:
            action = rng.choice(list(obs.candidates))
            start = time.perf_counter()
            obs = env.step(reset.session_id, action)
            spent += time.perf_counter() - start
            actions.append(action)
        env.close_session(reset.session_id)
        episodes.append(actions)
        steps += len(actions)
    return episodes, steps, spent


def raw_seconds(backend, task_ids: list[str], episodes: list[list[str]]) -> float:
    """The same actions through the backend's episodes in this process (engine steps only)."""
    spent = 0.0
    for task_id, actions in zip(task_ids, episodes):
        episode = backend.start(task_id, HORIZON)
        episode.reset()
        start = time.perf_counter()
        for action in actions:
            episode.step(action)
        spent += time.perf_counter() - start
        episode.close()
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=50, help="exported valid_unseen tasks (default 50)")
    parser.add_argument("--episodes", type=int, default=10, help="random-walk episodes per environment")
    parser.add_argument("--cache", default="", help="cache folder for exported and generated games (default: temp)")
    args = parser.parse_args()
    cache = Path(args.cache or tempfile.mkdtemp(prefix="leap-bench-engines-"))
    os.environ.setdefault("ALFWORLD_DATA", str(cache / "alfworld-data"))
    os.environ["LEAP_CACHE_DIR"] = str(cache)

    from services.environment.backends.alfworld import AlfworldBackend
    from services.environment.backends.alfworld import export, games
    from services.environment.backends.alfworld.engine import Engine
    from services.environment.backends.household import HouseholdBackend
    from services.environment.backends.household.generator import HouseholdConfig, TaskSet
    from services.environment.backends.textworld import TextWorldBackend
    from services.environment.client import EnvironmentClient, PrivilegedClient, task_ref
    from services.runtime.files import atomic_write_json, atomic_write_text

    alf_options = {"train_tasks": str(args.episodes), "valid_seen_tasks": "1", "valid_unseen_tasks": str(args.tasks)}
    tw_options = {"train_tasks": str(args.episodes), "valid_seen_tasks": "1", "valid_unseen_tasks": "3"}
    port = free_port()
    cmd = [sys.executable, "-m", "orchestrator.cli", "env", "serve", "--env", "household", "--env", "alfworld",
           "--env", "textworld", "--port", str(port), "--privileged-token", TOKEN]
    for env_name, options in (("alfworld", alf_options), ("textworld", tw_options)):
        for key, value in options.items():
            cmd += ["-o", f"{env_name}:{key}={value}"]
    started = time.perf_counter()
    server = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    results: dict = {}
    try:
        env = EnvironmentClient(f"127.0.0.1:{port}", timeout_s=600)
        env.wait_ready(timeout_s=600)
        results["server_start_s"] = round(time.perf_counter() - started, 1)
        oracle = PrivilegedClient(f"127.0.0.1:{port}", TOKEN, timeout_s=600)

        # In-process twins for the raw engine figures (same options, same cache: same games).
        twins = {"household": HouseholdBackend(), "alfworld": AlfworldBackend(**alf_options),
                 "textworld": TextWorldBackend(**tw_options)}

        # 1. steps/s
        gen_started = time.perf_counter()
        tw_ids = [t.task.task_id for t in env.list_tasks("textworld", "train")]  # makes the games
        results["textworld_generation_s"] = round(time.perf_counter() - gen_started, 1)
        ids = {"household": [f"train-{i:05d}" for i in range(args.episodes * 5)],
               "alfworld": [t.task.task_id for t in env.list_tasks("alfworld", "train")],
               "textworld": tw_ids}
        throughput = {}
        for name in ("household", "alfworld", "textworld"):
            episodes, steps, spent = walk(env, name, ids[name], seed=1)
            raw = raw_seconds(twins[name], ids[name], episodes)
            throughput[name] = {"episodes": len(episodes), "steps": steps, "grpc_steps_per_s": round(steps / spent, 1),
                                "engine_steps_per_s": round(steps / raw, 1) if raw else None}
            print(name, throughput[name], flush=True)
        results["throughput"] = throughput

        # 2-3. demonstrations on every exported valid_unseen task
        valid = [t.task.task_id for t in env.list_tasks("alfworld", "valid_unseen")]
        demos = {}
        for expert, horizon in (("planner", 0), ("searcher", 50)):
            wins, lengths, started = 0, [], time.perf_counter()
            for task_id in valid:
                demo = oracle.demonstration(task_ref("alfworld", task_id), expert, horizon=horizon)
                wins += demo.won
                lengths.append(len(demo.steps))
            demos[expert] = {"tasks": len(valid), "won": wins, "win_rate": round(wins / len(valid), 3),
                             "mean_steps": round(sum(lengths) / len(lengths), 2), "horizon": horizon or 50,
                             "seconds": round(time.perf_counter() - started, 1)}
            print(expert, demos[expert], flush=True)
        results["alfworld_demonstrations"] = demos
        tw_valid = [t.task.task_id for t in env.list_tasks("textworld", "valid_unseen")]
        tw_wins = sum(oracle.demonstration(task_ref("textworld", t), "planner").won for t in tw_valid + tw_ids)
        results["textworld_planner_demonstrations"] = {"tasks": len(tw_valid + tw_ids), "won": tw_wins}

        # 4. the teacher's pattern: advice after every prefix of a trajectory
        task_id = valid[0]
        demo = oracle.demonstration(task_ref("alfworld", task_id), "searcher", horizon=50)
        actions = [s.action for s in demo.steps]
        calls = {}
        for expert in ("planner", "searcher"):
            started = time.perf_counter()
            for k in range(len(actions) + 1):
                oracle.expert_actions(task_ref("alfworld", task_id), actions[:k], expert)
            calls[expert] = round((len(actions) + 1) / (time.perf_counter() - started), 1)
        results["alfworld_expert_actions_per_s_growing_history"] = calls

        # 5. parity over the same household tasks
        tasks = TaskSet(HouseholdConfig())
        engine = Engine()
        kinds: dict[str, int] = {}
        parity = {"tasks": 0, "household_plan_wins_in_alfworld": 0, "steps_compared": 0, "steps_identical": 0,
                  "steps_identical_but_help": 0, "unexplained": [], "same_plan_length": 0}
        root = Path(tempfile.mkdtemp(prefix="leap-parity-"))
        for i in range(args.tasks):
            scene = tasks.scene("valid_unseen", i)
            relative = export.folder_of(scene)
            export.write_folder(root / relative, export.export_scene(scene))
            info = games.read_game(root / relative, relative, "valid_unseen")
            engine.load(info.task_id, games.load_game_data(info))
            result = export.parity(scene, engine)
            parity["tasks"] += 1
            parity["household_plan_wins_in_alfworld"] += result.alfworld_won and not result.alfworld_won_before_end
            parity["steps_compared"] += len(result.plan)
            parity["steps_identical"] += len(result.plan) - len(result.differences)
            parity["steps_identical_but_help"] += len(result.plan) - sum(
                1 for d in result.differences if [c for c in d.only_household + d.only_alfworld if c != "help"])
            parity["same_plan_length"] += result.alfworld_plan_length == len(result.plan)
            parity["unexplained"] += [f"{info.task_id}: {u}" for u in result.unexplained]
            for kind, count in result.kinds.items():
                kinds[kind] = kinds.get(kind, 0) + count
        parity["explained_differences"] = kinds
        results["parity"] = parity
        print("parity", parity, flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "when": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    out = ROOT / "bench" / "results"
    atomic_write_json(out / "alfworld.json", results)
    t, d, p = results["throughput"], results["alfworld_demonstrations"], results["parity"]
    lines = [
        "# Real engines beside household (bench/alfworld_bench.py)", "",
        f"One `leap env serve` process with household, alfworld (household tasks exported as ALFWorld game folders) "
        f"and textworld (tw-cooking, treasure hunter, tw-simple from seed 0); Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs (shared machine; figures vary run to run). {results['machine']['when']}.", "",
        f"Seeded random walks over the candidates, {HORIZON} steps at most, train tasks; Step calls timed.", "",
        "| environment | episodes | steps | gRPC steps/s | raw engine steps/s |", "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in t.items():
        lines.append(f"| {name} | {row['episodes']} | {row['steps']} | {row['grpc_steps_per_s']:,} | "
                     f"{row['engine_steps_per_s']:,} |")
    lines += [
        "", f"ALFWorld engine, {d['planner']['tasks']} exported valid_unseen tasks:", "",
        f"- GetDemonstration, planner (fast-downward): {d['planner']['won']}/{d['planner']['tasks']} won, "
        f"{d['planner']['mean_steps']} steps on average;",
        f"- GetDemonstration, searcher (ALFWorld's hand-coded expert), horizon 50: {d['searcher']['won']}/"
        f"{d['searcher']['tasks']} won (win rate {d['searcher']['win_rate']:.0%}), {d['searcher']['mean_steps']} steps "
        "on average;",
        f"- GetExpertActions over a growing history (the oracle teacher's calls): "
        f"{results['alfworld_expert_actions_per_s_growing_history']} calls/s;",
        f"- TextWorld planner demonstrations: {results['textworld_planner_demonstrations']['won']}/"
        f"{results['textworld_planner_demonstrations']['tasks']} won.", "",
        f"Parity over the same {p['tasks']} tasks: the household planner's plan wins "
        f"{p['household_plan_wins_in_alfworld']}/{p['tasks']} in the ALFWorld engine; fast-downward's first plan is "
        f"as long as the household planner's in {p['same_plan_length']}/{p['tasks']}; command lists identical at "
        f"{p['steps_identical']}/{p['steps_compared']} steps, identical but for ALFWorld's `help` at "
        f"{p['steps_identical_but_help']}/{p['steps_compared']}, the differences all explained "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(p['explained_differences'].items()))}; "
        f"unexplained: {len(p['unexplained'])}). See services/environment/backends/alfworld/README.md.",
    ]
    atomic_write_text(out / "alfworld.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
