"""The scheduler against a fake engine (no model): admission, joining a running batch, control commands
between steps, cancellation, failures of a forward pass, shutdown."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, Future

import pytest
import torch

from services.runtime.errors import Unavailable
from services.student.backends.batching import Batch, Row, resolve, select_rows
from services.student.backends.scheduler import Scheduler
from services.student.types import EncodedPrompt, GenerationRequest, Sampling


FOREVER = 10**9  # tokens of a row that never ends by itself


class FakeCache:
    layers: list = []

    def batch_select_indices(self, index: torch.Tensor) -> None:
        pass


class FakeEngine:
    """Each row generates `max_new_tokens` tokens (its step count), one per decode step; a cancelled row
    leaves at its next step."""

    can_join = True

    def __init__(self):
        self.prefills: list[int] = []  # rows per prefill
        self.steps: list[int] = []     # rows per step
        self.threads: set[str] = set()
        self.gate = threading.Event()  # decode waits for it
        self.gate.set()
        self.fail_prefill = False

    def prefill(self, rows: list[Row]) -> Batch:
        self.threads.add(threading.current_thread().name)
        if self.fail_prefill:
            raise RuntimeError("out of memory")
        self.prefills.append(len(rows))
        return Batch(rows, FakeCache(), torch.ones(len(rows), 1, dtype=torch.long), torch.zeros(len(rows), 1))

    def step(self, batch: Batch) -> Batch | None:
        self.steps.append(len(batch.rows))
        keep = []
        for i, row in enumerate(batch.rows):
            if row.request.cancelled.is_set():
                row.future.cancel()
                continue
            row.tokens.append(len(row.tokens))
            row.max_batch = max(row.max_batch, len(batch.rows))
            if len(row.tokens) >= row.request.sampling.max_new_tokens:
                resolve(row.future, (list(row.tokens), row.max_batch))
            else:
                keep.append(i)
        return select_rows(batch, keep, trim=False)

    def decode(self, batch: Batch) -> Batch:
        self.gate.wait(10)
        return batch


def _rows(n: int, tokens: int = 3) -> list[Row]:
    return [Row(GenerationRequest(prompt=EncodedPrompt([], "", [1], 1), sampling=Sampling(max_new_tokens=tokens),
                                  version="v", adapter_handle=None), Future()) for _ in range(n)]


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def scheduler(engine):
    s = Scheduler(engine, max_batch_size=4, max_prefill_rows=0, max_wait_ms=50)
    s.start()
    yield s
    engine.gate.set()
    s.close()


def _wait(predicate, what: str) -> None:
    end = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_rows_queued_together_run_in_one_batch_and_complete(scheduler, engine):
    rows = _rows(3, tokens=4)
    scheduler.submit(rows)
    assert [row.future.result(timeout=10) for row in rows] == [([0, 1, 2, 3], 3)] * 3
    assert engine.prefills == [3] and engine.threads == {"student-batcher"}
    _wait(lambda: scheduler.rows_in_flight() == 0, "the batch to end")


def test_more_rows_than_the_batch_holds_wait_for_a_free_slot(scheduler, engine):
    rows = _rows(6, tokens=2)
    scheduler.submit(rows)
    assert all(row.future.result(timeout=10)[1] <= 4 for row in rows)
    assert max(engine.steps) == 4 and sum(engine.prefills) == 6


def test_newcomers_join_a_running_batch_between_steps(scheduler, engine):
    long = _rows(1, tokens=FOREVER)
    engine.gate.clear()
    scheduler.submit(long)
    _wait(lambda: scheduler.rows_generating() == 1, "the first row to generate")
    late = _rows(2, tokens=2)
    scheduler.submit(late)
    engine.gate.set()
    assert [row.future.result(timeout=10)[1] for row in late] == [3, 3]  # decoded beside the long row
    assert engine.prefills == [1, 2] and not long[0].future.done()
    long[0].request.cancelled.set()
    _wait(lambda: long[0].future.cancelled(), "the cancelled row to leave")


def test_control_commands_run_on_the_scheduler_thread_while_a_batch_runs(scheduler, engine):
    rows = _rows(1, tokens=FOREVER)
    engine.gate.clear()
    scheduler.submit(rows)
    _wait(lambda: scheduler.rows_generating() == 1, "the row to generate")
    done = scheduler.call(lambda: threading.current_thread().name)
    engine.gate.set()
    assert done.result(timeout=10) == "student-batcher"
    assert not rows[0].future.done()  # the command did not wait for the batch to end


def test_cancelled_rows_leave_the_queue(engine):
    scheduler = Scheduler(engine, max_batch_size=1, max_prefill_rows=0, max_wait_ms=0)
    engine.gate.clear()
    scheduler.start()
    try:
        busy, queued = _rows(1, tokens=FOREVER), _rows(2)
        scheduler.submit(busy)
        _wait(lambda: scheduler.rows_generating() == 1, "the first row to generate")
        scheduler.submit(queued)
        assert scheduler.rows_in_flight() == 3
        for row in queued:
            row.request.cancelled.set()
        engine.gate.set()
        for row in queued:
            with pytest.raises(CancelledError):
                row.future.result(timeout=10)
        assert scheduler.cancelled_rows == 2 and not busy[0].future.done()
    finally:
        engine.gate.set()
        scheduler.close()


def test_a_failed_forward_pass_fails_its_rows_and_the_scheduler_goes_on(scheduler, engine):
    engine.fail_prefill = True
    doomed = _rows(2)
    scheduler.submit(doomed)
    assert all(isinstance(row.future.exception(timeout=10), RuntimeError) for row in doomed)
    engine.fail_prefill = False
    fine = _rows(1)
    scheduler.submit(fine)
    assert fine[0].future.result(timeout=10) == ([0, 1, 2], 1)


def test_close_fails_what_is_left_and_refuses_new_rows(engine):
    scheduler = Scheduler(engine, max_batch_size=1, max_prefill_rows=0, max_wait_ms=0)
    engine.gate.clear()
    scheduler.start()
    running, queued = _rows(1, tokens=FOREVER), _rows(1)
    scheduler.submit(running)
    _wait(lambda: scheduler.rows_generating() == 1, "the row to generate")
    scheduler.submit(queued)
    engine.gate.set()
    scheduler.close()
    for row in running + queued:
        assert isinstance(row.future.exception(timeout=10), Unavailable)
    with pytest.raises(Unavailable):
        scheduler.submit(_rows(1))


def test_the_engine_clock_counts_each_activity_and_the_rows_of_every_decode_pass(engine, caplog):
    import logging

    from services.student import metrics

    s = Scheduler(engine, max_batch_size=4, max_prefill_rows=0, max_wait_ms=50)
    s.clock.log_every_s = 0.0  # a log line at every activity
    before = metrics.DECODE_ROW_STEPS._value.get()
    s.start()
    try:
        rows = _rows(3, tokens=4)
        with caplog.at_level(logging.INFO, logger="leap.student.local"):
            s.submit(rows)
            for row in rows:
                row.future.result(timeout=10)
            _wait(lambda: s.rows_in_flight() == 0, "the batch to end")
    finally:
        s.close()
    clock = s.clock
    # one prefill of 3 rows; 4 steps pick tokens, the first 3 of them followed by a decode of 3 rows
    assert engine.prefills == [3] and engine.steps == [3, 3, 3, 3]
    assert clock.decode_passes == 3 and clock.decode_rows == 9
    assert metrics.DECODE_ROW_STEPS._value.get() - before == 9
    assert all(clock.seconds[k] > 0 for k in ("prefill", "decode", "step", "idle"))
    lines = [r for r in caplog.records if r.getMessage() == "engine time"]
    assert lines and all(hasattr(r, "decode_s") and hasattr(r, "mean_decode_rows") for r in lines)
