"""Resolve a model name to something transformers can load, and load it on the right device/dtype."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


def cpu_has_bf16_matmul() -> bool:
    """True on CPUs with AMX tiles (Sapphire Rapids and later), where oneDNN runs bf16 matmuls natively.

    Measured on such a 2-core machine with SmolLM2-135M: bf16 prefill 2.1-2.7k tok/s against 0.54-0.70k
    in fp32, a decode step at batch 16 83 ms against 143 ms. Without AMX, bf16 is emulated and slower
    than fp32, so those CPUs keep fp32.
    """
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # noqa: BLE001 - a private probe; treat any failure as "no"
        return False


def pick_dtype(device: str, dtype: str | None = None):
    """bf16 on GPUs that support it (else fp16); on CPU bf16 where AMX runs it natively, else fp32."""
    import torch

    if dtype and dtype != "auto":
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32


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
