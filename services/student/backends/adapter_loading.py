"""Reading and verifying a LoRA checkpoint for the local model, off the thread that owns the model.

`load_adapter` reads the checkpoint (hashes, config, safetensors structure: `read_checkpoint`), checks
that it was trained on this base model, that every LoRA weight sits on a Linear layer of this model
with matching sizes, and that every weight is finite and at most MAX_ABS_WEIGHT in size (in fp32 and
again in the model's dtype), and returns its tensors on the model's device, ready to inject.
"""

from __future__ import annotations

import torch

from services.runtime.errors import FailedPrecondition, quote
from services.student.backends.base import PreparedAdapter
from services.student.checkpoints import CheckpointLimits, check_base_model, read_checkpoint
from services.student.types import CheckpointSpec

#: Largest absolute value of an adapter weight that is served. Trained LoRA weights stay far below 1;
#: a weight of 1e30 (finite in fp32) overflows any forward pass it takes part in.
MAX_ABS_WEIGHT = 1e4


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Every Linear layer of `model` by name -> (in_features, out_features)."""
    return {name: (module.in_features, module.out_features)
            for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def load_adapter(spec: CheckpointSpec, *, adapters_root: str, limits: CheckpointLimits, base_names: list[str],
                 shapes: dict[str, tuple[int, int]], device: str, dtype: torch.dtype) -> PreparedAdapter:
    """The checkpoint verified for this model; its payload is (peft config, tensors, checkpoint files).

    `adapters_root` "" accepts any local folder; `shapes`: the model's `linear_shapes`.
    NotFound / InvalidArgument / FailedPrecondition as `read_checkpoint` says, FailedPrecondition for a
    checkpoint that does not fit this model or holds broken weights.
    """
    from peft import PeftConfig
    from safetensors.torch import load as load_safetensors

    files = read_checkpoint(spec, adapters_root or None, limits)
    check_base_model(files, base_names)
    try:
        config = PeftConfig.from_peft_type(**files.config)
    except Exception as exc:  # noqa: BLE001 - any config error is the checkpoint's fault
        raise FailedPrecondition(f"{files.directory}/adapter_config.json is not a valid LoRA config: {exc}") from exc
    config.inference_mode = True
    # An adapter is a delta over the base model as shipped, its weights read from the file. Options that
    # make peft rewrite or restructure the base model when the adapter is added (PiSSA/OLoRA/LoftQ/CorDA
    # initialisations subtract a decomposition from the base weights in place; layer replication copies
    # decoder layers) would change every version served, "base" included, even for a refused load.
    if getattr(config, "layer_replication", None):
        raise FailedPrecondition(f"{files.directory}/adapter_config.json: layer_replication changes the base "
                                 "model's structure; this service serves adapters over the base model as it is")
    if getattr(config, "target_parameters", None):
        raise FailedPrecondition(f"{files.directory}/adapter_config.json: target_parameters (LoRA on raw "
                                 "parameters) is not served; target modules instead")
    if hasattr(config, "init_lora_weights"):
        config.init_lora_weights = False  # the file's weights replace any initialisation; none touches the base
    check_shapes(files.tensors, config, str(files.directory), shapes)
    try:
        state = load_safetensors(files.weights_bytes)
    except Exception as exc:  # noqa: BLE001
        raise FailedPrecondition(f"{files.directory}/adapter_model.safetensors cannot be read: {exc}") from exc
    check_values(state, str(files.directory))
    # LoRA weights run in the model's dtype: kept in fp32 beside a bf16 model, every LoRA layer would
    # cast its input to fp32 and multiply without the bf16 units (measured on a 2-core CPU with AMX:
    # the LoRA path then cost as much as the base layers).
    state = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in state.items()}
    check_values(state, str(files.directory))  # again in the model's dtype (fp16 overflows at 65504)
    return PreparedAdapter(spec, files.digest, payload=(config, state, files))


def check_values(state: dict[str, torch.Tensor], where: str) -> None:
    """Every floating weight finite and at most MAX_ABS_WEIGHT in size (FailedPrecondition otherwise)."""
    for key, tensor in state.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        if not bool(torch.isfinite(tensor).all()):
            raise FailedPrecondition(f"{where}: {quote(key)} holds values that are not finite (NaN or inf); "
                                     "the adapter is broken and is not served")
        peak = float(tensor.abs().max())
        if peak > MAX_ABS_WEIGHT:
            raise FailedPrecondition(f"{where}: {quote(key)} holds values up to {peak:.3g}, which exceed the "
                                     f"{MAX_ABS_WEIGHT:g} a LoRA weight can sensibly have; the adapter is not served")


def check_shapes(tensors: dict[str, tuple[str, tuple[int, ...]]], config, where: str,
                 shapes: dict[str, tuple[int, int]]) -> None:
    """Every LoRA tensor (name -> (dtype, shape)) must sit on a Linear layer in `shapes`, with matching sizes."""
    rank_pattern = getattr(config, "rank_pattern", None) or {}
    for key, (_dtype, shape) in tensors.items():
        name = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
        for part in (".lora_A.weight", ".lora_B.weight"):
            if name.endswith(part):
                module = name[: -len(part)]
                if module not in shapes:
                    raise FailedPrecondition(
                        f"{where}: the adapter targets {quote(module)}, which this base model does not have "
                        "(trained on another model?)")
                in_f, out_f = shapes[module]
                if len(shape) != 2:
                    raise FailedPrecondition(f"{where}: {quote(key)} has {len(shape)} dimensions; a LoRA "
                                             "weight is a matrix")
                rank = shape[0] if part == ".lora_A.weight" else shape[1]
                expected = (rank, in_f) if part == ".lora_A.weight" else (out_f, rank)
                if tuple(shape) != expected or (not rank_pattern and rank != config.r):
                    raise FailedPrecondition(
                        f"{where}: {quote(key)} has shape {list(shape)[:8]}, but {quote(module)} needs "
                        f"{[config.r if not rank_pattern else 'r', in_f] if part == '.lora_A.weight' else [out_f, 'r']}"
                        " (r from adapter_config.json): the adapter does not fit this base model")
                break
