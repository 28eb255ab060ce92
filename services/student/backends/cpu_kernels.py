"""Which CPU kernels a small decode step runs on, chosen by measuring on the machine at hand.

With a bf16 (or fp16) model on a CPU, torch hands matrix products to oneDNN. That is the fast path
for a prefill and for decode steps of many rows; for a decode step of one or two rows, torch's own
kernels were 1.5-2x faster on a 2-core AMD EPYC with AVX-512 BF16 (SmolLM2-135M: 40 -> 21 ms at one
row, 44 -> 28 ms at two, equal at three, slower from four; bench/engine_bench.py). Where the
crossover lies depends on the CPU and the model, so it is measured, not guessed from instruction-set
names: the first decode steps of each small batch size alternate between oneDNN and torch's own
kernels, and once each side has `trials` timings the faster median wins that size for good (torch's
kernels only when at least `margin` faster). A size that oneDNN wins decides every larger size too.
fp32 models are left alone: torch does not route their products through oneDNN by default.
"""

from __future__ import annotations

import logging
import statistics
from contextlib import contextmanager
from typing import Iterator

import torch

log = logging.getLogger("leap.student.local")

_get_enabled = getattr(torch._C, "_get_mkldnn_enabled", None)
_set_enabled = getattr(torch._C, "_set_mkldnn_enabled", None)


def can_switch_onednn() -> bool:
    """True when this torch build has oneDNN and lets its use be switched at run time."""
    return bool(_get_enabled and _set_enabled and torch.backends.mkldnn.is_available())


@contextmanager
def onednn_enabled(enabled: bool) -> Iterator[None]:
    """oneDNN on or off for the products run inside (process-wide; the model's one thread calls it)."""
    before = _get_enabled()
    _set_enabled(enabled)
    try:
        yield
    finally:
        _set_enabled(before)


class DecodeKernelChooser:
    """Per decode batch size up to `max_rows`: oneDNN (True) or torch's own kernels (False)."""

    def __init__(self, *, active: bool, max_rows: int = 4, trials: int = 3, margin: float = 0.9):
        if max_rows < 0 or trials < 1 or not 0.0 < margin <= 1.0:
            raise ValueError("max_rows >= 0, trials >= 1 and 0 < margin <= 1")
        self.active = active
        self.max_rows = max_rows
        self.trials = trials
        self.margin = margin
        #: rows -> True (oneDNN) or False (torch's kernels), once measured.
        self.decided: dict[int, bool] = {}
        self._timings: dict[int, dict[bool, list[float]]] = {}

    def use_onednn(self, rows: int) -> bool:
        """The kernels for a decode step of `rows` rows: decided, or the side that has fewer timings."""
        if not self.measuring(rows):
            return self.decided.get(rows, True)
        timings = self._timings.get(rows, {True: [], False: []})
        return len(timings[True]) <= len(timings[False])

    def measuring(self, rows: int) -> bool:
        """True while decode steps of `rows` rows are still being timed."""
        return (self.active and 0 < rows <= self.max_rows and rows not in self.decided
                and not any(onednn for n, onednn in self.decided.items() if n < rows))

    def record(self, rows: int, onednn: bool, seconds: float) -> None:
        """One timed decode step of `rows` rows; decides that size once both sides have `trials` timings."""
        if not self.measuring(rows):
            return
        timings = self._timings.setdefault(rows, {True: [], False: []})
        timings[onednn].append(seconds)
        if min(len(timings[True]), len(timings[False])) < self.trials:
            return
        with_onednn, without = statistics.median(timings[True]), statistics.median(timings[False])
        self.decided[rows] = not without < self.margin * with_onednn
        del self._timings[rows]
        log.info("decode kernels chosen by measurement",
                 extra={"rows": rows, "kernels": "onednn" if self.decided[rows] else "torch",
                        "onednn_ms": round(with_onednn * 1000, 2), "torch_ms": round(without * 1000, 2)})
