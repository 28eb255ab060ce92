"""Run profile: what a whole `leap run` asks of the machine, phase by phase, against its matmul peak.

    .venv/bin/python bench/run_profile.py [--preset smoke] [--config FILE] [--isa native avx2]
    .venv/bin/python bench/run_profile.py --from-run RUN_DIR [RUN_DIR ...] --isa avx2

With --from-run, no run is started: each finished run directory (e.g. a default run of 47 minutes) is
profiled from its state.json against a peak measured now, with the given --isa setting, on the
machine it ran on (run it there, with nothing else running, or the ratio means nothing).

For each ISA setting (native: whatever oneDNN finds; avx2: ONEDNN_MAX_CPU_ISA=AVX2, which turns AMX
and AVX-512 off, as on most laptops and many cloud CPUs), in the same process environment:

1. the matrix-multiply peak of this machine, fp32 and bf16, with torch's threads: the best of several
   2048x2048 products, in a fresh process;
2. one `leap run` (the preset, plus --config), timed; every phase records its work in state.json
   (orchestrator.work): tokens prefilled by the student (prompt tokens less those its KV cache held),
   served from the cache, decoded, and trained.

FLOPs counted are those of the weight matrices only, a lower bound (attention scores, softmax and
norms are left out): 2 x N per prefilled or decoded token, where N is the model's parameters less its
embeddings (prefill computes the LM head for the last position only; decoding for every token, so
decoded tokens add 2 x vocabulary x width); 4 x N per trained token (LoRA on a frozen base: the forward
pass and the backward pass through the activations; the LoRA weights' own gradients are negligible),
less the tokens of a prefix shared by a batch's rows, which run once (the trainer's shared_prefix_tokens).
Achieved FLOP/s of a phase = its FLOPs / its wall time, shown as a share of the peak of the dtype the
student ran in. Results go to bench/results/run_profile.json and run_profile.md (rewritten per run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.runtime.files import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ISA_SETTINGS = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}

_PEAK_SCRIPT = r"""
import json, time, torch
from services.models.loading import load_model_and_tokenizer

def peak(dtype, n=2048, reps=6):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    with torch.inference_mode():
        torch.mm(a, b)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter(); torch.mm(a, b); best = min(best, time.perf_counter() - t)
            if best > 2.0:
                break
    return 2 * n ** 3 / best

model, _tok, _ = load_model_and_tokenizer("smollm2", device="cpu", dtype="float32")
embed = model.get_input_embeddings().weight
params = sum(p.numel() for p in model.parameters())
tied = model.get_output_embeddings().weight.data_ptr() == embed.data_ptr()
print(json.dumps({"fp32_flops": peak(torch.float32), "bf16_flops": peak(torch.bfloat16),
                  "threads": torch.get_num_threads(), "params": params, "embedding_params": embed.numel(),
                  "vocab": embed.shape[0], "width": embed.shape[1], "tied_lm_head": tied}))
