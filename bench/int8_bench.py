"""int8 weights for the student: speed and fidelity against fp32, in one run (issue 22).

    .venv/bin/python bench/int8_bench.py            # bench/results/int8.{json,md}

torch's dynamic int8 linear layers (fbgemm: int8 weights, activations quantized per call at run time)
replace every Linear of the decoder layers of SmolLM2-135M (the LM head stays fp32). Two weight
quantizations: one scale per tensor (what `torch.ao.quantization.quantize_dynamic` does by default,
the engine bench's int8 row) and one scale per output channel. Against fp32, the raw library model:

- fidelity: greedy continuations of the student's household prompts (same token ids, `--new-tokens`
  each, end-of-sequence ignored), as the share of tokens that match fp32's up to the first
  disagreement, and the largest score difference over the last 50 prompt positions of one prompt;
- speed: a prefill of 16 rows of 300 tokens (tokens/s) and one decode step of 50 rows over 450 cached
  tokens (median of 5), the shapes of a default run's evaluation.

An engine is only worth having if the student stays the model it was trained as.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine_bench import agreement, prompts_as_ids  # noqa: E402 - the engine bench's prompts and measure

RESULTS = ROOT / "bench" / "results"


def int8_linear(linear, per_channel: bool):
    """A module computing `linear` with int8 weights through fbgemm's dynamic linear."""
    import torch

    class Int8Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            weight = linear.weight.detach().float()
            if per_channel:
                scales = (weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0).double()
                q = torch.quantize_per_channel(weight, scales, torch.zeros(weight.shape[0], dtype=torch.long), 0,
                                               torch.qint8)
            else:
                q = torch.quantize_per_tensor(weight, max(float(weight.abs().max()), 1e-8) / 127.0, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(q, linear.bias)

        def forward(self, x):
            return torch.ops.quantized.linear_dynamic(x, self.packed, True)

    return Int8Linear()


def quantized(model, per_channel: bool):
    import torch

    copy_ = copy.deepcopy(model)
    for layer in copy_.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(parent, name, int8_linear(child, per_channel))
    return copy_


def greedy(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    import torch

    out = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            generated = model.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            out.append(generated[0, len(ids):].tolist())
    return out


def speed(model, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    prefill_ids = torch.randint(100, 40000, (16, 300), generator=g)
    cached_ids = torch.randint(100, 40000, (50, 450), generator=g)
    next_ids = torch.randint(100, 40000, (50, 1), generator=g)
    with torch.no_grad():
        model(prefill_ids[:2, :32])  # warm-up
        started = time.perf_counter()
        model(prefill_ids, use_cache=False, logits_to_keep=1)
        prefill_s = time.perf_counter() - started
        cache = model(cached_ids, use_cache=True, logits_to_keep=1).past_key_values
        steps = []
        for _ in range(5):
            started = time.perf_counter()
            cache = model(next_ids, past_key_values=cache, use_cache=True).past_key_values
            steps.append(time.perf_counter() - started)
    return {"prefill_tokens_per_s": round(prefill_ids.numel() / prefill_s, 1),
            "decode_step_ms_50_rows": round(1000 * sorted(steps)[2], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from services.models import resolve_model
    from services.runtime.files import atomic_write_json, atomic_write_text

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2").location, dtype=torch.float32).eval()
    prompts = prompts_as_ids(args.prompts)
    reference = greedy(model, prompts, args.new_tokens)
    with torch.no_grad():
        reference_scores = model(torch.tensor([prompts[0]])).logits[0, -50:]
    rows = []
    for name, variant in (("fp32 (raw transformers model)", model),
                          ("int8 weights, one scale per tensor", quantized(model, per_channel=False)),
                          ("int8 weights, one scale per output channel", quantized(model, per_channel=True))):
        tokens = reference if variant is model else greedy(variant, prompts, args.new_tokens)
        with torch.no_grad():
            scores = variant(torch.tensor([prompts[0]])).logits[0, -50:]
        rows.append({"engine": name, "greedy_tokens_as_fp32": agreement(tokens, reference),
                     "max_score_difference": round(float((scores - reference_scores).abs().max()), 3),
                     **speed(variant)})
    base = rows[0]
    for row in rows:
        row["prefill_vs_fp32"] = round(row["prefill_tokens_per_s"] / base["prefill_tokens_per_s"], 2)
        row["decode_vs_fp32"] = round(base["decode_step_ms_50_rows"] / row["decode_step_ms_50_rows"], 2)
    results = {"machine": {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                           "processor": platform.processor() or platform.machine(),
                           "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "")},
               "prompts": len(prompts), "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1),
               "new_tokens": args.new_tokens, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "int8.json", results)
    lines = ["# int8 weights for the student against fp32", "",
             f"{results['machine']['cpus']} CPUs, {args.threads} threads, torch {torch.__version__}"
             + (f", ONEDNN_MAX_CPU_ISA={results['machine']['onednn_max_cpu_isa']}"
                if results["machine"]["onednn_max_cpu_isa"] else "")
             + f". {len(prompts)} household prompts of {results['prompt_tokens_mean']} tokens on average, "
             f"{args.new_tokens} greedy tokens each.", "",
             "| engine | greedy tokens as fp32 | max score difference | prefill 16 x 300 tokens/s | / fp32 "
             "| decode step, 50 rows, ms | speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['engine']} | {100 * row['greedy_tokens_as_fp32']:.0f} % | {row['max_score_difference']} "
                     f"| {row['prefill_tokens_per_s']} | {row['prefill_vs_fp32']} | {row['decode_step_ms_50_rows']} "
                     f"| {row['decode_vs_fp32']} |")
    lines += ["", "Greedy tokens as fp32: the share of each variant's tokens, up to its first disagreement, that match "
              "fp32's. Max score difference: over the last 50 prompt positions of the first prompt, in logits."]
    atomic_write_text(RESULTS / "int8.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
