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


def resolve_model(name_or_path: str | None) -> ModelSpec:
    """Alias -> converted local folder; existing folder -> itself; anything else -> a hub id."""
    name = (name_or_path or DEFAULT_MODEL).strip()
    if name.lower() in _ALIASES:
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


def pick_dtype(device: str, dtype: str | None = None):
    """fp32 on CPU (bf16 is 4-6x slower there), bf16 on GPUs that support it, else fp16."""
    import torch

    if dtype and dtype != "auto":
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


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
