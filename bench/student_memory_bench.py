"""Student memory: the peak RSS of `leap student serve` at its defaults, against the pod's memory limit.

    .venv/bin/python bench/student_memory_bench.py [--clients 32] [--words 600] [--isa AVX2]

The Kubernetes manifest (deploy/base/workload/student.yaml) runs the student at its command-line
defaults under a memory limit; a replica that goes past it is killed with every request in flight.
This bench starts the server as the manifest does (the defaults, configured from the environment) and
plays the heaviest load its limits allow: `--clients` concurrent Act calls, each with a prompt close
to --max-prompt-tokens (an observation of `--words` random words) and up to 512 new tokens, sampled.
It samples the server's resident memory (VmRSS, and the kernel's high-water mark VmHWM) throughout.

Reference, in the same run: transformers' own `generate` on one padded batch of as many prompts as the
server's batch holds (the same prompts, 64 new tokens), in a process of its own: what the model and
one batch's cache cost with nothing of ours around them.

`--isa AVX2` sets ONEDNN_MAX_CPU_ISA=AVX2 for both (an ordinary CPU: --dtype auto picks fp32 there,
whose KV cache is twice bf16's). Results: bench/results/student_memory.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
VOCAB = ("apple banana cabinet drawer fridge kettle lamp mug plate sink spoon table towel window shelf stove "
         "toaster vase bowl cup knife fork pan pot box book pen key card").split()


def memory_mb(pid: int) -> dict[str, int]:
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) // 1024
    return found


def observation(seed: int, words: int) -> str:
    rnd = random.Random(seed)
    return " ".join(f"{rnd.choice(VOCAB)}{rnd.randint(1, 99)}" for _ in range(words))


def manifest_limit() -> str:
    text = (ROOT / "deploy" / "base" / "workload" / "student.yaml").read_text()
    limits = text[text.index("limits:"):]
    return re.search(r"memory:\s*(\S+)", limits).group(1)


def server_defaults(env: dict) -> dict:
    """The settings `leap student serve` starts with under `env` (its own argument defaults)."""
    from unittest import mock

    from services.student.cli import add_student_arguments

    parser = argparse.ArgumentParser()
    with mock.patch.dict(os.environ, env, clear=True):
        add_student_arguments(parser)
    args = parser.parse_args([])
    return {"max_batch_size": args.max_batch_size, "max_prefill_rows": args.max_prefill_rows,
            "max_prompt_tokens": args.max_prompt_tokens, "prompt_cache_mb": args.prompt_cache_mb}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_load(args, env: dict) -> dict:
    from services.student.client import StudentClient, act_item

    port = free_port()
    log = tempfile.NamedTemporaryFile("w", prefix="student-memory-server-", suffix=".log", delete=False)
    print(f"server log: {log.name}", file=sys.stderr)
    server = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "student", "serve"], cwd=ROOT,
                              env=dict(env, LEAP_HOST="127.0.0.1", LEAP_PORT=str(port)),
                              stdout=log, stderr=subprocess.STDOUT)
    client = StudentClient(f"127.0.0.1:{port}", timeout=1800)
    try:
        client.wait_ready(timeout=600)
        info = client.model_info()
        idle = memory_mb(server.pid)
        peak, stop, errors, tokens = [idle["VmRSS"]], threading.Event(), [], []

        def sample() -> None:
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], memory_mb(server.pid)["VmRSS"])
                except OSError:
                    return
                time.sleep(0.2)

        def play(i: int) -> None:
            try:
                result = client.act([act_item(env="household", goal=f"Your task is to: put a mug {i} in sink.",
                                              observation=observation(i, args.words), max_new_tokens=512,
                                              temperature=1.0, seed=i + 1)], timeout=1800)[0]
                tokens.append((result.prompt_tokens, len(result.completion_token_ids)))
            except Exception as exc:  # noqa: BLE001 - reported in the results
                detail = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
                errors.append(f"{type(exc).__name__}: {detail}"[:300])

        threading.Thread(target=sample, daemon=True).start()
        started = time.perf_counter()
        threads = [threading.Thread(target=play, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        end = memory_mb(server.pid)
        return {"seconds": round(time.perf_counter() - started, 1), "dtype": info.dtype, "idle_mb": idle["VmRSS"],
                "peak_sampled_mb": peak[0], "peak_hwm_mb": end["VmHWM"], "after_mb": end["VmRSS"],
                "prompt_tokens_mean": round(sum(p for p, _ in tokens) / max(1, len(tokens)), 1),
                "completion_tokens_mean": round(sum(c for _, c in tokens) / max(1, len(tokens)), 1),
                "requests": len(tokens), "errors": errors}
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=120)
        log.close()


RAW = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from services.models.loading import resolve_model
torch.set_num_threads(2)
spec = json.loads(sys.argv[1])
path = resolve_model("smollm2").location
tok = AutoTokenizer.from_pretrained(path); tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, spec["dtype"])).eval()
texts = [tok.apply_chat_template([{"role": "user", "content": o}], tokenize=False, add_generation_prompt=True)
         for o in spec["observations"]]
batch = tok(texts, return_tensors="pt", padding=True)
with torch.inference_mode():
    model.generate(**batch, max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id)
status = dict(l.split(":", 1) for l in open("/proc/self/status"))
print(json.dumps({"peak_hwm_mb": int(status["VmHWM"].split()[0]) // 1024, "rows": len(texts),
                  "prompt_tokens": int(batch["input_ids"].shape[1])}))
"""


