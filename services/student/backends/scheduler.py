"""The local backend's scheduler: one thread that owns the model and runs continuous batching.

Rows are queued by `submit` from any thread. The scheduler thread loops: pick each row's next token
and retire finished rows, run control commands, decode one step, admit newcomers. Newcomers join a
running batch between decode steps (iteration-level batching): they are prefilled on their own and
merged into the batch; finished rows leave at once (their futures resolve, the cache shrinks).

Control commands (`call`: adapter injection and removal) run on this thread between two decode steps,
so no forward pass ever sees a half-changed model.

A row whose request is cancelled (the caller's deadline passed, or its client cancelled the call)
leaves the queue or the batch at the next decode step: it stops generating and frees its slot.

The model side is an `Engine`: it prefills rows into a batch, picks tokens and retires rows (`step`),
and runs one decode forward pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Protocol

import torch

from services.runtime.errors import Unavailable
from services.student import metrics
from services.student.backends.batching import Batch, Row, fail, merge_batches

log = logging.getLogger("leap.student.local")


class Engine(Protocol):
    """The model side of the scheduler; every method runs on the scheduler thread."""

    #: False once a forward pass made a cache that cannot be merged or trimmed (sliding windows, ...).
    can_join: bool

    def prefill(self, rows: list[Row]) -> Batch:
        """A new batch of `rows` with their prompts' KV cache and first next-token scores."""

    def step(self, batch: Batch) -> Batch | None:
        """Pick each row's next token, retire finished rows; None when no row is left."""

    def decode(self, batch: Batch) -> Batch:
        """One forward pass on each row's last token."""


class EngineClock:
    """Where the scheduler thread's time goes (Prometheus counters, and an info log line every
    `log_every_s` seconds with the shares since the last one): prefill, decode, step, control, idle."""

    ACTIVITIES = ("prefill", "decode", "step", "control", "idle")

    def __init__(self, log_every_s: float = 60.0):
        self.log_every_s = log_every_s
        self.seconds = dict.fromkeys(self.ACTIVITIES, 0.0)
        self.decode_passes = 0
        self.decode_rows = 0
        self._logged = (dict(self.seconds), 0, 0, time.monotonic())

    def add(self, activity: str, seconds: float, rows: int = 0) -> None:
        self.seconds[activity] += seconds
        metrics.ENGINE_SECONDS.labels(activity).inc(seconds)
        if activity == "decode":
            self.decode_passes += 1
            self.decode_rows += rows
            metrics.DECODE_PASSES.inc()
            metrics.DECODE_ROW_STEPS.inc(rows)
        self.maybe_log()

    def maybe_log(self) -> None:
        before, passes, rows, at = self._logged
        now = time.monotonic()
        if now - at < self.log_every_s:
            return
        spent = {k: self.seconds[k] - before[k] for k in self.ACTIVITIES}
        new_passes, new_rows = self.decode_passes - passes, self.decode_rows - rows
        if new_passes or spent["prefill"]:
            log.info("engine time", extra={**{f"{k}_s": round(v, 1) for k, v in spent.items()},
                                           "decode_passes": new_passes,
                                           "mean_decode_rows": round(new_rows / max(new_passes, 1), 1)})
        self._logged = (dict(self.seconds), self.decode_passes, self.decode_rows, now)


