"""The decode-kernel choice for small bf16 batches on CPU: the rule (fake timings) and the real model."""

from __future__ import annotations

import copy

import pytest
import torch

from services.student.backends.cpu_kernels import DecodeKernelChooser, can_switch_onednn, onednn_enabled


def _feed(chooser: DecodeKernelChooser, rows: int, onednn_s: float, torch_s: float) -> list[bool]:
    """Run decode steps of `rows` rows until that size is decided; returns the kernels each step used."""
    used = []
    while chooser.measuring(rows):
        onednn = chooser.use_onednn(rows)
        used.append(onednn)
        chooser.record(rows, onednn, onednn_s if onednn else torch_s)
        assert len(used) < 100
    return used


def test_an_inactive_chooser_always_keeps_onednn():
    chooser = DecodeKernelChooser(active=False)
    assert chooser.use_onednn(1) and not chooser.measuring(1)
    chooser.record(1, False, 0.001)
    assert chooser.decided == {}


def test_both_kernels_are_timed_alternately_and_the_faster_median_wins():
    chooser = DecodeKernelChooser(active=True, trials=3)
    used = _feed(chooser, 1, onednn_s=0.040, torch_s=0.021)
    assert used == [True, False, True, False, True, False]
    assert chooser.decided == {1: False}
    assert not chooser.use_onednn(1) and not chooser.measuring(1)
    assert _feed(chooser, 2, onednn_s=0.044, torch_s=0.028) and chooser.decided[2] is False


def test_the_median_decides_not_one_slow_outlier():
    chooser = DecodeKernelChooser(active=True, trials=3)
    timings = {True: iter([0.500, 0.030, 0.031]), False: iter([0.040, 0.041, 0.039])}  # oneDNN's first call is slow
    while chooser.measuring(1):
        onednn = chooser.use_onednn(1)
        chooser.record(1, onednn, next(timings[onednn]))
    assert chooser.decided == {1: True}


def test_torch_kernels_must_win_by_the_margin():
    chooser = DecodeKernelChooser(active=True, trials=2, margin=0.9)
    _feed(chooser, 1, onednn_s=0.040, torch_s=0.037)  # 7.5 % faster: not enough
    assert chooser.decided == {1: True}


def test_once_onednn_wins_a_size_larger_sizes_are_not_measured():
    chooser = DecodeKernelChooser(active=True, trials=2, max_rows=4)
    _feed(chooser, 1, onednn_s=0.040, torch_s=0.020)
    _feed(chooser, 2, onednn_s=0.040, torch_s=0.060)
    assert chooser.decided == {1: False, 2: True}
    for rows in (3, 4):
        assert chooser.use_onednn(rows) and not chooser.measuring(rows)
    assert not chooser.use_onednn(1)


def test_batches_above_max_rows_are_left_to_onednn():
    chooser = DecodeKernelChooser(active=True, max_rows=2)
    assert chooser.use_onednn(3) and not chooser.measuring(3) and not chooser.measuring(0)
    chooser.record(3, False, 0.001)
    assert chooser.decided == {}


@pytest.mark.parametrize("kwargs", [{"max_rows": -1}, {"trials": 0}, {"margin": 0.0}, {"margin": 1.5},
                                    {"margin": float("nan")}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        DecodeKernelChooser(active=True, **kwargs)


@pytest.mark.skipif(not can_switch_onednn(), reason="this torch build cannot switch oneDNN at run time")
def test_the_onednn_switch_is_restored_even_after_an_error():
    before = torch.backends.mkldnn.enabled
    with pytest.raises(RuntimeError), onednn_enabled(not before):
        assert torch.backends.mkldnn.enabled is (not before)
        raise RuntimeError("boom")
    assert torch.backends.mkldnn.enabled is before


@pytest.mark.model
@pytest.mark.skipif(not can_switch_onednn(), reason="this torch build cannot switch oneDNN at run time")
def test_a_bf16_backend_measures_small_decode_steps_and_both_kernels_compute_the_same_model(smollm2):
    from services.models import is_default_alias
    from services.student.backends.local import LocalBackend, LocalOptions
    from services.student.types import EncodedPrompt, GenerationRequest, Sampling

    with smollm2.borrow() as (model, tokenizer, spec):
        bf16 = copy.deepcopy(model).to(torch.bfloat16)

    def loader(name, *, device, dtype, padding_side):
        assert is_default_alias(name) and dtype == "bfloat16"
        tokenizer.padding_side = padding_side
        return bf16, tokenizer, spec

    backend = LocalBackend(LocalOptions(dtype="bfloat16", device="cpu", max_batch_size=4, stop_at_action_line=False,
                                        prefix_cache=False), loader=loader)
    backend.start()
    try:
        assert backend.decode_kernels.active
        ids = list(tokenizer("You are in the kitchen. Your task is to: put a mug in the cabinet.\nREASON:",
                             add_special_tokens=False)["input_ids"])
        request = GenerationRequest(prompt=EncodedPrompt(messages=[], text="", ids=ids, token_count=len(ids)),
                                    sampling=Sampling(max_new_tokens=16), version="", adapter_handle="")
        backend._decoder.eos_ids = set()  # 15 decode steps: enough to time both kernels 3 times each
        [generation] = [f.result(timeout=300) for f in backend.submit([request])]
        assert len(generation.token_ids) == 16
        assert isinstance(backend.decode_kernels.decided.get(1), bool)
    finally:
        backend.close()

    # The same decode step on either kernels: the same model, up to bf16 rounding.
    from transformers import DynamicCache

    with torch.inference_mode():
        logits = {}
        for onednn in (True, False):
            cache = DynamicCache(config=bf16.config)
            bf16(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
            with onednn_enabled(onednn):
                out = bf16(input_ids=torch.tensor([[ids[-1]]]), past_key_values=cache, use_cache=True)
            logits[onednn] = out.logits[0, -1].float()
    assert torch.isfinite(logits[False]).all()
    assert logits[True].argmax() == logits[False].argmax()
    scale = logits[True].abs().max()
    assert (logits[True] - logits[False]).abs().max() < 0.05 * scale
