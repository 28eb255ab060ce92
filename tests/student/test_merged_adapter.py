"""The merged-weights path of the local backend, on the real model in fp32.

A forward pass whose rows all use one adapter runs on base weights with that adapter's delta merged in.
Checked here: it computes what peft's unmerged path computes (up to rounding), it is really taken, and
the base weights come back bit for bit whatever the sequence of merged, base, mixed batches, adapter
loads, swaps and removals (so base rows and mixed batches never see a merged delta, and nothing drifts).
"""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch

from services.student.backends.batching import Row
from services.student.backends.local import LocalBackend, LocalOptions
from services.student.backends.kv_cache import new_decode_cache
from services.student.prompts import render_messages
from services.student.types import CheckpointSpec, GenerationRequest, Sampling
from tests.student.helpers import STATES, write_manifest

pytestmark = pytest.mark.model

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _random_adapter(folder, shared, *, targets: list[str], rank: int = 16, use_dora: bool = False, layers=None,
                    seed: int = 0) -> tuple[str, str]:
    """A LoRA checkpoint with random A and B (peft's default B = 0 would make the delta vanish)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, layers_to_transform=layers,
                        use_dora=use_dora, task_type="CAUSAL_LM")
    with shared.borrow() as (model, tokenizer, _):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        peft_model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    return str(folder), write_manifest(folder, version=folder.name)


def _base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's parameters by their plain names (peft inserts `.base_layer` and adds LoRA tensors)."""
    return {name.replace(".base_layer", ""): param for name, param in model.named_parameters()
            if "lora_" not in name}


def _same_base_weights(backend: LocalBackend, snapshot: dict[str, torch.Tensor]) -> bool:
    current = _base_weights(backend.model)
    return current.keys() == snapshot.keys() and all(torch.equal(current[k], v) for k, v in snapshot.items())


def _logits(backend: LocalBackend, handles: list[str | None]) -> torch.Tensor:
    """Next-token logits of one prefill pass over STATES' prompts, row i with adapter handles[i], run on the
    scheduler thread through the backend's own `forward` (which sets the adapter mode)."""
    encoded = [backend.encode_prompt(render_messages(**STATES[i % len(STATES)])) for i in range(len(handles))]
    prompts = [e.ids for e in encoded]
    width = max(map(len, prompts))
    pad = backend.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    rows = [Row(GenerationRequest(prompt=e, sampling=Sampling(), version="x", adapter_handle=h), None)
            for e, h in zip(encoded, handles)]

    def run() -> torch.Tensor:
        cache = new_decode_cache(backend.model.config)
        out = backend.forward(rows, input_ids=input_ids, attention_mask=mask, position_ids=positions,
                              past_key_values=cache)
        return out.logits[:, -1, :].float().clone()

    return backend.scheduler.call(run).result(timeout=300)


def _install(backend: LocalBackend, checkpoint: tuple[str, str], handle: str) -> str:
    path, sha = checkpoint
    return backend.install_adapter(backend.prepare_adapter(CheckpointSpec(version=handle, uri=path, sha256=sha)),
                                   handle)


def _remove(backend: LocalBackend, handle: str) -> None:
    backend.remove_adapter(handle)
    backend.scheduler.call(lambda: None).result(timeout=60)  # control commands run in order


def _generate(backend: LocalBackend, handle: str | None, new_tokens: int = 16) -> list[list[int]]:
    requests = [GenerationRequest(prompt=backend.encode_prompt(render_messages(**s)),
                                  sampling=Sampling(max_new_tokens=new_tokens), version="x", adapter_handle=handle)
                for s in STATES]
    return [f.result(timeout=300).token_ids for f in backend.submit(requests)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, trained_adapter, smollm2):
    """A: random r=16 on all 7 projections of every layer; B: the trained one (q/v of the last 6 layers, so
    fewer modules, loaded first); DoRA: a variant that cannot be merged as a plain delta."""
    root = tmp_path_factory.mktemp("merge")
    (root / "a").mkdir()
    (root / "dora").mkdir()
    path, sha = trained_adapter
    return {"A": _random_adapter(root / "a", smollm2, targets=ALL_LINEAR),
            "B": (str(path), sha),
            "DoRA": _random_adapter(root / "dora", smollm2, targets=["q_proj"], rank=4, use_dora=True,
                                    layers=[28, 29], seed=1)}


@pytest.fixture(scope="module")
def backends(checkpoints, smollm2):
    with smollm2.borrow() as first, smollm2.borrow() as second:  # the second is a model of its own
        merged = LocalBackend(LocalOptions(dtype="float32", max_batch_size=8), loader=smollm2.loader(first))
        unmerged = LocalBackend(LocalOptions(dtype="float32", max_batch_size=8, merge_uniform_adapter=False),
                                loader=smollm2.loader(second))
        merged.start()
        unmerged.start()
        snapshot = {k: v.detach().clone() for k, v in _base_weights(merged.model).items()}  # before any adapter
        for backend in (merged, unmerged):
            for name in ("B", "A"):  # B (fewer modules) first: A's modules join the kept weights later
                _install(backend, checkpoints[name], name)
        # Base rows before any merge. Not the bare model's logits: peft freezes the base parameters, and a weight
        # that does not require grad changes how torch.matmul folds the lm_head's 3-d input (last bit differs).
        assert merged.lora.merged is None
        base_logits = _logits(merged, [None] * 3)
        yield merged, unmerged, snapshot, base_logits
        merged.close()
        unmerged.close()


