"""WebShop (synthetic) benchmark: catalogue build, search latency, steps/s, and the experts on 500 goals.

    .venv/bin/python bench/webshop_bench.py [--sizes 1000 100000] [--goals 500] [--queries 200] [--repeats 3]

For each catalogue size (1,000 and 100,000 products by default), in one run:

1. build       generating the catalogue and indexing it (bm25s);
2. search      per-query latency over the instructions of seeded goals: the raw library call
               (`bm25s.BM25.retrieve` on pre-analyzed tokens, k=50) against our search (analyzer, bm25s
               scores, deterministic top 50 with ties by catalogue order), caches off; their ratio;
3. steps/s     a fixed workload (seeded episodes: searcher and planner actions with 30 % random clicks,
               the default horizon) replayed on the backend's episodes directly (the engine) and through
               EnvironmentSessions (the service in-process), with the search cache cleared before each
               run, so every search is paid for.

Household's engine steps/s is measured in the same run for reference (bench/environment_bench.py's
workload and loop). Then, on the default catalogue (10,000 products): the planner and the searcher
play the first --goals goals of valid_unseen and of train: success (reward 1), mean reward, steps,
and how often the planner needed a product's name to find a satisfying one (its key-word search
listed none). Results go to bench/results/webshop.json and webshop.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bm25s  # noqa: E402

from services.environment.backends.household import HouseholdBackend  # noqa: E402
from services.environment.backends.webshop import backend as webshop_backend_module  # noqa: E402
from services.environment.backends.webshop.backend import ENGINE, WebShopBackend  # noqa: E402
from services.environment.backends.webshop.catalogue import Catalogue  # noqa: E402
from services.environment.backends.webshop.experts import Planner, Searcher, keyword_query  # noqa: E402
from services.environment.backends.webshop.search import SEARCH_RETURN_N, SearchEngine  # noqa: E402
from services.environment.backends.webshop.shop import Shop  # noqa: E402
from services.environment.service import EnvironmentSessions  # noqa: E402
from services.runtime.files import atomic_write_json, atomic_write_text  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def record_workload(backend: WebShopBackend, episodes: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """Seeded episodes: expert actions (planner or searcher) with 30 % random clicks mixed in."""
    rng = random.Random(seed)
    workload = []
    for i in range(episodes):
        task_id = f"train-{i % backend.num_tasks('train'):05d}"
        episode = backend.start(task_id, 0)
        obs = episode.reset()
        task = episode.shop_task
        planner, searcher = Planner(task), Searcher(task)
        use_planner = i % 2 == 0
        opened: frozenset[int] = frozenset()
        actions = []
        while not obs.done:
            if obs.candidates and rng.random() < 0.3:
                action = rng.choice(obs.candidates)
            elif use_planner:
                action = planner.advise(episode.state).next_action
            else:
                action = searcher.advise(episode.state, opened).next_action
            obs = episode.step(action)
            if episode.state.page == "item":
                opened = opened | {episode.state.product}
            actions.append(action)
        workload.append((task_id, actions))
    return workload


def run_engine(backend: WebShopBackend, workload) -> float:
    backend.shop.engine._cache.clear()
    start = time.perf_counter()
    for task_id, actions in workload:
        episode = backend.start(task_id, 0)
        episode.reset()
        for action in actions:
            episode.step(action)
    return time.perf_counter() - start


def run_sessions(backend: WebShopBackend, workload) -> float:
    sessions = EnvironmentSessions({"webshop": backend}, max_sessions=16)
    backend.shop.engine._cache.clear()
    start = time.perf_counter()
    for task_id, actions in workload:
        r = sessions.reset("webshop", task_id=task_id)
        for action in actions:
            sessions.step(r.session_id, action)
        sessions.close(r.session_id)
    elapsed = time.perf_counter() - start
    sessions.stop()
    return elapsed


def bench_size(size: int, queries: int, episodes: int, repeats: int) -> dict:
    t0 = time.perf_counter()
    catalogue = Catalogue(size)
    t1 = time.perf_counter()
    engine = SearchEngine([p.search_text() for p in catalogue.products])
    t2 = time.perf_counter()
    # The backend below finds this shop in the process's shop cache instead of building another.
    with webshop_backend_module._shops_lock:
        webshop_backend_module._shops[(size, 0)] = Shop(catalogue, engine)

    backend = WebShopBackend(products=size, train_tasks=max(50, episodes), valid_seen_tasks=50,
                             valid_unseen_tasks=max(50, queries))
    assert backend.shop.engine is engine
    texts = [backend.shop_task(f"valid_unseen-{i:05d}").goal.instruction_text for i in range(queries)]
    texts += [keyword_query(t) for t in texts]
    analyzed = [engine.query_tokens(t) for t in texts]
    pairs = [(t, a) for t, a in zip(texts, analyzed) if a]
    raw_ms, ours_ms = [], []
    for _ in range(repeats):
        for text, tokens in pairs:
            start = time.perf_counter()
            engine.retriever.retrieve([tokens], k=SEARCH_RETURN_N, show_progress=False)
            raw_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            engine._search(text, SEARCH_RETURN_N)
            ours_ms.append((time.perf_counter() - start) * 1000)
    # Our results equal the library's top 50 as sets up to ties at the cut.
    agree = 0
    for text, tokens in pairs[:50]:
        docs, scores = engine.retriever.retrieve([tokens], k=SEARCH_RETURN_N, show_progress=False)
        lib = {int(d) for d, s in zip(docs[0], scores[0]) if s > 0}
        ours = set(engine._search(text, SEARCH_RETURN_N))
        agree += len(lib & ours) / max(1, len(lib | ours)) > 0.9

    workload = record_workload(backend, episodes)
    steps = sum(len(a) for _, a in workload)
    searches = sum(a.startswith("search[") for _, actions in workload for a in actions)
    engine_times = [run_engine(backend, workload) for _ in range(repeats)]
    session_times = [run_sessions(backend, workload) for _ in range(repeats)]
    return {
        "products": size,
        "build": {"generate_s": round(t1 - t0, 3), "index_s": round(t2 - t1, 3)},
        "search": {
            "queries": len(pairs), "repeats": repeats,
            "library_retrieve_ms_median": round(statistics.median(raw_ms), 3),
            "library_retrieve_ms_p95": round(percentile(raw_ms, 0.95), 3),
            "ours_ms_median": round(statistics.median(ours_ms), 3),
            "ours_ms_p95": round(percentile(ours_ms, 0.95), 3),
            "ours_over_library": round(statistics.median(ours_ms) / statistics.median(raw_ms), 3),
            "top50_agreement_of_50": agree,
        },
        "steps": {
            "episodes": len(workload), "steps": steps, "searches": searches,
            "engine_steps_per_s": round(steps / statistics.median(engine_times), 1),
            "in_process_steps_per_s": round(steps / statistics.median(session_times), 1),
            "engine_seconds_all": [round(t, 4) for t in engine_times],
            "in_process_seconds_all": [round(t, 4) for t in session_times],
        },
    }


def household_steps_per_s(episodes: int, repeats: int) -> dict:
    import environment_bench  # bench/environment_bench.py

    backend = HouseholdBackend()
    workload = environment_bench.record_workload(backend, episodes)
    steps = sum(len(a) for _, a in workload)
    environment_bench.run_engine(backend, workload)  # warm its task cache, as that bench does
    times = [environment_bench.run_engine(backend, workload) for _ in range(repeats)]
    return {"episodes": episodes, "steps": steps, "engine_steps_per_s": round(steps / statistics.median(times), 1)}


def experts_on_goals(goals: int) -> dict:
    backend = WebShopBackend(train_tasks=max(goals, 1), valid_unseen_tasks=max(goals, 1))
    out: dict = {"products": backend.config.products}
    for split in ("valid_unseen", "train"):
        row: dict = {}
        for expert in ("planner", "searcher"):
            wins, rewards, lengths, named = 0, [], [], 0
            start = time.perf_counter()
            for i in range(goals):
                task_id = f"{split}-{i:05d}"
                demo = backend.demonstration(task_id, expert, 0)
                wins += demo.won
                rewards.append(demo.score)
                lengths.append(len(demo.steps))
                if expert == "planner":
                    query = keyword_query(backend.shop_task(task_id).goal.instruction_text)
                    named += any(s.action.startswith("search[") and s.action != f"search[{query}]" for s in demo.steps)
            row[expert] = {"goals": goals, "success": round(wins / goals, 4),
                           "mean_reward": round(sum(rewards) / goals, 4), "mean_steps": round(sum(lengths) / goals, 2),
                           "seconds": round(time.perf_counter() - start, 2)}
            if expert == "planner":
                row[expert]["searched_by_name"] = named
        out[split] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--goals", type=int, default=500)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "webshop.json"))
    args = parser.parse_args(argv)

    results = {"catalogues": [bench_size(size, args.queries, args.episodes, args.repeats) for size in args.sizes]}
    results["household_reference"] = household_steps_per_s(200, args.repeats)
    results["experts"] = experts_on_goals(args.goals)
    report = {
        "benchmark": "webshop",
        "engine": ENGINE,
        "libraries": {"bm25s": bm25s.__version__},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "note": "shared 2-core machine; figures vary ~15% run to run"},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    out = Path(args.out)
    atomic_write_json(out, report)
    atomic_write_text(out.with_suffix(".md"), to_markdown(report))
    print(to_markdown(report))
    return 0


def to_markdown(report: dict) -> str:
    r = report["results"]
    m = report["machine"]
    lines = [f"# WebShop benchmark ({report['engine']}, bm25s {report['libraries']['bm25s']})", "",
             f"Python {m['python']}, {m['cpus']} CPUs ({m['note']}). {report['timestamp']}.", "",
             "| products | generate s | index s | search ms (bm25s retrieve) | search ms (ours) | ours / library | "
             "engine steps/s | in-process steps/s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in r["catalogues"]:
        s, st = c["search"], c["steps"]
        lines.append(f"| {c['products']:,} | {c['build']['generate_s']} | {c['build']['index_s']} | "
                     f"{s['library_retrieve_ms_median']} (p95 {s['library_retrieve_ms_p95']}) | "
                     f"{s['ours_ms_median']} (p95 {s['ours_ms_p95']}) | {s['ours_over_library']} | "
                     f"{st['engine_steps_per_s']:,.0f} | {st['in_process_steps_per_s']:,.0f} |")
    c0 = r["catalogues"][0]["steps"]
    lines += ["", f"Steps/s: {c0['episodes']} seeded episodes ({c0['steps']} steps, {c0['searches']} searches; "
              "searcher "
              "and planner with 30 % random clicks), search cache cleared before each run. Household engine for "
              f"reference, same run: {r['household_reference']['engine_steps_per_s']:,.0f} steps/s.", "",
              f"## Experts on seeded goals ({r['experts']['products']:,} products)", "",
              "| split | expert | goals | success (reward 1) | mean reward | mean steps |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for split in ("valid_unseen", "train"):
        for expert, row in r["experts"][split].items():
            lines.append(f"| {split} | {expert} | {row['goals']} | {row['success']:.1%} | {row['mean_reward']:.3f} | "
                         f"{row['mean_steps']} |")
    named = {s: r["experts"][s]["planner"]["searched_by_name"] for s in ("valid_unseen", "train")}
    lines += ["", f"The planner needed a product's name to find a satisfying one (privileged search) on "
              f"{named['valid_unseen']} valid_unseen and {named['train']} train goals.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