class Scheduler:
    """The request queue, control commands and the thread that runs `engine` (see the module docstring)."""

    def __init__(self, engine: Engine, *, max_batch_size: int, max_prefill_rows: int, max_wait_ms: float,
                 name: str = "student-batcher"):
        self.engine = engine
        self.max_batch_size = max_batch_size
        #: Rows prefilled together (0: up to max_batch_size).
        self.max_prefill_rows = max_prefill_rows
        #: How long the first queued row waits for companions, and newcomers before they join.
        self.max_wait_ms = max_wait_ms
        self._name = name
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._pending: deque[Row] = deque()
        self._control: deque[tuple[Callable[[], Any], Future]] = deque()
        self._thread: threading.Thread | None = None
        self._active_rows = 0  # rows of the running batch (written by the scheduler thread)
        #: Rows dropped because their request was cancelled.
        self.cancelled_rows = 0
        #: Where the scheduler thread's time goes.
        self.clock = EngineClock()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and fail whatever is still queued (rows and control commands)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._cond:
            while self._pending:
                row = self._pending.popleft()
                fail(row.future, Unavailable("the student server is shutting down"))
            while self._control:
                _, fut = self._control.popleft()
                if not fut.done():
                    fut.set_exception(Unavailable("the student server is shutting down"))

    def rows_in_flight(self) -> int:
        """Rows the scheduler holds: queued plus generating."""
        with self._cond:
            return len(self._pending) + self._active_rows

    def rows_generating(self) -> int:
        """Rows of the running batch."""
        return self._active_rows

    # -- from any thread -------------------------------------------------------------------------

    def submit(self, rows: list[Row]) -> None:
        with self._cond:
            if self._stop.is_set():
                raise Unavailable("the student server is shutting down")
            self._pending.extend(rows)
            metrics.QUEUE_DEPTH.set(len(self._pending))
            self._cond.notify_all()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the scheduler thread between two decode steps; its future holds the result."""
        future: Future = Future()
        with self._cond:
            self._control.append((fn, future))
            self._cond.notify_all()
        return future

    def count_cancelled(self) -> None:
        self.cancelled_rows += 1
        metrics.DROPPED_ROWS.labels("cancelled").inc()

    # -- the scheduler thread --------------------------------------------------------------------

    def _loop(self) -> None:
        """Sample, retire finished rows, run control commands, decode, admit newcomers."""
        batch: Batch | None = None
        with torch.inference_mode():
            while not self._stop.is_set():
                newcomers: list[Row] = []
                self._active_rows = len(batch.rows) if batch is not None else 0
                with self._cond:
                    self._drop_cancelled_pending()  # a full batch takes no newcomers: drop them here too
                try:
                    if batch is None:
                        self._timed("idle", self._wait_for_work)
                        self._timed("control", self._run_control)
                        newcomers = self._take_newcomers(self._prefill_room(self.max_batch_size), first_batch=True)
                        if newcomers:
                            batch = self._timed("prefill", self.engine.prefill, newcomers)
                        continue
                    batch = self._timed("step", self.engine.step, batch)
                    self._timed("control", self._run_control)
                    if batch is not None:
                        rows = len(batch.rows)
                        batch = self._timed("decode", self.engine.decode, batch, rows=rows)
                        self._timed("control", self._run_control)  # an adapter load waits for one forward pass at most
                    room = self.max_batch_size - (len(batch.rows) if batch else 0)
                    if room > 0 and (batch is None or self.engine.can_join):
                        newcomers = self._take_newcomers(self._prefill_room(room), first_batch=batch is None)
                        if newcomers:
                            joined = self._timed("prefill", self.engine.prefill, newcomers)
                            batch = (joined if batch is None
                                     else merge_batches(batch, joined, max_rows=self.max_batch_size))
                except Exception as exc:  # noqa: BLE001 - fail the rows involved, keep serving
                    # A failed forward pass (out of memory, a broken layer) leaves no usable cache for
                    # any of its rows; failures of single rows are handled in `step` and never get here.
                    log.exception("generation failed; failing the rows of this batch")
                    for row in (batch.rows if batch is not None else []) + newcomers:
                        fail(row.future, exc)
                    batch = None
            self._active_rows = 0
            for row in batch.rows if batch is not None else []:
                fail(row.future, Unavailable("the student server is shutting down"))

    def _timed(self, activity: str, fn: Callable[..., Any], *args, rows: int = 0) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.clock.add(activity, time.perf_counter() - started, rows)

    def _run_control(self) -> None:
        while True:
            with self._cond:
                if not self._control:
                    return
                fn, future = self._control.popleft()
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                future.set_exception(exc)

    def _wait_for_work(self) -> None:
        with self._cond:
            while not self._pending and not self._control and not self._stop.is_set():
                self._cond.wait(timeout=1.0)

    def _prefill_room(self, room: int) -> int:
        cap = self.max_prefill_rows
        return min(room, cap) if cap > 0 else room

    def _take_newcomers(self, room: int, *, first_batch: bool) -> list[Row]:
        """Rows to start now: up to `room`, once enough are queued or the oldest has waited long enough."""
        wait_s = self.max_wait_ms / 1000.0
        with self._cond:
            while True:
                self._drop_cancelled_pending()
                if not self._pending or self._stop.is_set():
                    return []
                oldest_wait = time.monotonic() - self._pending[0].enqueued
                if len(self._pending) >= room or oldest_wait >= wait_s:
                    break
                if not first_batch:
                    return []  # a batch is running: check again after the next step
                if self._control:
                    return []
                self._cond.wait(timeout=wait_s - oldest_wait)
            rows = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            metrics.QUEUE_DEPTH.set(len(self._pending))
        now = time.monotonic()
        for row in rows:
            metrics.QUEUE_WAIT.observe(now - row.enqueued)
            row.started = now
        return rows

    def _drop_cancelled_pending(self) -> None:
        """Drop queued rows whose request was cancelled (call with self._cond held)."""
        if any(row.request.cancelled.is_set() for row in self._pending):
            kept = deque()
            for row in self._pending:
                if row.request.cancelled.is_set():
                    row.future.cancel()
                    self.count_cancelled()
                else:
                    kept.append(row)
            self._pending = kept
            metrics.QUEUE_DEPTH.set(len(self._pending))
