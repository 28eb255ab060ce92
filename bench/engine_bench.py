"""Inference engines side by side on the student's own prompts, in one run (issue 22).

    .venv/bin/python bench/engine_bench.py                       # bench/results/engines.{json,md}
    .venv/bin/python bench/engine_bench.py --llama-python /path/to/venv/bin/python

Every engine gets the same household prompts (the student's chat template, ~470 tokens each) as the
same token ids and decodes them greedily for exactly `--new-tokens` tokens (end-of-sequence is
ignored, so every engine does the same work). Measured per engine:

- single: the prompts one at a time; time to the first token (prefill) and the time of each token
  after it (decode), medians over the prompts;
- batch: `--batch` prompts at once, total generated tokens per second;
- agreement: the greedy tokens of each engine against transformers' in fp32 (same weights: the
  shipped GGUF's Q4_1 blocks, dequantized), as the share of the first tokens that match.

Engines:
- `transformers generate` in fp32 and bf16: the raw library call, the reference of every ratio;
- our local backend (`services/student/backends/local.py`: continuous batching, KV appended in
  place, per-row LoRA, constrained choice) in fp32 and bf16: as shipped; with oneDNN for every decode
  step (no measured choice of kernels, `cpu_kernels.py`); and with that and transformers' own decode
  mask (it drops an all-ones mask and asks SDPA for grouped-query attention), which is how the
  backend decoded before;
- torch int8 dynamic quantization of every Linear (fp32 activations) through `generate`;
- llama.cpp (llama-cpp-python) on the shipped Q4_1 GGUF itself, when `--llama-python` names a Python
  that has it (it builds from source; it is not a dependency of the project), batch 1 only: its
  Python API decodes one sequence per context.

Each engine's support of the student contract (per-row LoRA adapters in one batch, hot swap of an
adapter, constrained choice among the candidates) is recorded beside its numbers; an engine is worth
adopting only where it wins and keeps the contract. `--isa avx2` sets ONEDNN_MAX_CPU_ISA=AVX2 (no AMX,
no AVX-512) for the torch engines, as on an ordinary CPU; `--isa both` (default) runs each in its
own process and reports both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run_profile import ISA_SETTINGS  # noqa: E402 - the same ISA settings as the run profile
from student_bench import household_states, load_average  # noqa: E402 - the student bench's prompts

RESULTS = ROOT / "bench" / "results"

#: What each engine offers of the student's contract.
CONTRACT = {
    "transformers": {"per_row_lora": "yes (peft adapter_names)", "hot_swap": "yes (peft)",
                     "constrained_choice": "with a logits processor of our own"},
    "ours": {"per_row_lora": "yes", "hot_swap": "yes", "constrained_choice": "yes"},
    "int8": {"per_row_lora": "no (peft does not wrap dynamically quantized Linear)", "hot_swap": "no",
             "constrained_choice": "with a logits processor of our own"},
    "llama.cpp": {"per_row_lora": "no (adapters are set per context)",
                  "hot_swap": "yes (GGUF LoRA, per context)", "constrained_choice": "yes (GBNF grammars)"},
}

# The llama.cpp side runs in the Python that has llama-cpp-python; it reads a job on stdin and writes
# its timings as JSON on stdout.
_LLAMA_SCRIPT = r"""
import json, sys, time
from llama_cpp import Llama
job = json.load(sys.stdin)
llm = Llama(model_path=job["gguf"], n_ctx=2048, n_threads=job["threads"], n_threads_batch=job["threads"],
            n_batch=512, verbose=False)
out = {"version": __import__("llama_cpp").__version__, "single": []}
for ids in job["prompts"]:
    tokens, first, started = [], None, time.perf_counter()
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        if first is None:
            first = time.perf_counter()
        tokens.append(int(token))
        if len(tokens) == job["new_tokens"]:
            break
    end = time.perf_counter()
    out["single"].append({"ttft_s": first - started, "decode_s_per_token": (end - first) / max(len(tokens) - 1, 1),
                          "tokens": tokens})