def test_a_uniform_adapter_batch_runs_merged_and_computes_what_the_unmerged_path_computes(backends):
    merged, unmerged, _, base_logits = backends
    for handle in ("A", "B"):
        fast = _logits(merged, [handle] * 3)
        assert merged.lora.merged == handle and merged.lora.mode == "disabled"  # the merged path was taken
        reference = _logits(unmerged, [handle] * 3)
        assert unmerged.lora.merged is None and unmerged.lora.mode == handle
        assert (reference - base_logits).abs().max() > 1.0, "the adapter does not change the logits"
        assert (fast - reference).abs().max() <= 1e-4 * reference.abs().max()
        assert _generate(merged, handle) == _generate(unmerged, handle)


def test_base_weights_come_back_bit_for_bit_after_merged_base_and_mixed_batches(backends):
    merged, _, snapshot, base_logits = backends
    _logits(merged, ["A"] * 3)
    assert merged.lora.merged == "A" and not _same_base_weights(merged, snapshot)
    # A base batch right after a merged one: exactly the answer before any merge (fails if the restore is skipped).
    assert torch.equal(_logits(merged, [None] * 3), base_logits)
    assert merged.lora.merged is None and _same_base_weights(merged, snapshot)
    _logits(merged, ["A"] * 3)
    mixed = _logits(merged, ["A", None, "B"])
    assert merged.lora.merged is None and merged.lora.mode == "mixed" and _same_base_weights(merged, snapshot)
    assert torch.equal(mixed[1], base_logits[1])  # the base row of a mixed batch after a merged one


def test_swapping_merged_adapters_does_not_drift(backends):
    merged, _, snapshot, base_logits = backends
    first = {h: _logits(merged, [h] * 3) for h in ("A", "B")}
    for _ in range(4):
        for handle in ("A", "B", "A"):
            assert torch.equal(_logits(merged, [handle] * 3), first[handle])
            assert merged.lora.merged == handle
    assert torch.equal(_logits(merged, [None] * 3), base_logits)
    assert _same_base_weights(merged, snapshot)


def test_loading_and_removing_adapters_while_one_is_merged(backends, checkpoints):
    merged, unmerged, snapshot, base_logits = backends
    # A load while A is merged: the next pass puts the weights back in the state it needs.
    a_before = _logits(merged, ["A"] * 3)
    assert merged.lora.merged == "A"
    _install(merged, checkpoints["A"], "A2")
    assert merged.lora.merged is None and _same_base_weights(merged, snapshot)
    assert torch.equal(_logits(merged, ["A"] * 3), a_before)
    # Removing the merged adapter restores the weights first.
    assert merged.lora.merged == "A"
    _remove(merged, "A")
    assert "A" not in merged.peft.peft_config and merged.lora.merged is None and _same_base_weights(merged, snapshot)
    assert torch.equal(_logits(merged, ["A2"] * 3), a_before)  # same weights under another handle
    assert torch.equal(_logits(merged, [None] * 3), base_logits)
    _remove(merged, "A2")
    # B still merges from the weights as loaded and matches the unmerged path.
    fast = _logits(merged, ["B"] * 3)
    reference = _logits(unmerged, ["B"] * 3)
    assert merged.lora.merged == "B" and (fast - reference).abs().max() <= 1e-4 * reference.abs().max()


def test_a_dora_adapter_stays_on_the_unmerged_path(backends, checkpoints):
    merged, unmerged, snapshot, base_logits = backends
    _logits(merged, ["B"] * 3)
    for backend in (merged, unmerged):
        _install(backend, checkpoints["DoRA"], "DoRA")
    assert "DoRA" not in merged.lora.mergeable and "B" in merged.lora.mergeable
    fast = _logits(merged, ["DoRA"] * 3)
    assert merged.lora.merged is None and merged.lora.mode == "DoRA" and _same_base_weights(merged, snapshot)
    assert torch.equal(fast, _logits(unmerged, ["DoRA"] * 3))
    assert not torch.equal(fast, base_logits)
    assert torch.equal(_logits(merged, [None] * 3), base_logits)


def test_the_merge_adapter_flag_reaches_the_backend(monkeypatch):
    from services.student.cli import add_student_arguments, build_service

    def options(argv: list[str]) -> LocalOptions:
        parser = argparse.ArgumentParser()
        add_student_arguments(parser)
        return build_service(parser.parse_args(argv)).backend.options

    assert options([]).merge_uniform_adapter is True
    assert options(["--merge-adapter", "off"]).merge_uniform_adapter is False
    monkeypatch.setenv("LEAP_MERGE_ADAPTER", "off")
    assert options([]).merge_uniform_adapter is False
