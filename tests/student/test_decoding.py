"""One decode step row by row, on hand-made scores: sampling, stopping, completing and failing rows alone."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest
import torch
from transformers import DynamicCache

from services.runtime.errors import FailedPrecondition, Internal
from services.student.backends.batching import Batch, Row
from services.student.backends.constrained import ActionConstraint
from services.student.backends.decoding import RowDecoder, generator_for, non_finite_error, sample_token
from services.student.types import EncodedPrompt, GenerationRequest, Sampling


def _row(sampling: Sampling = Sampling(), handle: str | None = None) -> Row:
    request = GenerationRequest(prompt=EncodedPrompt([], "", [1, 2], 2), sampling=sampling, version="v7",
                                adapter_handle=handle)
    row = Row(request, Future())
    row.generator = generator_for(sampling, "cpu")
    return row


def test_sampling_keeps_the_nucleus_and_follows_the_rows_seed():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.05, 0.05]))
    nucleus = Sampling(temperature=1.0, top_p=0.5, seed=1)
    assert {sample_token(logits, nucleus, generator_for(nucleus, "cpu")) for _ in range(30)} == {0}
    wide = Sampling(temperature=1.0, top_p=0.8, seed=1)
    generator = generator_for(wide, "cpu")
    assert {sample_token(logits, wide, generator) for _ in range(200)} == {0, 1}  # 0.6 alone is not 0.8

    def draws(seed: int) -> list[int]:
        sampling = Sampling(temperature=1.0, seed=seed)
        generator = generator_for(sampling, "cpu")
        return [sample_token(logits, sampling, generator) for _ in range(40)]

    assert draws(5) == draws(5) and draws(5) != draws(6)
    assert generator_for(Sampling(), "cpu") is None  # greedy rows draw nothing


def test_non_finite_scores_blame_the_adapter_or_the_base_model():
    on_adapter = non_finite_error(_row(handle="adapter_3"))
    assert isinstance(on_adapter, FailedPrecondition) and "'v7'" in on_adapter.message
    assert isinstance(non_finite_error(_row()), Internal)


@pytest.fixture(scope="module")
def decoder(smollm2):
    tokenizer = smollm2.tokenizer
    lock = threading.Lock()
    eos = {tokenizer.eos_token_id}
    cancelled: list[int] = []
    decoder = RowDecoder(tokenizer, lock, eos, ActionConstraint(tokenizer, lock, eos), stop_at_action_line=True,
                         on_cancelled=lambda: cancelled.append(1))
    decoder.cancelled = cancelled
    return decoder


def _ids(decoder: RowDecoder, text: str) -> list[int]:
    return list(decoder.tokenizer(text, add_special_tokens=False)["input_ids"])


def _batch(decoder: RowDecoder, rows: list[Row], favourite: list[int]) -> Batch:
    """Greedy scores that pick `favourite[i]` for row i (NaN scores for -1)."""
    logits = torch.zeros(len(rows), len(decoder.tokenizer))
    for i, token in enumerate(favourite):
        if token < 0:
            logits[i] = float("nan")
        else:
            logits[i, token] = 10.0
    keys = torch.zeros(len(rows), 1, 2, 1)
    cache = DynamicCache()
    cache.update(keys, keys, 0)
    return Batch(rows, cache, torch.ones(len(rows), 2, dtype=torch.long), logits)


def test_a_step_completes_fails_and_keeps_rows_each_on_its_own(decoder):
    eos = decoder.tokenizer.eos_token_id
    word = _ids(decoder, " hello")[0]
    broken, ending, going, short = _row(handle="a"), _row(), _row(), _row(Sampling(max_new_tokens=1))
    failed_before = decoder.failed_rows
    batch = decoder.step(_batch(decoder, [broken, ending, going, short], [-1, eos, word, word]), trim=False)
    assert batch.rows == [going] and going.tokens == [word] and batch.logits.shape[0] == 1
    assert isinstance(broken.future.exception(timeout=1), FailedPrecondition)
    assert decoder.failed_rows == failed_before + 1
    assert ending.future.result(timeout=1).finish_reason == "eos"
    generation = short.future.result(timeout=1)
    assert (generation.finish_reason, generation.token_ids, generation.text) == ("length", [word], " hello")


def test_a_row_stops_at_the_end_of_its_action_line(decoder):
    row = _row()
    answer = _ids(decoder, "REASON: it is dark.\nACTION: look\n")
    for token in answer[:-1]:
        row.tokens.append(token)
        assert decoder.finish_reason(row, token) is None
    row.tokens.append(answer[-1])
    assert decoder.finish_reason(row, answer[-1]) == "action_line"


def test_a_cancelled_row_is_cancelled_and_counted(decoder):
    row = _row()
    row.request.cancelled.set()
    before = len(decoder.cancelled)
    batch = decoder.step(_batch(decoder, [row, _row()], [5, 5]), trim=False)
    assert len(batch.rows) == 1 and row.future.cancelled() and len(decoder.cancelled) == before + 1


def test_a_row_whose_sampling_raises_fails_alone_with_internal(decoder):
    bad = _row(Sampling(temperature=1.0, seed=1))
    bad.generator = "not a generator"
    good = _row()
    batch = decoder.step(_batch(decoder, [bad, good], [5, 5]), trim=False)
    assert batch.rows == [good]
    error = bad.future.exception(timeout=1)
    assert isinstance(error, Internal) and "generation failed for this row" in error.message
