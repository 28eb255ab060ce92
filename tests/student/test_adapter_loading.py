"""Reading and verifying a LoRA checkpoint for the local model: shapes against the model's Linear layers,
weight values, dtype and device of what is handed to the injection."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from services.runtime.errors import FailedPrecondition
from services.student.backends.adapter_loading import (
    MAX_ABS_WEIGHT,
    check_shapes,
    check_values,
    linear_shapes,
    load_adapter,
)
from services.student.checkpoints import CheckpointLimits
from services.student.types import CheckpointSpec

Q = "model.layers.0.self_attn.q_proj"
SHAPES = {Q: (16, 32)}  # in, out


def _lora(module: str, a: tuple[int, ...], b: tuple[int, ...]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {f"base_model.model.{module}.lora_A.weight": ("F32", a), f"base_model.model.{module}.lora_B.weight": ("F32", b)}


def test_linear_shapes_name_every_linear_layer():
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    assert linear_shapes(model) == {"0": (3, 5), "2": (5, 2)}


def test_lora_tensors_that_fit_the_model_pass():
    check_shapes(_lora(Q, (4, 16), (32, 4)), LoraConfig(r=4), "ckpt", SHAPES)
    check_shapes(_lora(Q, (2, 16), (32, 2)), LoraConfig(r=4, rank_pattern={"q_proj": 2}), "ckpt", SHAPES)


@pytest.mark.parametrize("tensors, message", [
    (_lora("model.layers.0.self_attn.x_proj", (4, 16), (32, 4)), "which this base model does not have"),
    (_lora(Q, (4, 17), (32, 4)), "does not fit this base model"),
    (_lora(Q, (4, 16), (31, 4)), "does not fit this base model"),
    (_lora(Q, (8, 16), (32, 8)), "does not fit this base model"),  # r=8 where the config says 4
    (_lora(Q, (4, 16, 1), (32, 4)), "has 3 dimensions"),
])
def test_lora_tensors_that_do_not_fit_are_refused(tensors, message):
    with pytest.raises(FailedPrecondition, match=message) as refused:
        check_shapes(tensors, LoraConfig(r=4), "ckpt", SHAPES)
    assert refused.value.message.startswith("ckpt: ")


def test_weight_values_must_be_finite_and_sensibly_small():
    check_values({"a": torch.full((2, 2), MAX_ABS_WEIGHT), "ints": torch.tensor([10**9]), "empty": torch.empty(0)},
                 "ckpt")
    with pytest.raises(FailedPrecondition, match="not finite"):
        check_values({"a": torch.tensor([0.0, float("nan")])}, "ckpt")
    with pytest.raises(FailedPrecondition, match="not finite"):
        check_values({"a": torch.tensor([float("-inf")])}, "ckpt")
    with pytest.raises(FailedPrecondition, match="values up to 2e\\+04"):
        check_values({"a": torch.tensor([1.0, -2 * MAX_ABS_WEIGHT])}, "ckpt")


@pytest.fixture(scope="module")
def model_shapes(smollm2):
    return linear_shapes(smollm2.model)


def _load(trained_adapter, shapes, **overrides):
    path, sha = trained_adapter
    kwargs = dict(adapters_root="", limits=CheckpointLimits(), base_names=["smollm2"], shapes=shapes, device="cpu",
                  dtype=torch.bfloat16)
    kwargs.update(overrides)
    return load_adapter(CheckpointSpec(version="v1", uri=str(path), sha256=sha), **kwargs)


def test_a_trained_checkpoint_loads_in_the_models_dtype(trained_adapter, model_shapes):
    prepared = _load(trained_adapter, model_shapes)
    config, state, files = prepared.payload
    assert config.r == 8 and config.inference_mode and prepared.digest == files.digest
    assert state and all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in state.values())
    assert all(".lora_A." in k or ".lora_B." in k for k in state)


def test_a_checkpoint_of_another_model_is_refused(trained_adapter, model_shapes):
    with pytest.raises(FailedPrecondition):
        _load(trained_adapter, model_shapes, base_names=["some-other-model"])
    wrong_sizes = {name: (i + 1, o + 1) for name, (i, o) in model_shapes.items()}
    with pytest.raises(FailedPrecondition, match="does not fit this base model"):
        _load(trained_adapter, wrong_sizes)

