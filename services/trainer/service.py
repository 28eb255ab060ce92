"""The trainer's logic, transport-free: validate and persist jobs, run them one at a time, stream progress.

    store = JobStore(state_dir)
    runner = JobRunner(store, execute_job, device="auto")   # the worker thread (one job at a time)
    service = TrainerService(store, runner, runs_dir)
    runner.start()                                           # recovers the store, then runs the queue

StartJob validates everything it can before returning (schemas of every dataset row, parent adapter,
hyper-parameters), persists the job as QUEUED, and hands it to the runner. Cancellation is cooperative:
a queued job is cancelled at once; a running one stops at the end of its current optimizer step and
writes no checkpoint. This module never imports torch: executor.py does, when a job runs.

Every path a request names (run_dir, datasets, the parent adapter) must lie under the runs directory
(services.runtime.paths.confine: relative to it, absolute under it, or file:// under it; symlinks
resolved); a path elsewhere is INVALID_ARGUMENT with a message that says nothing about what exists
there. Datasets are capped (DatasetLimits) and checked by a streaming read.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from services.models.loading import DEFAULT_MODEL, is_default_alias
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, ServiceError, quote
from services.runtime.paths import check_text_field, confine
from services.trainer import checkpoints
from services.trainer.datasets import DEFAULT_LIMITS, DatasetLimits, read_dataset
from services.trainer import methods
from services.trainer.jobs import (
    SHUTDOWN_MESSAGE,
    CheckpointRef,
    DatasetRef,
    JobRecord,
    JobRequest,
    JobSpec,
    JobState,
    Progress,
    check_name,
)
from services.trainer.store import JobStore

log = logging.getLogger("leap.trainer")

DEFAULT_OUTPUT_NAME = "student"
#: Datasets one job may name.
MAX_DATASETS = 64
#: A job's datasets together hold at most this many times a file's size limit (a job loads them all).
MAX_JOB_DATASET_FILES_OF_MAX_SIZE = 4
#: A hub model id: "name" or "organisation/name".
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


class JobCancelled(Exception):
    """Raised inside a job when its cancellation (or the trainer's shutdown) was requested."""


@dataclass
class JobOutcome:
    checkpoint: CheckpointRef
    metrics: dict[str, float] = field(default_factory=dict)


class JobContext:
    """What a running job sees: its spec, a progress reporter, and whether it should stop."""

    def __init__(self, store: JobStore, record: JobRecord, cancel: threading.Event, shutdown: threading.Event,
                 device: str, dataset_limits: DatasetLimits = DEFAULT_LIMITS):
        self._store = store
        self._cancel = cancel
        self._shutdown = shutdown
        self.job_id = record.job_id
        self.spec = record.spec
        self.device = device
        self.dataset_limits = dataset_limits
        self.work_dir = store.work_dir(record.job_id)

    def cancelled(self) -> bool:
        return self._cancel.is_set() or self._shutdown.is_set()

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled()

    def report(self, *, message: str | None = None, step: int | None = None, total_steps: int | None = None,
               epoch: float | None = None, loss: float | None = None, tokens_per_second: float | None = None,
               eta_seconds: float | None = None, metrics: dict[str, float] | None = None) -> None:
        """Update the job's progress (fields left None keep their value) and wake its watchers."""

        def change(record: JobRecord) -> None:
            p = record.progress
            for name, value in (("step", step), ("total_steps", total_steps), ("epoch", epoch), ("loss", loss),
                                ("tokens_per_second", tokens_per_second), ("eta_seconds", eta_seconds)):
                if value is not None:
                    setattr(p, name, value)
            if metrics is not None:
                p.metrics.update(metrics)
            if message is not None:
                p.message = message
            if record.cancel_requested and message is not None and "cancel" not in message:
                p.message = f"{message} (cancellation requested)"

        self._store.update(self.job_id, change, throttle=True)


Executor = Callable[[JobContext], JobOutcome]


def default_executor(context: JobContext) -> JobOutcome:
    from services.trainer.executor import execute_job  # imports torch only once a job runs

    return execute_job(context)


class JobRunner:
    """The worker: takes QUEUED jobs in submission order and runs them one at a time on its device."""

    def __init__(self, store: JobStore, execute: Executor = default_executor, device: str = "auto",
                 dataset_limits: DatasetLimits = DEFAULT_LIMITS):
        self.store = store
        self.execute = execute
        self.device = device
        self.dataset_limits = dataset_limits
        #: The runs directory jobs write under (set by the TrainerService); None: not checked again.
        self.runs_dir: Path | None = None
        self._cv = threading.Condition()
        self._queue: list[str] = []
        self._running: tuple[str, threading.Event] | None = None
        self._shutdown = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Recover the store (RUNNING -> FAILED, stale partial checkpoints removed), requeue, start."""
        interrupted, queued = self.store.recover()
        for record in interrupted:
            removed = checkpoints.remove_partials(checkpoints.checkpoint_dir(record.spec.run_dir,
                                                                             record.spec.output_name))
            written = None
            if record.state == JobState.FAILED:  # not a cancelled one: the caller asked it to stop
                written = checkpoints.checkpoint_of_job(record.spec.run_dir, record.spec.output_name, record.job_id)
            if written is not None:
                # The trainer died after the checkpoint was in place but before the job said so.
                def adopt(job: JobRecord, ref=written) -> None:
                    _finish(JobState.SUCCEEDED, f"succeeded: checkpoint {ref.name} {ref.version} at {ref.uri} "
                                                "(found after a restart)")(job)
                    job.checkpoint = ref

                self.store.update(record.job_id, adopt)
                log.warning("job was running when the trainer stopped; its finished checkpoint was found",
                            extra={"job_id": record.job_id, "checkpoint": written.uri})
                continue
            log.warning("job was running when the trainer stopped; marked %s", record.state.value,
                        extra={"job_id": record.job_id, "partials_removed": len(removed)})
        shutil.rmtree(self.store.work_root, ignore_errors=True)
        with self._cv:
            self._queue.extend(r.job_id for r in queued)
        if queued:
            log.info("requeued jobs after restart", extra={"jobs": ",".join(r.job_id for r in queued)})
        self._thread = threading.Thread(target=self._loop, name="trainer-worker", daemon=True)
        self._thread.start()

    def enqueue(self, job_id: str) -> None:
        with self._cv:
            self._queue.append(job_id)
            self._cv.notify_all()

    def cancel(self, job_id: str) -> JobRecord:
        with self._cv:
            record = self.store.get(job_id)
            if record.state.finished:
                raise FailedPrecondition(
                    f"job {job_id} already ended ({record.state.value}); there is nothing to cancel"
                )
            if job_id in self._queue:
                self._queue.remove(job_id)
                return self.store.update(job_id, _finish(JobState.CANCELLED, "cancelled before it started"))
            if self._running and self._running[0] == job_id:
                self._running[1].set()

                def mark(record: JobRecord) -> None:
                    record.cancel_requested = True
                    record.progress.message = "cancellation requested: stopping at the end of the current step"

                return self.store.update(job_id, mark)
        raise FailedPrecondition(f"job {job_id} is {record.state.value} but not known to the worker")

    def shutdown(self, timeout: float = 30.0) -> None:
        """Ask the running job to stop (it ends FAILED with SHUTDOWN_MESSAGE) and wait up to `timeout`."""
        self._shutdown.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the running job did not stop in time; it will be reported FAILED on restart")

    # ------------------------------------------------------------------------------------ internal

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._queue or self._shutdown.is_set())
                if self._shutdown.is_set():
                    return
                job_id = self._queue.pop(0)
                cancel = threading.Event()
                self._running = (job_id, cancel)
            try:
                self._run(job_id, cancel)
            except Exception:  # noqa: BLE001 - the worker must survive anything a job does
                log.exception("job bookkeeping failed", extra={"job_id": job_id})
            finally:
                with self._cv:
                    self._running = None

    def _confine_output(self, spec) -> None:
        """StartJob confined run_dir to the runs directory; a symlink put in its place (or in place of its
        checkpoints folder) while the job waited would send the checkpoint elsewhere: check again now."""
        if self.runs_dir is None:
            return
        confine(self.runs_dir, spec.run_dir, "run_dir")
        confine(self.runs_dir, str(checkpoints.checkpoint_dir(spec.run_dir, spec.output_name)), "the checkpoint folder")

    def _run(self, job_id: str, cancel: threading.Event) -> None:
        def mark_running(record: JobRecord) -> None:
            record.state = JobState.RUNNING
            record.started_at = time.time()
            record.progress.message = "starting"

        record = self.store.update(job_id, mark_running)
        log.info("job started", extra={"job_id": job_id, "method": record.spec.method})
        context = JobContext(self.store, record, cancel, self._shutdown, self.device, self.dataset_limits)
        try:
            context.check_cancelled()
            self._confine_output(record.spec)
            outcome = self.execute(context)
        except JobCancelled:
            if cancel.is_set():
                self.store.update(job_id, _finish(JobState.CANCELLED, "cancelled; no checkpoint was written"))
            else:
                self.store.update(job_id, _finish(JobState.FAILED, SHUTDOWN_MESSAGE, error=SHUTDOWN_MESSAGE))
            log.info("job stopped", extra={"job_id": job_id, "cancelled": cancel.is_set()})
        except Exception as exc:  # noqa: BLE001 - any failure of a job is reported on the job
            error = describe_error(exc)
            log.error("job failed: %s", error, extra={"job_id": job_id, "traceback": traceback.format_exc()})
            self.store.update(job_id, _finish(JobState.FAILED, f"failed: {error}", error=error))
        else:
            ref = outcome.checkpoint

            def succeed(record: JobRecord) -> None:
                _finish(JobState.SUCCEEDED, f"succeeded: checkpoint {ref.name} {ref.version} at {ref.uri}")(record)
                record.checkpoint = ref
                record.progress.metrics.update(outcome.metrics)

            self.store.update(job_id, succeed)
            log.info("job succeeded", extra={"job_id": job_id, "checkpoint": ref.uri})
        finally:
            shutil.rmtree(context.work_dir, ignore_errors=True)


def _finish(state: JobState, message: str, error: str = "") -> Callable[[JobRecord], None]:
    def change(record: JobRecord) -> None:
        record.state = state
        record.error = error
        record.finished_at = time.time()
        record.progress.message = message
        record.progress.eta_seconds = 0.0

    return change


def describe_error(exc: BaseException) -> str:
    """A one-paragraph message for a person: ServiceError/known errors as is, others with their type."""
    if isinstance(exc, ServiceError):
        return exc.message
    text = str(exc).strip()
    if type(exc).__name__ == "TrainingError":
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TrainerService:
    """StartJob / GetJob / CancelJob / ListJobs / WatchJob in plain Python."""

    def __init__(self, store: JobStore, runner: JobRunner, runs_dir: str | Path,
                 dataset_limits: DatasetLimits = DEFAULT_LIMITS):
        self.store = store
        self.runner = runner
        self.runs_dir = Path(runs_dir).resolve()
        runner.runs_dir = self.runs_dir
        self.dataset_limits = dataset_limits

    def start_job(self, request: JobRequest) -> JobRecord:
        job_id = request.job_id.strip() or new_job_id()
        check_name("job_id", job_id)
        spec = self.resolve(request)
        record = JobRecord(job_id=job_id, spec=spec, progress=Progress(message="queued"))
        stored, created = self.store.add(record, same_job=lambda existing: existing.spec.to_dict() == spec.to_dict())
        if created:
            self.runner.enqueue(job_id)
            log.info("job queued", extra={"job_id": job_id, "method": spec.method,
                                          "output": f"{spec.run_dir}/checkpoints/{spec.output_name}"})
        return stored

    def get_job(self, job_id: str) -> JobRecord:
        return self.store.get(job_id)

    def cancel_job(self, job_id: str) -> JobRecord:
        return self.runner.cancel(job_id)

    def list_jobs(self, limit: int = 0) -> list[JobRecord]:
        if limit < 0:
            raise InvalidArgument(f"limit must be >= 0 (got {limit}); 0 means 100")
        return self.store.list(limit or 100)

    def watch_job(self, job_id: str, is_active: Callable[[], bool] = lambda: True,
                  poll_seconds: float = 1.0) -> Iterator[JobRecord]:
        """Yield the job now and after every change until it ends (or the watcher goes away).

        A slow watcher skips intermediate updates (it always gets the latest); the last record yielded
        is the finished job. Watching never affects the job.
        """
        record = self.store.get(job_id)
        yield record
        while not record.state.finished and is_active():
            updated = self.store.wait_for_change(job_id, record.revision, timeout=poll_seconds)
            if updated.revision != record.revision:
                record = updated
                yield record

    # ---------------------------------------------------------------------------------- validation

    def resolve(self, request: JobRequest) -> JobSpec:
        """Validate a request and fill in defaults; every path in the result is absolute."""
        method = methods.get(request.method).name
        hyper = request.hyper_parameters.resolve(method)
        output_name = request.output_name.strip() or DEFAULT_OUTPUT_NAME
        check_name("output_name", output_name)
        run_dir = self._path(request.run_dir, "run_dir") if request.run_dir.strip() else self.runs_dir
        if run_dir.exists() and not run_dir.is_dir():
            raise InvalidArgument(f"run_dir {run_dir} exists and is not a directory")
        check_text_field(request.base_model, "base_model")

        parent = None
        parent_manifest = None
        if request.parent is not None and (request.parent.uri or request.parent.name or request.parent.version):
            if not request.parent.uri.strip():
                raise InvalidArgument("parent.uri is required to continue from a parent adapter")
            parent = CheckpointRef(**vars(request.parent))
            for name in ("name", "version", "sha256", "base_model"):
                check_text_field(getattr(parent, name), f"parent.{name}", max_chars=256)
            parent.uri = str(self._path(parent.uri, "parent.uri"))
            parent_manifest = checkpoints.check_parent(parent)

        base_model = request.base_model.strip()
        manifest_base = (parent_manifest or {}).get("base_model", "")
        if not isinstance(manifest_base, str) or len(manifest_base) > 1024:
            raise FailedPrecondition(f"parent checkpoint {parent.uri}: its manifest's base_model is not a model name")
        parent_base = (parent.base_model if parent else "") or manifest_base
        if parent_base and base_model and base_model != parent_base:
            raise InvalidArgument(f"base_model {quote(base_model)} differs from the parent adapter's base model "
                                  f"{quote(parent_base)}; an adapter only continues on the model it was trained on")
        base_model = base_model or parent_base or DEFAULT_MODEL
        if parent is not None and not parent.base_model:
            parent.base_model = base_model
        self._check_base_model(base_model)

        if not request.datasets:
            raise InvalidArgument("at least one dataset is required")
        if len(request.datasets) > MAX_DATASETS:
            raise InvalidArgument(f"the job names {len(request.datasets)} datasets; at most {MAX_DATASETS} "
                                  "(concatenate files)")
        datasets = []
        named: dict[Path, int] = {}
        total_bytes = 0
        for i, ref in enumerate(request.datasets):
            if not ref.uri.strip():
                raise InvalidArgument(f"datasets[{i}].uri is empty")
            path = self._path(ref.uri, f"datasets[{i}].uri")
            if path in named:
                raise InvalidArgument(f"datasets[{i}] names {path} again (datasets[{named[path]}]); name each file "
                                      "once (a row meant to count twice belongs twice in the file)")
            named[path] = i
            if not path.is_file():
                raise NotFound(f"dataset {path} does not exist (datasets[{i}].uri={quote(ref.uri)})")
            try:
                parsed = read_dataset(path, method, ref.format, limits=self.dataset_limits, keep_examples=False)
            except FileNotFoundError:
                raise NotFound(f"dataset {path} does not exist (datasets[{i}].uri={quote(ref.uri)})") from None
            if ref.sha256 and ref.sha256.lower() != parsed.sha256:
                raise FailedPrecondition(f"dataset {path} has sha256 {parsed.sha256}, not the {quote(ref.sha256, 64)} "
                                         "given in its reference: the file changed")
            total_bytes += parsed.size_bytes
            if total_bytes > MAX_JOB_DATASET_FILES_OF_MAX_SIZE * self.dataset_limits.max_bytes:
                raise ResourceExhausted(
                    f"the job's datasets hold more than {MAX_JOB_DATASET_FILES_OF_MAX_SIZE} x "
                    f"{self.dataset_limits.max_bytes} bytes (--max-dataset-mb) together; train on fewer rows per job")
            datasets.append(DatasetRef(uri=str(path), sha256=parsed.sha256, format=parsed.format,
                                       size_bytes=parsed.size_bytes))
        return JobSpec(method=method, datasets=datasets, base_model=base_model, output_name=output_name,
                       run_dir=str(run_dir), hyper_parameters=hyper, parent=parent)

    def _path(self, uri: str, what: str) -> Path:
        """A path or file:// URI under the runs directory (relative paths are taken from there)."""
        return confine(self.runs_dir, uri, what)

    @staticmethod
    def _check_base_model(base_model: str) -> None:
        """An alias of the embedded model, a hub id, or a model folder (one with config.json).

        Whether a folder that is not a model exists is not said (the same message either way).
        """
        if is_default_alias(base_model):
            return
        path_like = base_model.startswith((".", "/", "~"))
        if not path_like and _HUB_ID.match(base_model):
            try:
                if not Path(base_model).exists():
                    return  # a hub id, loaded by the worker (a local folder of that name wins)
            except OSError:
                pass
        elif not path_like:
            raise InvalidArgument(f"base_model {quote(base_model)} is neither a model alias (smollm2), a hub id "
                                  "(organisation/name) nor a path to a model folder")
        try:
            is_model = (Path(base_model).expanduser() / "config.json").is_file()
        except (OSError, ValueError):
            is_model = False
        if not is_model:
            raise InvalidArgument(f"base_model {quote(base_model)} is not a transformers model folder "
                                  "(a folder with config.json) on the trainer's machine")


def new_job_id() -> str:
    return time.strftime("job-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:8]
