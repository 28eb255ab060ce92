"""LoRA adapters on a tiny model: merged and unmerged passes agree, base weights come back bit for bit,
mixed batches route rows to their adapters, broken adapters are refused and rolled back."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

from services.runtime.errors import FailedPrecondition
from services.student.backends.lora import BASE_ROW, LoraAdapters

VOCAB, HIDDEN = 11, 8
PROBE = torch.tensor([[1, 2, 3]])


class Tiny(torch.nn.Module):
    """Embedding -> q_proj -> o_proj -> lm_head, answering like a transformers causal LM (`.logits`)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
        self.q_proj = torch.nn.Linear(HIDDEN, HIDDEN)
        self.o_proj = torch.nn.Linear(HIDDEN, HIDDEN)
        self.lm_head = torch.nn.Linear(HIDDEN, VOCAB)

    def forward(self, input_ids, use_cache=False, **_):
        return SimpleNamespace(logits=self.lm_head(self.o_proj(torch.relu(self.q_proj(self.embed(input_ids))))))


def _config(**kw) -> LoraConfig:
    return LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "o_proj"], **kw)


def _adapter(seed: int, **kw) -> tuple[LoraConfig, dict]:
    """A config and random LoRA weights for Tiny (peft's default B = 0 would make the delta vanish)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = get_peft_model(Tiny(), _config(**kw))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    config = _config(**kw)
    config.inference_mode = True
    return config, get_peft_model_state_dict(reference)


def _logits(lora: LoraAdapters, handles: list[str | None]) -> torch.Tensor:
    inputs = {"input_ids": torch.tensor([[1, 2, 3]] * len(handles))}
    with torch.no_grad():
        return lora.prepare_forward(handles, inputs)(**inputs).logits


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = Tiny().eval()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _same_weights(model: torch.nn.Module, snapshot: dict) -> bool:
    """The base weights (peft moves a targeted layer's under `base_layer`) equal `snapshot`."""
    current = {k.replace("base_layer.", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    return current.keys() == snapshot.keys() and all(torch.equal(current[k], v) for k, v in snapshot.items())


def test_the_base_model_runs_bare_until_an_adapter_is_installed(tiny):
    model, _ = tiny
    lora = LoraAdapters(model)
    assert lora.prepare_forward([None], {}) is model and lora.count == 0


def test_a_merged_uniform_pass_computes_the_unmerged_pass_and_base_weights_come_back(tiny):
    model, snapshot = tiny
    merged, unmerged = LoraAdapters(model), LoraAdapters(copy.deepcopy(model), merge_uniform=False)
    for lora in (merged, unmerged):
        lora.inject("A", *_adapter(seed=1), "A", PROBE)
    assert merged.mergeable == {"A"} and merged.count == 1
    base = _logits(merged, [None])
    fast, reference = _logits(merged, ["A"]), _logits(unmerged, ["A"])
    assert merged.merged == "A" and merged.mode == "disabled" and not _same_weights(model, snapshot)
    assert unmerged.merged is None and unmerged.mode == "A"
    assert not torch.allclose(fast, base, atol=1e-3)  # the adapter changes the answer
    assert torch.allclose(fast, reference, atol=1e-5)
    assert torch.equal(_logits(merged, [None]), base)
    assert merged.merged is None and _same_weights(model, snapshot)  # bit for bit


def test_a_mixed_pass_routes_each_row_to_its_adapter(tiny):
    model, _ = tiny
    lora = LoraAdapters(model)
    lora.inject("A", *_adapter(seed=1), "A", PROBE)
    lora.inject("B", *_adapter(seed=2), "B", PROBE)
    inputs = {"input_ids": torch.tensor([[1, 2, 3]] * 3)}
    lora.prepare_forward(["A", None, "B"], inputs)
    assert inputs["adapter_names"] == ["A", BASE_ROW, "B"] and lora.mode == "mixed"
    mixed = _logits(lora, ["A", None, "B"])
    for i, handle in enumerate(["A", None, "B"]):
        assert torch.allclose(mixed[i], _logits(lora, [handle])[0], atol=1e-5)


def test_swapping_merged_adapters_does_not_drift(tiny):
    model, snapshot = tiny
    lora = LoraAdapters(model)
    lora.inject("A", *_adapter(seed=1), "A", PROBE)
    lora.inject("B", *_adapter(seed=2), "B", PROBE)
    first = _logits(lora, ["A"])
    for _ in range(5):
        _logits(lora, ["B"])
        assert lora.merged == "B"
    assert torch.equal(_logits(lora, ["A"]), first)
    lora.restore_base_weights()
    assert _same_weights(model, snapshot)


def test_an_adapter_with_non_finite_scores_is_refused_and_rolled_back(tiny):
    model, snapshot = tiny
    lora = LoraAdapters(model)
    config, state = _adapter(seed=1)
    state = {k: v * 1e30 if "lora_B" in k else v for k, v in state.items()}  # finite weights, overflowing scores
    with pytest.raises(FailedPrecondition, match="probe prompt are not finite"):
        lora.inject("huge", config, state, "ckpt", PROBE)
    assert lora.peft is None and lora.count == 0 and _same_weights(model, snapshot)
    assert not any("lora" in name for name, _ in model.named_modules())
    lora.inject("A", *_adapter(seed=1), "A", PROBE)
    with pytest.raises(FailedPrecondition, match="probe prompt are not finite"):
        lora.inject("huge", config, state, "ckpt", PROBE)
    assert list(lora.peft.peft_config) == ["A"] and lora.mergeable == {"A"}


def test_weights_that_do_not_match_the_config_are_refused(tiny):
    model, _ = tiny
    lora = LoraAdapters(model)
    config, state = _adapter(seed=1)
    state = {k: v for k, v in state.items() if "o_proj" not in k}
    with pytest.raises(FailedPrecondition, match="do not match its config"):
        lora.inject("A", config, state, "ckpt", PROBE)
    assert lora.peft is None


def test_dora_stays_unmerged_and_removal_keeps_the_last_adapter(tiny):
    model, snapshot = tiny
    lora = LoraAdapters(model)
    lora.inject("A", *_adapter(seed=1), "A", PROBE)
    lora.inject("D", *_adapter(seed=3, use_dora=True), "D", PROBE)
    assert lora.mergeable == {"A"}
    _logits(lora, ["D"])
    assert lora.merged is None and lora.mode == "D"
    _logits(lora, ["A"])
    assert lora.remove("A") and lora.merged is None and _same_weights(model, snapshot)
    assert not lora.remove("D") and not lora.remove("unknown") and lora.count == 1
