"""Newcomers prefilled in one padded pass against the groups `prefill_plan` makes, on real shapes.

    .venv/bin/python bench/prefill_groups_bench.py [--calls 40] [--out FILE]

The shapes are the first prefills of a default-run evaluation (bench/data/prefill_calls.json: for
each prefill, every row's new tokens and cached-prefix tokens, logged from the student service while
it evaluated run 21's BC adapter on the 50 valid_unseen tasks with ONEDNN_MAX_CPU_ISA=AVX2). For each
prefill the bench builds those rows' cached prefixes (random tokens, untimed), then times the forward
passes the student runs: one pass over every row left-padded to the longest, or one pass per group
that `plan_groups` makes for a given per-pass overhead. The model is the student's (SmolLM2-135M) in the
dtype the student picks on this machine, two threads. It also fits the fixed cost of a pass: the time of
a 1-row, 4-token pass against the marginal cost of a token, which is what `overhead_tokens` stands for.

Results: bench/results/prefill_groups.json and .md (one section per ONEDNN_MAX_CPU_ISA setting).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
DATA = ROOT / "bench" / "data" / "prefill_calls.json"
OVERHEADS = (0, 24, 48, 64, 96, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40, help="prefills replayed (from the start of the file)")
    parser.add_argument("--out", type=Path, default=RESULTS / "prefill_groups.json")
    args = parser.parse_args()

    import torch

    from services.models import load_model_and_tokenizer, pick_dtype
    from services.student.backends.kv_cache import new_decode_cache
    from services.student.backends.prefill_plan import left_padded_inputs, padded_tokens, plan_groups

    torch.set_num_threads(2)
    torch.manual_seed(0)
    dtype = pick_dtype("cpu")
    model, _, _ = load_model_and_tokenizer("smollm2", device="cpu", dtype=str(dtype).replace("torch.", ""))
    model.eval()
    calls = json.loads(DATA.read_text())["prefills"][: args.calls]

    def prompts_for(call):
        return [torch.randint(100, 40000, (c + n,)).tolist() for n, c in zip(call["new"], call["cached"])]

    def one_pass(prompts, cached) -> float:
        """Time of one forward pass over `prompts` on top of their cached prefixes (built untimed)."""
        width = max(cached)
        cache = new_decode_cache(model.config, max_rows=len(prompts))
        if width:
            ids = torch.stack([torch.tensor(p[:c] + [0] * (width - c)) for p, c in zip(prompts, cached)])
            model(input_ids=ids, use_cache=True, past_key_values=cache, logits_to_keep=1)
        input_ids, mask, positions = left_padded_inputs(prompts, cached, 0)
        started = time.perf_counter()
        model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, logits_to_keep=1)
        return time.perf_counter() - started

    with torch.inference_mode():
        for _ in range(2):  # warm-up
            one_pass(prompts_for(calls[0]), calls[0]["cached"])
        tiny = min(one_pass([[5] * 4], [0]) for _ in range(5))
        big = min(one_pass([[5] * 256] * 4, [0] * 4) for _ in range(3))
        per_token = (big - tiny) / (4 * 256 - 4)
        results = {"one pass": {"seconds": 0.0, "passes": 0, "computed_tokens": 0}}
        results.update({f"groups, overhead {k}": {"seconds": 0.0, "passes": 0, "computed_tokens": 0} for k in OVERHEADS})
        new_tokens = 0
        for call in calls:
            prompts, cached, new = prompts_for(call), call["cached"], call["new"]
            new_tokens += sum(new)
            plans = {"one pass": [list(range(len(new)))]}
            plans.update({f"groups, overhead {k}": plan_groups(new, cached, overhead_tokens=k) for k in OVERHEADS})
            for name, groups in plans.items():
                r = results[name]
                r["seconds"] += sum(one_pass([prompts[i] for i in g], [cached[i] for i in g]) for g in groups)
                r["passes"] += len(groups)
                r["computed_tokens"] += padded_tokens(new, groups)
    base = results["one pass"]["seconds"]
    for r in results.values():
        r["ratio_to_one_pass"] = round(r["seconds"] / base, 3)
        r["seconds"] = round(r["seconds"], 2)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "") or "native"
    section = {
        "isa": isa, "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
        "machine": platform.machine(), "threads": torch.get_num_threads(), "prefills": len(calls),
        "new_tokens": new_tokens, "fixed_pass_ms": round(tiny * 1000, 1), "per_token_ms": round(per_token * 1000, 3),
        "overhead_in_tokens": round((tiny - 4 * per_token) / per_token, 1), "results": results,
    }
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    out[isa] = section
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Prefill: one padded pass against grouped passes", "",
             "Shapes: the first prefills of a default-run evaluation (bench/data/prefill_calls.json); see the "
             "bench's docstring. Times are forward passes only (the merge of groups into one batch is a copy "
             "the scheduler makes for every prefill anyway).", ""]
    for name, s in out.items():
        lines += [f"## {name} ({s['dtype']}, {s['threads']} threads, torch {s['torch']})", "",
                  f"{s['prefills']} prefills, {s['new_tokens']:,} new tokens. A pass costs {s['fixed_pass_ms']} ms "
                  f"for 4 tokens and {s['per_token_ms']} ms per further token: its fixed cost is worth "
                  f"{s['overhead_in_tokens']} tokens.", "",
                  "| plan | passes | computed tokens (padding included) | seconds | / one pass |",
                  "|---|---:|---:|---:|---:|"]
        for plan, r in s["results"].items():
            lines.append(f"| {plan} | {r['passes']} | {r['computed_tokens']:,} | {r['seconds']} | {r['ratio_to_one_pass']} |")
        lines.append("")
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