print(json.dumps(out))
"""


def prompts_as_ids(count: int) -> list[list[int]]:
    """`count` household prompts, chat-templated for SmolLM2, as token ids."""
    from transformers import AutoTokenizer

    from services.models import resolve_model
    from services.student.prompts import chat_prompt, render_messages

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2").location)
    return [list(tokenizer(chat_prompt(tokenizer, render_messages(**state)), add_special_tokens=False)["input_ids"])
            for state in household_states(count)]


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> float:
    """Share of positions, up to each row's first disagreement, that match the reference's tokens."""
    matched = total = 0
    for row, ref in zip(tokens, reference):
        n = min(len(row), len(ref))
        same = next((i for i in range(n) if row[i] != ref[i]), n)
        matched += same
        total += len(ref)
    return round(matched / total, 3) if total else 0.0


def bench_generate(model, tokenizer, prompts, batch_prompts, new_tokens) -> dict:
    """transformers `generate`, greedy, exactly `new_tokens` tokens."""
    import torch

    def run(rows: list[list[int]], n: int) -> tuple[float, list[list[int]]]:
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            mask[i, width - len(ids):] = 1
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return time.perf_counter() - started, out[:, width:].tolist()

    run(prompts[:1], 2)  # warm up
    single, tokens = [], []
    for ids in prompts:
        ttft, _ = run([ids], 1)
        wall, [row] = run([ids], new_tokens)
        single.append({"ttft_s": ttft, "decode_s_per_token": max(wall - ttft, 0.0) / (new_tokens - 1)})
        tokens.append(row)
    wall, rows = run(batch_prompts, new_tokens)
    return {"single": single, "tokens": tokens,
            "batch": {"rows": len(batch_prompts), "seconds": wall, "tokens": sum(map(len, rows))}}


#: Our backend's variants: label -> (explicit CPU decode mask, measured choice of decode kernels).
BACKEND_VARIANTS = {
    "as shipped": (True, True),
    "oneDNN for every decode step": (True, False),
    "oneDNN for every decode step, transformers' decode mask": (False, False),
}


def bench_backend(dtype: str, prompts, batch_prompts, new_tokens) -> dict[str, dict]:
    """Our local backend, straight (no gRPC), greedy, stopping at max_new_tokens only.

    One backend runs every prompt in each of BACKEND_VARIANTS, interleaved (rotating which goes
    first), so that load drift hits all alike. The shipped kernel chooser has decided its batch sizes
    during the warm-up. Returns {variant: results}.
    """
    from services.student.backends.cpu_kernels import DecodeKernelChooser
    from services.student.backends.local import LocalBackend, LocalOptions
    from services.student.types import EncodedPrompt, GenerationRequest, Sampling

    backend = LocalBackend(LocalOptions(dtype=dtype, device="cpu", max_batch_size=len(batch_prompts),
                                        max_wait_ms=50, stop_at_action_line=False, prefix_cache=False))
    backend.start()
    shipped_mask, shipped_chooser = backend._explicit_decode_mask, backend.decode_kernels
    always_onednn = DecodeKernelChooser(active=False)
    backend._decoder.eos_ids = set()  # exactly new_tokens tokens, as the other engines
    timings = {"prefill": [], "decode": []}
    for name in timings:
        original = getattr(backend, name)

        def timed(*args, _original=original, _name=name, **kwargs):
            started = time.perf_counter()
            result = _original(*args, **kwargs)
            timings[_name].append(time.perf_counter() - started)
            return result
        setattr(backend, name, timed)

    def run(rows: list[list[int]], variant: str) -> tuple[float, list]:
        explicit_mask, choose = BACKEND_VARIANTS[variant]
        backend._explicit_decode_mask = explicit_mask and shipped_mask
        backend.decode_kernels = shipped_chooser if choose else always_onednn
        requests = [GenerationRequest(prompt=EncodedPrompt(messages=[], text="", ids=ids, token_count=len(ids)),
                                      sampling=Sampling(max_new_tokens=new_tokens), version="", adapter_handle="")
                    for ids in rows]
        for v in timings.values():
            v.clear()
        started = time.perf_counter()
        out = [f.result() for f in backend.submit(requests)]
        return time.perf_counter() - started, out

    variants = list(BACKEND_VARIANTS)
    results = {v: {"single": [], "tokens": [], "batch": None} for v in variants}
    try:
        for _ in range(2):
            run(prompts[:1], "as shipped")  # warm up; the chooser decides batch size 1
        for i, ids in enumerate(prompts):
            for variant in variants[i % len(variants):] + variants[:i % len(variants)]:
                _wall, [gen] = run([ids], variant)
                results[variant]["single"].append({"ttft_s": sum(timings["prefill"]),
                                                   "decode_s_per_token": statistics.median(timings["decode"])})
                results[variant]["tokens"].append(list(gen.token_ids))
        for variant in variants:
            wall, out = run(batch_prompts, variant)
            results[variant]["batch"] = {"rows": len(batch_prompts), "seconds": wall,
                                         "tokens": sum(len(g.token_ids) for g in out)}
        results["as shipped"]["kernels_chosen"] = {str(k): "onednn" if v else "torch"
                                                   for k, v in shipped_chooser.decided.items()}
        return results
    finally:
        backend.close()


def bench_llama(python: str, gguf: str, prompts, new_tokens, threads: int) -> dict:
    job = json.dumps({"gguf": gguf, "prompts": prompts, "new_tokens": new_tokens, "threads": threads})
    proc = subprocess.run([python, "-c", _LLAMA_SCRIPT], input=job, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp run failed: {proc.stderr[-2000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"single": [{k: v for k, v in s.items() if k != "tokens"} for s in data["single"]],
            "tokens": [s["tokens"] for s in data["single"]], "batch": None, "version": data["version"]}


def summarise(name: str, engine: str, dtype: str, raw: dict, reference_tokens, new_tokens: int) -> dict:
    single = raw["single"]
    ttft = statistics.median(s["ttft_s"] for s in single)
    decode = statistics.median(s["decode_s_per_token"] for s in single)
    batch = raw.get("batch")
    return {"name": name, "engine": engine, "dtype": dtype, "ttft_s": round(ttft, 4),
            "decode_ms_per_token": round(decode * 1000, 2),
            "single_tokens_per_s": round(new_tokens / (ttft + decode * (new_tokens - 1)), 2),
            "batch_tokens_per_s": round(batch["tokens"] / batch["seconds"], 2) if batch else None,
            "batch_rows": batch["rows"] if batch else None,
            "agreement_with_fp32": agreement(raw["tokens"], reference_tokens) if reference_tokens else 1.0,
            **({"version": raw["version"]} if "version" in raw else {}), "contract": CONTRACT[engine]}


def run_isa(args) -> dict:
    warnings.filterwarnings("ignore")
    import torch
    import transformers

    from services.models import load_model_and_tokenizer
    from services.models.smollm2 import gguf_path

    torch.set_num_threads(args.threads)
    prompts_all = prompts_as_ids(max(args.prompts, args.batch))
    prompts, batch_prompts = prompts_all[:args.prompts], prompts_all[:args.batch]
    result = {"machine": {"cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
                          "torch": torch.__version__, "transformers": transformers.__version__,
                          "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
                          "load_average_start": load_average()},
              "prompts": {"count": len(prompts), "tokens_mean": round(statistics.mean(map(len, prompts)), 1),
                          "batch": len(batch_prompts), "new_tokens": args.new_tokens},
              "engines": []}
    reference = None
    for dtype in ("float32", "bfloat16"):
        model, tok, _ = load_model_and_tokenizer("smollm2", device="cpu", dtype=dtype)
        raw = bench_generate(model, tok, prompts, batch_prompts, args.new_tokens)
        reference = reference or raw["tokens"]
        result["engines"].append(summarise(f"transformers generate, {dtype}", "transformers", dtype, raw,
                                           reference, args.new_tokens))
        print(result["engines"][-1], flush=True)
        if dtype == "float32":
            quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            raw = bench_generate(quantized, tok, prompts, batch_prompts, args.new_tokens)
            result["engines"].append(summarise("torch int8 dynamic (fp32 activations), generate", "int8", "int8",
                                               raw, reference, args.new_tokens))
            print(result["engines"][-1], flush=True)
            del quantized
        del model
        for variant, raw in bench_backend(dtype, prompts, batch_prompts, args.new_tokens).items():
            result["engines"].append(summarise(f"ours, {dtype}, {variant}", "ours", dtype, raw, reference,
                                               args.new_tokens))
            if "kernels_chosen" in raw:
                result["engines"][-1]["kernels_chosen"] = raw["kernels_chosen"]
            print(result["engines"][-1], flush=True)
    if args.llama_python:
        raw = bench_llama(args.llama_python, str(gguf_path()), prompts, args.new_tokens, args.threads)
        result["engines"].append(summarise("llama.cpp (llama-cpp-python), Q4_1 GGUF", "llama.cpp", "q4_1", raw,
                                           reference, args.new_tokens))
        print(result["engines"][-1], flush=True)
    result["machine"]["load_average_end"] = load_average()
    return result


def to_markdown(results: dict) -> str:
    lines = ["# Inference engines on the student's prompts", ""]
    for isa, r in results["runs"].items():
        m, p = r["machine"], r["prompts"]
        lines += [f"## {isa}" + (f" (ONEDNN_MAX_CPU_ISA={m['onednn_max_cpu_isa']})" if m["onednn_max_cpu_isa"] else ""),
                  "",
                  f"{m['cpus']} CPUs, {m['threads']} threads, torch {m['torch']}, transformers {m['transformers']}; "
                  f"load average {m['load_average_start']} -> {m['load_average_end']}. "
                  f"{p['count']} household prompts of {p['tokens_mean']} tokens on average, {p['new_tokens']} new "
                  f"tokens each, greedy; batch: {p['batch']} prompts at once.", "",
                  "| engine | first token s | decode ms/token | batch 1 tokens/s | batch tokens/s | / raw generate (same dtype) "
                  "| greedy tokens as fp32 |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        raw = {e["dtype"]: e for e in r["engines"] if e["engine"] == "transformers"}
        for e in r["engines"]:
            ref = raw.get(e["dtype"], raw.get("float32"))
            ratio = round(e["single_tokens_per_s"] / ref["single_tokens_per_s"], 2) if ref else ""
            batch = e["batch_tokens_per_s"] if e["batch_tokens_per_s"] is not None else "n/a"
            name = e["name"]
            if e.get("kernels_chosen"):
                name += " (decode kernels chosen: " + ", ".join(
                    f"{rows} row{'s' if rows != '1' else ''}: {k}" for rows, k in e["kernels_chosen"].items()) + ")"
            lines.append(f"| {name} | {e['ttft_s']} | {e['decode_ms_per_token']} | {e['single_tokens_per_s']} "
                         f"| {batch} | {ratio} | {round(100 * e['agreement_with_fp32'])} % |")
        lines.append("")
    lines += ["## What each engine keeps of the student's contract", "",
              "| engine | per-row LoRA in one batch | hot swap | constrained choice among candidates |",
              "|---|---|---|---|"]
    lines += [f"| {k} | {v['per_row_lora']} | {v['hot_swap']} | {v['constrained_choice']} |" for k, v in CONTRACT.items()]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--isa", choices=["native", "avx2", "both"], default="both")
    parser.add_argument("--llama-python", default=os.environ.get("LEAP_LLAMA_PYTHON", ""),
                        help="a Python with llama-cpp-python installed (else llama.cpp is left out)")
    parser.add_argument("--json-out", default="", help=argparse.SUPPRESS)  # one ISA, written by a child run
    args = parser.parse_args()

    if args.json_out:
        Path(args.json_out).write_text(json.dumps(run_isa(args)))
        return
    from services.runtime.files import atomic_write_json, atomic_write_text

    results = {"runs": {}, "notes": [
        "Same token ids for every engine; greedy; end-of-sequence ignored, so every engine decodes the same "
        "number of tokens. First token: the prompt's prefill (our backend: its prefill call). Decode: median "
        "time of each later token. Ratios are batch-1 tokens/s against transformers' generate in the same dtype.",
        "Greedy tokens as fp32: the share of each engine's tokens, up to its first disagreement, that match "
        "transformers' fp32 greedy tokens (same weights: the GGUF's Q4_1 blocks, dequantized).",
        "Our backend's explicit decode mask: without padding, transformers drops an all-ones mask and asks "
        "SDPA for grouped-query attention, which torch's CPU kernel runs several times slower than one query "
        "per head group against a given mask.",
        "Kernels chosen (as shipped, bf16): for decode steps of up to 4 rows the backend times oneDNN against "
        "torch's own kernels on its first steps and keeps the faster (services/student/backends/cpu_kernels.py); "
        "the batch of 8 always runs on oneDNN.",
        "llama.cpp runs the Q4_1 blocks themselves (4.5 bits per weight) with its own CPU kernels, "
        "whatever ONEDNN_MAX_CPU_ISA says; its numbers appear in every ISA section.",
    ]}
    for isa in (["native", "avx2"] if args.isa == "both" else [args.isa]):
        environ = dict(os.environ)
        environ.pop("ONEDNN_MAX_CPU_ISA", None)
        environ.update(ISA_SETTINGS[isa])
        out = RESULTS / f".engines-{isa}.json"
        cmd = [sys.executable, __file__, "--prompts", str(args.prompts), "--batch", str(args.batch),
               "--new-tokens", str(args.new_tokens), "--threads", str(args.threads), "--isa", isa,
               "--llama-python", args.llama_python, "--json-out", str(out)]
        subprocess.run(cmd, cwd=ROOT, env=environ, check=True)
        results["runs"][isa] = json.loads(out.read_text())
        out.unlink()
    atomic_write_json(RESULTS / "engines.json", results)
    atomic_write_text(RESULTS / "engines.md", to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
