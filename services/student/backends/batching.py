"""The local backend's batch state: rows, the batch they decode in, and how a batch grows and shrinks.

A `Row` is one request inside the scheduler (its sampling state and the tokens it generated so far).
A `Batch` is the rows that decode together with their shared KV cache, attention mask and next-token
logits. Rows join a running batch between decode steps (`merge_batches`: the shorter cache and mask
are left-padded to the longer one's width) and leave it as soon as they are done (`select_rows`,
which also drops cache columns that became padding for every remaining row). Neither copies the
running rows' cache where its buffers have room (kv_cache.AppendLayer).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, InvalidStateError
from typing import Any

import torch

from services.student.backends.constrained import ActionChoice
from services.student.backends.kv_cache import drop_leading, merge_into, retire_rows
from services.student.types import GenerationRequest


class Row:
    """A request inside the scheduler: its prompt, its sampling state and what it generated so far."""

    __slots__ = ("request", "future", "enqueued", "generator", "tokens", "position", "max_batch", "started",
                 "choice", "cached_tokens")

    def __init__(self, request: GenerationRequest, future: Future, choice: ActionChoice | None = None):
        self.request = request
        self.future = future
        self.enqueued = time.monotonic()
        self.generator: torch.Generator | None = None
        self.tokens: list[int] = []
        self.position = 0
        self.max_batch = 0
        self.started = 0.0
        self.choice = choice
        #: Prompt tokens whose KV came from the prefix cache (not prefilled for this row).
        self.cached_tokens = 0


def resolve(future: Future, result: Any) -> None:
    """Set a row's result unless the row was already resolved or cancelled."""
    try:
        if not future.done():
            future.set_result(result)
    except InvalidStateError:  # cancelled between the check and the set
        pass


def fail(future: Future, exc: BaseException) -> None:
    """Set a row's exception unless the row was already resolved or cancelled."""
    try:
        if not future.done():
            future.set_exception(exc)
    except InvalidStateError:
        pass


class Batch:
    """Rows decoding together: their shared KV cache, attention mask and next-token logits."""

    def __init__(self, rows: list[Row], cache, mask: torch.Tensor, logits: torch.Tensor):
        self.rows = rows
        self.cache = cache
        self.mask = mask
        self.logits = logits


def merge_batches(running: Batch, joined: Batch, *, max_rows: int | None = None) -> Batch:
    """Concatenate two batches into `running`: left-pad the shorter cache (and mask) to the longer length.
    `max_rows`: the most rows the running batch may ever hold (no spare cache rows are made past it)."""
    width = max(running.mask.shape[1], joined.mask.shape[1])

    def widen(mask: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(mask, (width - mask.shape[1], 0))

    for layer_a, layer_b in zip(running.cache.layers, joined.cache.layers):
        merge_into(layer_a, layer_b, width, max_rows=max_rows)
    running.mask = torch.cat([widen(running.mask), widen(joined.mask)], dim=0)
    running.logits = torch.cat([running.logits, joined.logits], dim=0)
    running.rows = running.rows + joined.rows
    return running


def select_rows(batch: Batch, keep: list[int], *, trim: bool) -> Batch | None:
    """Keep the rows at indices `keep` (None when none is left); `trim`: also drop all-padding columns.

    The kept rows may come back in another order (later rows fill the places of finished ones, see
    kv_cache.retire_rows): `batch.rows`, the mask, the logits and the cache stay aligned row for row."""
    if len(keep) == len(batch.rows):
        return batch
    if not keep:
        return None
    order = retire_rows(batch.cache, keep)  # the kept rows, possibly reordered (see kv_cache)
    index = torch.tensor(order, dtype=torch.long, device=batch.mask.device)
    batch.mask = batch.mask[index]
    batch.logits = batch.logits[index]
    batch.rows = [batch.rows[i] for i in order]
    if trim:
        trim_left(batch)
    return batch


def trim_left(batch: Batch) -> None:
    """Drop cache columns that are padding for every remaining row."""
    used = batch.mask.sum(dim=0) > 0
    first = int(torch.nonzero(used)[0]) if bool(used.any()) else 0
    if first == 0:
        return
    batch.mask = batch.mask[:, first:]
    for layer in batch.cache.layers:
        drop_leading(layer, first)
