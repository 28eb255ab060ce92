"""Batch churn: an evaluation's load on the student, with rows joining and leaving the batch all the time.

    .venv/bin/python bench/batch_churn_bench.py [--clients 50] [--steps 8] [--rounds 2]

`leap run` evaluates 50 episodes at once: every episode waits for its answer, steps its environment
and asks again, so rows finish and newcomers join between almost every two decode steps. This bench
plays that load on the local backend in process (the default run's student settings: batch 50,
prefill chunks of 16, constrained actions with 32 reason tokens, the whole-prompt cache on): each of
`--clients` threads plays `--steps` household steps whose history grows by one turn a step.

Two ways of keeping the batch's KV cache, alternated round by round in the same process:
- rows in place (as shipped): finished rows' slots are filled with the last rows, newcomers are
  written into spare rows (kv_cache.retire_rows, AppendLayer.join);
- rows copied (as before): every finished row and every join copies the whole batch cache into new
  buffers (index_select, and a new zero buffer per join). The bench swaps these in for its arm.

Results: bench/results/batch_churn.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from student_bench import ROOMS, TASKS, load_average  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def episode_state(client: int, step: int) -> dict:
    """Client `client`'s household state after `step` moves: the history grows by one turn a step."""
    rooms = [ROOMS[(client + k) % len(ROOMS)] for k in range(step + 1)]
    history = [("You are in the middle of a room. Looking quickly around you, you see "
                + ", ".join(f"a {r}" for r in ROOMS) + ".", f"go to {rooms[0]}")]
    for a, b in zip(rooms, rooms[1:]):
        history.append((f"You arrive at {a}. On the {a}, you see a spoon {client + 1}, and a peppershaker 2.",
                        f"go to {b}"))
    here = rooms[-1]
    candidates = [f"go to {r}" for r in ROOMS if r != here] + [f"examine {here}", "inventory", "look",
                                                              f"take spoon {client + 1} from {here}"]
    return dict(env="household", goal=f"Your task is to: {TASKS[client % len(TASKS)]}", history=history,
                observation=f"You arrive at {here}. On the {here}, you see a spoon {client + 1}.",
                candidates=candidates)


@contextmanager
def rows_copied():
    """The cache handling before rows were kept in place: every retirement and join copies every row."""
    from services.student.backends import batching, kv_cache

    def retire_by_copy(cache, keep):
        index = None
        for layer in cache.layers:
            if isinstance(layer, kv_cache.AppendLayer) and layer._owns_views():
                if index is None:
                    import torch
                    index = torch.tensor(keep, dtype=torch.long, device=layer.keys.device)
                layer._key_buffer = layer._key_buffer[:layer._rows].index_select(0, index)
                layer._value_buffer = layer._value_buffer[:layer._rows].index_select(0, index)
                layer._rows = len(keep)
                layer._publish()
            else:
                import torch
                layer.batch_select_indices(torch.tensor(keep, dtype=torch.long, device=layer.keys.device))
        return list(keep)

    saved = batching.retire_rows, kv_cache.AppendLayer.join, kv_cache.ROW_GROW
    batching.retire_rows = retire_by_copy
    kv_cache.AppendLayer.join = lambda self, joined, width: False
    kv_cache.ROW_GROW = 0
    try:
        yield
    finally:
        batching.retire_rows, kv_cache.AppendLayer.join, kv_cache.ROW_GROW = saved


