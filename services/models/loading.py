"""Resolve a model name to something transformers can load, and load it on the right device/dtype."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("leap.models")

DEFAULT_MODEL = "smollm2"
_ALIASES = {"smollm2", "smollm2-135m", "smollm2-135m-instruct", "default"}


@dataclass(frozen=True)
class ModelSpec:
    """What was asked for and what will be loaded."""

    requested: str
    location: str  # a local folder or a hub id
    is_local: bool


def is_default_alias(name: str | None) -> bool:
    """True for the names that mean the embedded SmolLM2 ("smollm2", "default", ...)."""
    return (name or DEFAULT_MODEL).strip().lower() in _ALIASES


def resolve_model(name_or_path: str | None) -> ModelSpec:
    """Alias -> converted local folder; existing folder -> itself; anything else -> a hub id."""
    name = (name_or_path or DEFAULT_MODEL).strip()
    if is_default_alias(name):
        from services.models.smollm2 import ensure_smollm2_folder

        return ModelSpec(name, str(ensure_smollm2_folder()), True)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json: not a transformers model folder")
        return ModelSpec(name, str(path.resolve()), True)
    return ModelSpec(name, name, False)


def pick_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


#: The CPU's bf16 matmuls must beat fp32 by this factor to be chosen (bf16 costs precision).
BF16_MIN_SPEEDUP = 1.2


def measure_cpu_bf16_speedup(m: int = 64, k: int = 576, n: int = 1536, reps: int = 5) -> float:
    """bf16 / fp32 matrix-multiply throughput on this CPU, measured now with this process's threads.

    The shape is one of SmolLM2-135M's MLP products for 64 rows. Where oneDNN runs bf16 natively
    (AMX, AVX-512 BF16) bf16 is 2-4x fp32; where it is emulated (AVX2 only, or ONEDNN_MAX_CPU_ISA=AVX2)
    it is 10-50x slower. Measured on a 2-core AMD EPYC (AVX-512 BF16, no AMX): 56-72 against 16-25
    GFLOP/s, and 0.7-1.2 with ONEDNN_MAX_CPU_ISA=AVX2. Best of `reps` alternating runs; stops early
    when bf16 is clearly the slower (about 0.1 s in all on such a CPU).
    """
    import time

    import torch

    def once(a, b) -> float:
        start = time.perf_counter()
        torch.mm(a, b)
        return time.perf_counter() - start

    with torch.inference_mode():
        generator = torch.Generator().manual_seed(0)
        a32, b32 = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
        a16, b16 = a32.to(torch.bfloat16), b32.to(torch.bfloat16)
        once(a32, b32)
        once(a16, b16)
        best32 = best16 = float("inf")
        for _ in range(reps):
            best32 = min(best32, once(a32, b32))
            best16 = min(best16, once(a16, b16))
            if best16 > 4 * best32:
                break
    return best32 / best16


@functools.lru_cache(maxsize=1)
def cpu_prefers_bf16() -> bool:
    """Whether bf16 matmuls beat fp32 on this CPU by BF16_MIN_SPEEDUP, measured once per process.

    Chosen by measuring, not by the name of an instruction set: AMX is not needed (AVX-512 BF16 CPUs
    win too), and ONEDNN_MAX_CPU_ISA caps what oneDNN may use whatever the CPU has.
    """
    speedup = measure_cpu_bf16_speedup()
    choice = speedup >= BF16_MIN_SPEEDUP
    log.info("CPU bf16/fp32 matmul throughput %.2fx: %s", speedup, "bf16" if choice else "fp32")
    return choice


def pick_dtype(device: str, dtype: str | None = None):
    """bf16 on GPUs that support it (else fp16); on CPU bf16 where it measures faster than fp32, else fp32."""
    import torch

    if dtype and dtype != "auto":
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_prefers_bf16() else torch.float32


def load_model_and_tokenizer(name_or_path: str | None = None, *, device: str | None = None,
                             dtype: str | None = None, padding_side: str = "left"):
    """Load (model, tokenizer, spec). Tokenizer gets a pad token and the requested padding side."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = resolve_model(name_or_path)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    tokenizer = AutoTokenizer.from_pretrained(spec.location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    model = AutoModelForCausalLM.from_pretrained(spec.location, dtype=torch_dtype)
    model.to(dev)
    model.eval()
    return model, tokenizer, spec
