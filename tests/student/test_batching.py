"""Batch state on small tensors: rows joining a batch, rows leaving it, padding columns dropped, row futures."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
import torch
from transformers import DynamicCache

from services.student.backends.batching import Batch, Row, fail, merge_batches, resolve, select_rows
from services.student.types import EncodedPrompt, GenerationRequest, Sampling

HEADS, DIM, VOCAB = 2, 3, 5


def _row() -> Row:
    request = GenerationRequest(prompt=EncodedPrompt([], "", [1], 1), sampling=Sampling(), version="v",
                                adapter_handle=None)
    return Row(request, Future())


def _batch(lengths: list[int], seed: int) -> Batch:
    """Rows left-padded to the longest of `lengths`; row i's cached keys/values are i + seed (0 on padding)."""
    width = max(lengths)
    keys = torch.zeros(len(lengths), HEADS, width, DIM)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        keys[i, :, width - n:] = i + seed
        mask[i, width - n:] = 1
    cache = DynamicCache()
    cache.update(keys, keys.clone(), 0)
    logits = torch.arange(len(lengths) * VOCAB, dtype=torch.float).reshape(len(lengths), VOCAB) + seed
    return Batch([_row() for _ in lengths], cache, mask, logits)


def test_a_joining_batch_is_left_padded_to_the_longer_width():
    running, joined = _batch([4, 2], seed=10), _batch([6], seed=20)
    rows = running.rows + joined.rows
    merged = merge_batches(running, joined)
    assert merged is running and merged.rows == rows
    assert merged.mask.tolist() == [[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]]
    keys = merged.cache.layers[0].keys
    assert keys.shape == (3, HEADS, 6, DIM)
    assert torch.equal(keys[:, 0, :, 0], torch.tensor([[0, 0, 10, 10, 10, 10], [0, 0, 0, 0, 11, 11],
                                                       [20, 20, 20, 20, 20, 20]], dtype=torch.float))
    assert merged.logits[:, 0].tolist() == [10.0, 15.0, 20.0]


def test_leaving_rows_take_their_cache_mask_and_logits_with_them():
    batch = _batch([2, 5, 3], seed=0)
    rows = list(batch.rows)
    kept = select_rows(batch, [0, 2], trim=False)
    assert kept.rows == [rows[0], rows[2]]
    assert kept.mask.tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    assert kept.cache.layers[0].keys[:, 0, -1, 0].tolist() == [0.0, 2.0]
    assert kept.logits[:, 0].tolist() == [0.0, 10.0]


def test_trimming_drops_columns_that_are_padding_for_every_remaining_row():
    batch = select_rows(_batch([2, 5, 3], seed=0), [0, 2], trim=True)
    assert batch.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert batch.cache.layers[0].keys.shape[2] == 3
    assert batch.cache.layers[0].keys[:, 0, :, 0].tolist() == [[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]


def test_keeping_every_row_or_none():
    batch = _batch([2, 3], seed=0)
    assert select_rows(batch, [0, 1], trim=True) is batch and batch.mask.shape == (2, 3)
    assert select_rows(batch, [], trim=True) is None


@pytest.mark.parametrize("settle", [lambda f: f.cancel(), lambda f: f.set_result("first")])
def test_a_settled_future_keeps_what_it_has(settle):
    future: Future = Future()
    settle(future)
    before = future.cancelled() or future.result()
    resolve(future, "second")
    fail(future, RuntimeError("late"))
    assert (future.cancelled() or future.result()) == before


def test_resolve_and_fail_settle_a_pending_future():
    done, failed = Future(), Future()
    resolve(done, 42)
    fail(failed, ValueError("bad"))
    assert done.result() == 42 and isinstance(failed.exception(), ValueError)