def play(backend, clients: int, steps: int) -> dict:
    from services.student.prompts import render_messages
    from services.student.types import GenerationRequest, Sampling

    sampling = Sampling(max_new_tokens=48, constrain_action=True, max_reason_tokens=32)
    answers: dict[tuple[int, int], str] = {}
    counts = {"prompt": 0, "cached": 0, "decoded": 0}
    lock = threading.Lock()
    errors: list[str] = []

    def client(c: int) -> None:
        try:
            for s in range(steps):
                state = episode_state(c, s)
                request = GenerationRequest(prompt=backend.encode_prompt(render_messages(**state, history_window=1)), sampling=sampling,
                                            version="base", adapter_handle=None, candidates=tuple(state["candidates"]))
                generation = backend.submit([request])[0].result(timeout=900)
                with lock:
                    answers[(c, s)] = generation.text
                    counts["prompt"] += generation.prompt_tokens
                    counts["cached"] += generation.cached_prompt_tokens
                    counts["decoded"] += len(generation.token_ids)
        except Exception as exc:  # noqa: BLE001 - reported in the results
            errors.append(f"client {c}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"seconds": round(wall, 2), "requests": len(answers), "errors": errors, "answers": answers,
            "prompt_tokens": counts["prompt"], "prefilled_tokens": counts["prompt"] - counts["cached"],
            "decoded_tokens": counts["decoded"], "requests_per_s": round(len(answers) / wall, 3)}


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Batch churn (bench/batch_churn_bench.py)", "",
             f"{m['cpus']} CPUs, {m['torch_threads']} threads, torch {m['torch']}, student {r['dtype']}; load average "
             f"{m['load_average_start']} -> {m['load_average_end']} (shared machine). {r['clients']} clients x "
             f"{r['steps']} household steps each, constrained actions, batch up to {r['clients']}, prefill chunks of "
             "16, whole-prompt cache on, a 1-turn history window (the default preset's).", "",
             "| round | KV rows | seconds | requests/s | prefilled tokens | decoded tokens | errors |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for run in r["runs"]:
        lines.append(f"| {run['round']} | {run['arm']} | {run['seconds']} | {run['requests_per_s']} | "
                     f"{run['prefilled_tokens']:,} | {run['decoded_tokens']:,} | {len(run['errors'])} |")
    lines += ["", f"Median time, rows in place / rows copied: **{r['ratio']}** "
                  f"({r['median_s']['in place']} s / {r['median_s']['copied']} s).",
              f"Answers the same in both arms (round 0): {r['same_answers']} of {r['requests']}. They may differ: "
              "which rows share a forward pass depends on the threads' timing, and a batch of another shape or "
              "order rounds differently (bf16 most of all).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "batch_churn.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    import torch

    from services.runtime.files import atomic_write_json, atomic_write_text
    from services.student.backends.local import LocalBackend, LocalOptions

    result: dict = {"clients": args.clients, "steps": args.steps, "runs": [],
                    "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                "python": platform.python_version(), "torch": torch.__version__,
                                "load_average_start": load_average()}}
    for round_ in range(args.rounds):
        for arm in ("in place", "copied"):
            backend = LocalBackend(LocalOptions(max_batch_size=args.clients, max_prefill_rows=16, max_wait_ms=10))
            backend.start()
            try:
                result["dtype"] = str(backend.dtype).replace("torch.", "")
                if arm == "copied":
                    with rows_copied():
                        run = play(backend, args.clients, args.steps)
                else:
                    run = play(backend, args.clients, args.steps)
            finally:
                backend.close()
            run.update(round=round_, arm=arm)
            result["runs"].append(run)
            print(json.dumps({k: v for k, v in run.items() if k != "answers"}), flush=True)
    median = {arm: statistics.median(r["seconds"] for r in result["runs"] if r["arm"] == arm)
              for arm in ("in place", "copied")}
    result["median_s"] = median
    result["ratio"] = round(median["in place"] / median["copied"], 3)
    first = {r["arm"]: r["answers"] for r in result["runs"] if r["round"] == 0}
    result["requests"] = len(first["in place"])
    result["same_answers"] = sum(first["in place"].get(k) == v for k, v in first["copied"].items())
    for run in result["runs"]:
        run["answers"] = len(run["answers"])
    result["machine"]["load_average_end"] = load_average()
    out = Path(args.out)
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return 0 if all(not r["errors"] for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
