"""The student's whole-prompt cache replayed on a finished run's own prompts, policy by policy.

    .venv/bin/python bench/prompt_cache_bench.py RUN_DIR [--budgets-k 23.3 46.6 93.2] [--out FILE]

Rebuilds every prompt the student was asked in a run's student phases (its trajectory files: the
evaluations and the rollouts) exactly as the student service does (`render_messages`, the chat
template, the tokenizer), orders them as an evaluation asks them (every episode's step 0, then
every episode's step 1, ...), and plays them through the shipped `PromptCache`
(services/student/backends/prefix_cache.py): each prompt is prefilled past its longest common prefix
with a kept one (at most all but its last token; the system message at least, which the student
caches apart), then kept. No model runs: the KV entries are stand-ins whose bytes per token scale
the budget, so a budget is given in prompt tokens (1 GiB holds 46.6 k tokens of SmolLM2's KV in bf16,
23.3 k in fp32).

Two policies side by side, for each budget:
- least recently used (as shipped): an entry reused by a later prompt stays;
- replace on reuse (shipped from fa5fff4 until this bench): a prompt that reused an entry drops it,
  so an episode keeps only its latest step.

The replay of a run's own phases matches what its student counted within 1 % (the last column of the
results). Results: bench/results/prompt_cache.json and .md (README run 18: `leap run` at the default
preset, whose run directory is not committed).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
#: Stand-in KV: one layer, one head, one float32 per token for keys and one for values.
STAND_IN_BYTES_PER_TOKEN = 2 * 4


def phase_prompts(path: Path, tokenizer, window: int) -> list[tuple[list[int], int]]:
    """A trajectory file's student prompts (token ids, system-message tokens), step by step across its episodes."""
    from services.student.backends.prefix_cache import SystemMessageIds
    from services.student.prompts import chat_prompt, history_to_send, render_messages

    system = SystemMessageIds(tokenizer)
    episodes = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        env = record.get("task", {}).get("env") or "household"
        history, prompts = [], []
        for step in record["steps"]:
            messages = render_messages(env, record["goal"], history_to_send(env, history, window), step["observation"],
                                       step.get("candidates", []), history_window=window)
            text = chat_prompt(tokenizer, messages)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            prompts.append((ids, system.prefix_length(messages, text, ids)))
            history.append((step["observation"], step["action"]))
        episodes.append(prompts)
    ordered = []
    for t in range(max((len(e) for e in episodes), default=0)):
        ordered.extend(e[t] for e in episodes if t < len(e))
    return ordered


@contextmanager
def replace_on_reuse(cache):
    """The policy before: storing a prompt drops the entry its prefix came from."""
    longest, put_rows = cache.longest, cache.put_rows
    reused: list = []

    def longest_noting(handle, ids):
        hit = longest(handle, ids)
        if hit is not None:
            reused.append(next(reversed(cache.entries)))  # longest() moved the entry it used to the end
        return hit

    def put_replacing(handles, prompts, batch, mask):
        put_rows(handles, prompts, batch, mask)
        key = (handles[0], tuple(prompts[0]))
        for old in reused:
            if old != key and old in cache.entries:
                cache.nbytes -= cache.entries.pop(old).nbytes
        reused.clear()

    cache.longest, cache.put_rows = longest_noting, put_replacing
    try:
        yield
    finally:
        cache.longest, cache.put_rows = longest, put_rows


def play(prompts: list[tuple[list[int], int]], budget_tokens: int, replace: bool) -> dict:
    import torch
    from transformers import DynamicCache

    from services.student.backends.prefix_cache import PromptCache

    cache = PromptCache(max_bytes=budget_tokens * STAND_IN_BYTES_PER_TOKEN)
    prefilled = 0
    with replace_on_reuse(cache) if replace else _nothing():
        for ids, system_tokens in prompts:
            # As LocalBackend._prefix_for: a kept prompt's prefix when it covers the system message,
            # else the system message's own cached KV.
            hit = cache.longest(None, ids)
            reused = hit.tokens if hit is not None and hit.tokens >= system_tokens else system_tokens
            prefilled += len(ids) - reused
            batch = DynamicCache()
            stand_in = torch.zeros((1, 1, len(ids), 1))
            batch.update(stand_in, stand_in, 0)
            cache.put_rows([None], [ids], batch, torch.ones((1, len(ids)), dtype=torch.long))
    total = sum(len(ids) for ids, _ in prompts)
    return {"prompt_tokens": total, "prefilled_tokens": prefilled, "ratio": round(total / prefilled, 2)}


