"""How many prompt tokens each household step leaves to prefill, under today's layout and others.

    .venv/bin/python bench/prompt_layout_bench.py RUN_DIR/trajectories/iter0-eval-valid_unseen.jsonl [--out FILE]

Replays a finished run's episodes: every step's prompt is rendered again (`render_messages`, the
default preset's history window of 1, the student's tokenizer and chat template), and a step counts
as new every token past the longest prefix it shares with an earlier prompt of its episode (what the
student's prompt cache could hand it, room permitting). Layouts: today's; the note lines sorted by
how often they change (most often last); the notes after the last turn. Also counted: the tokens
from the last turn (or the current observation) to the end, which change at every step whatever the
layout, so no layout of this prompt can prefill fewer.

Results: bench/results/prompt_layout.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
NOTE_NAMES = ("Holding", "Task objects seen", "Searched", "Not searched yet")
LAYOUTS = {
    "today": None,
    "note lines by how often they change (Holding, Task objects seen last)":
        ("Searched", "Not searched yet", "Task objects seen", "Holding"),
    "notes after the last turn and the observation": "after",
}


def relaid(messages: list[dict], layout) -> list[dict]:
    """The user message's lines in another order (the same lines, nothing added or dropped)."""
    if layout is None:
        return messages
    lines = messages[1]["content"].split("\n")
    head = [line for line in lines if line.startswith("Your task is:")]
    notes = [line for line in lines if line.split(":")[0] in NOTE_NAMES]
    rest = [line for line in lines if line not in head and line not in notes]
    if layout == "after":
        cut = rest.index("Other actions:")
        body = head + rest[:cut] + notes + rest[cut:]
    else:
        rank = {name: k for k, name in enumerate(layout)}
        body = head + sorted(notes, key=lambda line: rank[line.split(":")[0]]) + rest
    return [messages[0], {"role": "user", "content": "\n".join(body)}]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trajectories", type=Path, help="a run's trajectories/*.jsonl (household)")
    parser.add_argument("--label", default="", help="what the trajectories are, for the results (default: the path)")
    parser.add_argument("--history-window", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "prompt_layout.json")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from orchestrator.datasets import read_trajectories
    from services.models.loading import resolve_model
    from services.runtime.files import atomic_write_json, atomic_write_text
    from services.student.prompts import chat_prompt, render_messages

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2").location)
    episodes = read_trajectories(args.trajectories)

    def prompts(layout):
        for trajectory in episodes:
            history, earlier = [], []
            for step in trajectory.steps:
                messages = render_messages("household", trajectory.goal, list(history), step.observation,
                                           list(step.candidates), history_window=args.history_window)
                text = chat_prompt(tokenizer, relaid(messages, layout))
                yield text, earlier
                history.append((step.observation, step.action))

    result = {"source": args.label or str(args.trajectories), "episodes": len(episodes), "layouts": {}}
    for name, layout in LAYOUTS.items():
        steps = total = new = 0
        for text, earlier in prompts(layout):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            new += len(ids) - max([common_prefix(ids, p) for p in earlier] + [0])
            total += len(ids)
            steps += 1
            earlier.append(ids)
        result["layouts"][name] = {"steps": steps, "prompt_tokens": total, "new_tokens": new,
                                   "new_per_step": round(new / max(steps, 1), 1)}
    steps = tail = 0
    for text, _earlier in prompts(None):
        start = text.find("History:") if "History:" in text else text.find("Current observation:")
        tail += len(tokenizer(text[start:], add_special_tokens=False)["input_ids"])
        steps += 1
    result["changing_every_step_per_step"] = round(tail / max(steps, 1), 1)
    print(json.dumps(result, indent=2))
    atomic_write_json(args.out, result)
    lines = ["# Household prompt layouts: tokens left to prefill per step", "",
             f"{result['episodes']} episodes of {result['source']} replayed (bench/prompt_layout_bench.py).", "",
             "| layout | steps | prompt tokens | new tokens | new per step |", "|---|---:|---:|---:|---:|"]
    for name, r in result["layouts"].items():
        lines.append(f"| {name} | {r['steps']} | {r['prompt_tokens']} | {r['new_tokens']} | {r['new_per_step']} |")
    lines += ["", f"Tokens from the last turn (or the current observation) to the end, new at every step whatever "
              f"the layout: {result['changing_every_step_per_step']} per step."]
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
