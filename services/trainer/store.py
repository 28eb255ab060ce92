"""The persisted job store: one JSON file per job, written atomically, under the state directory.

Layout::

    <state_dir>/trainer.lock          flock held by the one trainer process that owns this directory
    <state_dir>/jobs/<job_id>.json    the job record (spec, state, progress, checkpoint, error, times)
    <state_dir>/work/<job_id>/        scratch space of a running job (removed when it ends)

Every state change is persisted (temp file, fsync, rename) before it is visible to callers; progress
updates are persisted at most every few seconds (the in-memory copy is always current, and that is
what WatchJob streams). A process that dies leaves the last persisted record: on the next start,
RUNNING jobs become FAILED with a message saying so, and QUEUED jobs are queued again in their
original order. A record that cannot be read is moved aside as ``<job_id>.json.corrupt`` and logged,
never silently dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from services.runtime.errors import AlreadyExists, NotFound, quote
from services.runtime.files import atomic_write_json
from services.trainer.jobs import RESTARTED_MESSAGE, JobRecord, JobState

log = logging.getLogger("leap.trainer.store")

PROGRESS_PERSIST_SECONDS = 5.0


class StateDirInUse(RuntimeError):
    """Another trainer process holds the state directory's lock."""


class JobStore:
    """Thread-safe job records, mirrored to disk. Readers get copies; watchers wait on revisions."""

    def __init__(self, state_dir: str | os.PathLike, *, lock_wait_s: float = 30.0):
        self.root = Path(state_dir).resolve()
        self.jobs_dir = self.root / "jobs"
        self.work_root = self.root / "work"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.root / "trainer.lock", "a+")
        # A predecessor that was just killed (a crashed run, a replaced pod) releases the lock when its
        # process is gone; wait a little for that before concluding that another trainer is alive.
        deadline = time.monotonic() + lock_wait_s
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                self._lock_file.close()
                raise StateDirInUse(
                    f"another trainer process is using the state directory {self.root}; "
                    "give each trainer its own --state-dir"
                ) from exc
        self._cond = threading.Condition()
        self._jobs: dict[str, JobRecord] = {}
        self._persisted_at: dict[str, float] = {}
        self._sequence = 0
        self._load()

    # ---------------------------------------------------------------------------------------- load

    def _load(self) -> None:
        for tmp in self.jobs_dir.glob(".*.tmp"):  # atomic writes that never finished
            with contextlib.suppress(OSError):
                tmp.unlink()
        for path in sorted(self.jobs_dir.glob("*.json")):
            try:
                record = JobRecord.from_dict(json.loads(path.read_text()))
                if record.job_id != path.stem:
                    raise ValueError(f"file name says {path.stem!r} but the record says {record.job_id!r}")
            except Exception as exc:  # noqa: BLE001 - any unreadable record is quarantined, not fatal
                aside = path.with_name(path.name + ".corrupt")
                os.replace(path, aside)
                log.error("unreadable job record moved aside", extra={"path": str(aside), "error": str(exc)})
                continue
            self._jobs[record.job_id] = record
            self._sequence = max(self._sequence, record.sequence)

    def recover(self) -> tuple[list[JobRecord], list[JobRecord]]:
        """After a restart: fail the jobs that were RUNNING; return (interrupted, queued in order)."""
        interrupted, queued = [], []
        now = time.time()
        with self._cond:
            for record in sorted(self._jobs.values(), key=lambda r: r.sequence):
                if record.state == JobState.RUNNING:
                    record.state = JobState.CANCELLED if record.cancel_requested else JobState.FAILED
                    record.error = "" if record.cancel_requested else RESTARTED_MESSAGE
                    record.progress.message = (
                        "cancelled (the trainer restarted before the job stopped)"
                        if record.cancel_requested else RESTARTED_MESSAGE
                    )
                    record.progress.eta_seconds = 0.0
                    record.finished_at = now
                    self._commit(record)
                    interrupted.append(record.copy())
                elif record.state == JobState.QUEUED:
                    queued.append(record.copy())
        return interrupted, queued

    # ------------------------------------------------------------------------------------- records

    def add(self, record: JobRecord, same_job: Callable[[JobRecord], bool]) -> tuple[JobRecord, bool]:
        """Persist a new record; for an existing id return (existing, False) if `same_job(existing)`.

        An existing id with a different spec is ALREADY_EXISTS: ids are idempotency keys, not names
        to reuse.
        """
        with self._cond:
            existing = self._jobs.get(record.job_id)
            if existing is not None:
                if same_job(existing):
                    return existing.copy(), False
                raise AlreadyExists(
                    f"job id {quote(record.job_id)} is already used by a job with a different spec; "
                    "choose a new job_id (or leave it empty to get one)"
                )
            self._sequence += 1
            record.sequence = self._sequence
            record.created_at = record.created_at or time.time()
            self._commit(record)
            self._jobs[record.job_id] = record
            return record.copy(), True

    def get(self, job_id: str) -> JobRecord:
        with self._cond:
            return self._require(job_id).copy()

    def list(self, limit: int = 100) -> list[JobRecord]:
        """Newest first."""
        with self._cond:
            records = sorted(self._jobs.values(), key=lambda r: r.sequence, reverse=True)
            return [r.copy() for r in records[:limit]]

    def update(self, job_id: str, change: Callable[[JobRecord], None], *, throttle: bool = False) -> JobRecord:
        """Apply `change` to the record, persist it (throttled for progress-only updates), wake watchers."""
        with self._cond:
            record = self._require(job_id)
            change(record)
            persist = not throttle or (time.monotonic() - self._persisted_at.get(job_id, 0.0)
                                       >= PROGRESS_PERSIST_SECONDS)
            self._commit(record, persist=persist)
            return record.copy()

    def wait_for_change(self, job_id: str, revision: int, timeout: float) -> JobRecord:
        """The record once its revision differs from `revision`, or as it is after `timeout` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self._require(job_id).revision != revision, timeout=timeout)
            return self._require(job_id).copy()

    def work_dir(self, job_id: str) -> Path:
        return self.work_root / job_id

    def close(self) -> None:
        """Release the state directory (the records stay on disk)."""
        with contextlib.suppress(OSError, ValueError):
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self) -> "JobStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ internal

    def _require(self, job_id: str) -> JobRecord:
        record = self._jobs.get(job_id)
        if record is None:
            raise NotFound(f"no job with id {quote(job_id)}; ListJobs shows the known jobs")
        return record

    def _commit(self, record: JobRecord, persist: bool = True) -> None:
        record.revision += 1
        if persist:
            atomic_write_json(self.jobs_dir / f"{record.job_id}.json", record.to_dict())
            self._persisted_at[record.job_id] = time.monotonic()
        self._cond.notify_all()