@contextmanager
def _nothing():
    yield


def recorded_prefill(run_dir: Path) -> dict[str, int]:
    """Prefilled tokens per trajectory file as the run itself counted them (results.json), where it has them."""
    path = run_dir / "results.json"
    if not path.exists():
        return {}
    phases = {entry["phase"]: entry.get("prefilled_tokens") for entry in json.loads(path.read_text()).get("profile", [])}
    out = {}
    for phase, count in phases.items():
        label, _, kind = phase.partition(".")
        if count is None:
            continue
        if kind == "eval":
            out[f"{label}-eval-"] = count  # one split per evaluation file: "<label>-eval-<split>"
        elif kind == "rollout":
            out[f"{label}-rollouts"] = count
    return out


def markdown(r: dict) -> str:
    lines = ["# Whole-prompt cache policies on a run's own prompts (bench/prompt_cache_bench.py)", "",
             f"Run `{r['run_dir']}`; prompts rebuilt from its trajectories with the student's renderer and the "
             f"model's tokenizer (history window {r['history_window']}), asked step by step across each phase's "
             "episodes; the system message is always cached. Budgets in prompt "
             "tokens: 1 GiB of SmolLM2-135M's KV holds 46.6 k in bf16, 23.3 k in fp32. Prefilled tokens (prompt "
             "tokens / prefilled); the last column is what the run's student itself prefilled, under the policy "
             "and budget it ran with.", "",
             "| phase | prompts | prompt tokens | budget (k tokens) | least recently used (shipped) | "
             "replace on reuse (before) | before / shipped | the run's own count |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lru, rep = row["lru"], row["replace"]
        lines.append(f"| {row['phase']} | {row['prompts']:,} | {lru['prompt_tokens']:,} | {row['budget_k']} | "
                     f"{lru['prefilled_tokens']:,} ({lru['ratio']}x) | {rep['prefilled_tokens']:,} ({rep['ratio']}x) | "
                     f"{rep['prefilled_tokens'] / lru['prefilled_tokens']:.2f} | "
                     f"{format(row['recorded'], ',') if row.get('recorded') is not None else '-'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--budgets-k", type=float, nargs="+", default=[23.3, 46.6, 93.2],
                        help="cache budgets in thousands of prompt tokens")
    parser.add_argument("--out", default=str(RESULTS / "prompt_cache.json"))
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from orchestrator.config import load_snapshot
    from services.models.loading import resolve_model
    from services.runtime.files import atomic_write_json, atomic_write_text
    config = load_snapshot(args.run_dir / "config.yaml")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.student.model).location)
    window = config.student.history_window
    result = {"run_dir": str(args.run_dir), "history_window": window,
              "python": platform.python_version(), "rows": []}
    recorded = recorded_prefill(args.run_dir)
    for path in sorted((args.run_dir / "trajectories").glob("*.jsonl")):
        if "demos" in path.name or "corrections" in path.name:
            continue  # not the student's prompts
        prompts = phase_prompts(path, tokenizer, window)
        for budget in args.budgets_k:
            tokens = int(budget * 1000)
            row = {"phase": path.stem, "prompts": len(prompts), "budget_k": budget,
                   "recorded": next((n for prefix, n in recorded.items() if path.stem.startswith(prefix)), None),
                   "lru": play(prompts, tokens, replace=False),
                   "replace": play(prompts, tokens, replace=True)}
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