def raw_generate(args, env: dict, dtype: str, rows: int) -> dict:
    spec = {"dtype": dtype, "observations": [observation(i, args.words) for i in range(rows)]}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RAW, json.dumps(spec)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), seconds=round(time.perf_counter() - started, 1))


def markdown(r: dict) -> str:
    s, raw = r["server"], r["raw_generate"]
    lines = ["# Student memory (bench/student_memory_bench.py)", "",
             f"{r['machine']['cpus']} CPUs, torch {r['machine']['torch']}, ONEDNN_MAX_CPU_ISA="
             f"{r['isa'] or '(unset)'}; the server at its defaults ({s['dtype']}): batch of "
             f"{r['defaults']['max_batch_size']}, prefill chunks of {r['defaults']['max_prefill_rows']}, "
             f"prompts up to {r['defaults']['max_prompt_tokens']} tokens, whole-prompt cache "
             f"{r['defaults']['prompt_cache_mb']} MiB. The manifest's memory limit: **{r['manifest_limit']}**.", "",
             f"Load: {r['clients']} concurrent Act calls, prompts of {s['prompt_tokens_mean']} tokens on average, "
             f"up to 512 new tokens sampled ({s['completion_tokens_mean']} on average); {s['requests']} answered, "
             f"{len(s['errors'])} failed, in {s['seconds']} s.", "",
             "| process | idle MiB | peak MiB |", "|---|---:|---:|",
             f"| `leap student serve` | {s['idle_mb']:,} | {max(s['peak_sampled_mb'], s['peak_hwm_mb']):,} |"]
    if "peak_hwm_mb" in raw:
        lines.append(f"| raw `model.generate`, one padded batch of {raw['rows']} x {raw['prompt_tokens']} tokens, "
                     f"64 new | | {raw['peak_hwm_mb']:,} |")
        lines += ["", f"Server peak / raw generate peak: **{r['ratio_to_raw']}**."]
    else:
        lines.append(f"| raw `model.generate` | failed | {raw.get('error', '')[:200]} |")
    lines += ["", "The server holds what the raw call does not: the running batch's KV cache (rows that joined "
              "while others decode), the newcomers' prefill, and the whole-prompt cache (up to its MiB budget).",
              ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--words", type=int, default=600, help="observation words (about 3 tokens each)")
    parser.add_argument("--isa", default="", help="ONEDNN_MAX_CPU_ISA for the server and the reference")
    parser.add_argument("--out", default=str(RESULTS / "student_memory.json"))
    args = parser.parse_args()
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAP_")}
    if args.isa:
        env["ONEDNN_MAX_CPU_ISA"] = args.isa
    defaults = server_defaults(env)
    server = serve_and_load(args, env)
    dtype = {"bfloat16": "bfloat16", "bf16": "bfloat16"}.get(server["dtype"], "float32")
    raw = raw_generate(args, env, dtype, defaults["max_batch_size"])
    peak = max(server["peak_sampled_mb"], server["peak_hwm_mb"])
    result = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
              "isa": args.isa, "clients": args.clients, "words": args.words, "manifest_limit": manifest_limit(),
              "defaults": defaults,
              "server": server, "raw_generate": raw,
              "ratio_to_raw": round(peak / raw["peak_hwm_mb"], 2) if "peak_hwm_mb" in raw else None}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 1 if server["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