"""


def measure_peak(environ: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"peak measurement failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_leap(environ: dict, preset: str, config: str | None, run_dir: Path) -> float:
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", "--preset", preset, "--run-dir", str(run_dir), "--quiet"]
    if config:
        cmd += ["--config", config]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"leap run failed ({proc.returncode}): {proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return wall


def profile_of(run_dir: Path, model: dict, peak: float) -> list[dict]:
    """Each phase's work (the run report's profile), FLOPs (weights only) and achieved FLOP/s as a share of `peak`."""
    from orchestrator.report import phase_profile

    n = model["params"] - model["embedding_params"]  # the LM head shares the embedding when tied
    head = model["vocab"] * model["width"]
    rows = []
    for work in phase_profile(run_dir):
        seconds = max(1e-9, work["seconds"])
        flops = (2 * n * work.get("prefilled_tokens", 0) + 2 * (n + head) * work.get("decoded_tokens", 0)
                 + 2 * head * work.get("student_steps", 0)
                 + (2 + 2 * work.get("backward_layer_share", 1.0)) * n
                 * (work.get("trained_tokens", 0) - work.get("shared_prefix_tokens", 0)))
        rows.append({**work, "gflop": round(flops / 1e9, 1), "gflop_per_s": round(flops / seconds / 1e9, 2),
                     "share_of_peak": round(flops / seconds / peak, 4)})
    return rows


def totals(rows: list[dict]) -> dict:
    keys = ("seconds", "student_steps", "prompt_tokens", "prefilled_tokens", "cached_prompt_tokens", "decoded_tokens",
            "trained_tokens", "gflop")
    from orchestrator.report import wall_seconds

    out = {k: round(sum(r.get(k, 0) for r in rows), 2) for k in keys}
    out["seconds"] = round(wall_seconds(rows), 2)  # phases that ran side by side count once
    return out


def markdown(result: dict) -> str:
    if result.get("from_runs"):
        what = ("finished runs (" + ", ".join(f"`{d}`" for d in result["from_runs"]) + "), profiled from their "
                "state.json; the peak was measured afterwards on the same machine, with nothing else running,")
    else:
        what = f"`leap run --preset {result['preset']}`{' --config ' + result['config'] if result['config'] else ''}"
    lines = ["# Run profile", "",
             f"{what} on {result['machine']['cpus']} CPUs ({result['machine']['processor']}), "
             f"torch {result['machine']['torch']}.",
             "FLOPs are the weight matrices' only (a lower bound): 2N per prefilled or decoded token (+ the LM head "
             "per decoded token and per step), 4N per trained token (2N forward, 2N backward; the backward's share of the layers when LoRA sits on the last ones only) less the tokens of shared prefixes; N = parameters less embeddings. The share of "
             "peak is taken against the student's dtype (the trainer measures its own dtype the same way); phases "
             "that load a model or start a job count that time too.", ""]
    for isa, run in result["runs"].items():
        peak = run["peak"]
        lines += [f"## {isa} ({run['environment'] or 'no override'})", "",
                  (f"Run `{run['run_dir']}` ({run['run_name']}, seed {run['seed']}). " if run.get("run_dir") else "") +
                  f"Run wall time **{run['wall_s']:.0f} s**; student dtype {run['student_dtype']}; matmul peak "
                  f"fp32 {peak['fp32_flops'] / 1e9:.3g} GFLOP/s, bf16 {peak['bf16_flops'] / 1e9:.3g} GFLOP/s "
                  f"({peak['threads']} threads).", "",
                  "| phase | s | student steps | prefilled | cached | decoded | trained | GFLOP | GFLOP/s | % of peak |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in run["phases"] + [{"phase": "total", **run["totals"],
                                   "gflop_per_s": run["totals"]["gflop"] / max(run["totals"]["seconds"], 1e-9),
                                   "share_of_peak": run["share_of_peak"]}]:
            cells = [f"{r.get(k, 0):,.0f}" if r.get(k) else "" for k in
                     ("student_steps", "prefilled_tokens", "cached_prompt_tokens", "decoded_tokens", "trained_tokens")]
            lines.append(f"| {r['phase']} | {r['seconds']:.1f} | " + " | ".join(cells) +
                         f" | {r['gflop']:.1f} | {r['gflop_per_s']:.1f} | {100 * r['share_of_peak']:.1f} |")
        prompt, prefilled = run["totals"].get("prompt_tokens", 0), run["totals"].get("prefilled_tokens", 0)
        if prompt and prefilled:
            lines += ["", f"Prompt tokens {prompt:,.0f}, of which the student prefilled {prefilled:,.0f} "
                          f"(**{prompt / prefilled:.2f}x fewer**; the rest came from its KV cache)."]
        if run.get("success_table"):
            lines += ["", "What the run learned (its results table):", "", *run["success_table"]]
        lines.append("")
    return "\n".join(lines)


def success_table(run_dir: Path) -> list[str]:
    """The agents' success table of the run's report (results.md), as markdown lines; [] without a report."""
    try:
        text = (run_dir / "results.md").read_text()
    except OSError:
        return []
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| agent")), None)
    if start is None:
        return []
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def run_record(run_dir: Path, isa: str, peak: dict, wall: float | None = None) -> dict:
    """The profile of one finished run directory against `peak` (its dtype's), with its totals and outcome."""
    dtype = json.loads((run_dir / "manifest.json").read_text()).get("student_dtype", "")
    dtype_peak = peak["bf16_flops"] if "bf16" in dtype or "bfloat16" in dtype else peak["fp32_flops"]
    phases = profile_of(run_dir, peak, dtype_peak)
    total = totals(phases)
    return {"environment": " ".join(f"{k}={v}" for k, v in ISA_SETTINGS[isa].items()),
            "wall_s": round(wall if wall is not None else total["seconds"], 1),
            "student_dtype": dtype, "peak": peak, "phases": phases, "totals": total,
            "share_of_peak": round(total["gflop"] * 1e9 / max(total["seconds"], 1e-9) / dtype_peak, 4),
            "success_table": success_table(run_dir)}


def profile_finished_runs(run_dirs: list[Path], isa: str, out: Path) -> None:
    """Profile finished runs against a peak measured now (one ISA setting), into run_profile_<name>.{json,md}."""
    import torch

    for run_dir in run_dirs:
        if not (run_dir / "state.json").is_file() or not (run_dir / "manifest.json").is_file():
            raise SystemExit(f"{run_dir}: not a run directory (no state.json and manifest.json)")
    environ = dict(os.environ, **ISA_SETTINGS[isa])
    if not ISA_SETTINGS[isa]:
        environ.pop("ONEDNN_MAX_CPU_ISA", None)
    peak = measure_peak(environ)
    result = {"preset": None, "config": None, "from_runs": [str(d) for d in run_dirs], "runs": {},
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "torch": torch.__version__, "load_average_before": list(os.getloadavg())}}
    names = set()
    for run_dir in run_dirs:
        config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
        fields = dict(line.split(":", 1) for line in config.splitlines() if line and not line.startswith(" ")
                      and ":" in line)
        name, seed = fields.get("name", "").strip() or "run", fields.get("seed", "").strip()
        names.add(name)
        record = run_record(run_dir, isa, peak)
        record.update(run_dir=str(run_dir), run_name=name, seed=seed)
        result["runs"][f"{isa}, {run_dir.name}"] = record
    result["machine"]["load_average_after"] = list(os.getloadavg())
    out.mkdir(parents=True, exist_ok=True)
    name = "run_profile_" + ("_".join(sorted(names)) if names else "runs")
    atomic_write_json(out / f"{name}.json", result)
    atomic_write_text(out / f"{name}.md", markdown(result))
    print(markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--config", default=None, help="a run config layered over the preset")
    parser.add_argument("--isa", nargs="+", default=list(ISA_SETTINGS), choices=list(ISA_SETTINGS))
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--from-run", nargs="+", default=None, metavar="RUN_DIR",
                        help="profile these finished runs instead of starting one (one --isa setting)")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="keep each run's directory as DIR/<isa> (checkpoints, trajectories, results) instead of "
                             "deleting it")
    args = parser.parse_args()
    import torch

    if args.from_run:
        if len(args.isa) != 1:
            raise SystemExit("--from-run needs exactly one --isa: the setting the runs ran with")
        return profile_finished_runs([Path(d) for d in args.from_run], args.isa[0], Path(args.out))
    result = {"preset": args.preset, "config": args.config, "runs": {},
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "torch": torch.__version__, "load_average_before": list(os.getloadavg())}}
    for isa in args.isa:
        environ = dict(os.environ, **ISA_SETTINGS[isa])
        if not ISA_SETTINGS[isa]:
            environ.pop("ONEDNN_MAX_CPU_ISA", None)
        peak = measure_peak(environ)
        print(json.dumps({"isa": isa, "peak": peak}), flush=True)
        with tempfile.TemporaryDirectory(prefix="run-profile-") as tmp:
            run_dir = Path(args.keep) / isa if args.keep else Path(tmp) / "run"
            if run_dir.exists():
                raise SystemExit(f"{run_dir} exists: --keep needs a directory without a run of that name")
            wall = run_leap(environ, args.preset, args.config, run_dir)
            run = run_record(run_dir, isa, peak, wall)
        total = run["totals"]
        result["runs"][isa] = run
        print(json.dumps({"isa": isa, "wall_s": run["wall_s"], "totals": total}), flush=True)
    result["machine"]["load_average_after"] = list(os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "run_profile" if args.preset == "smoke" and not args.config else f"run_profile_{args.preset}"
    atomic_write_json(out / f"{name}.json", result)
    atomic_write_text(out / f"{name}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
