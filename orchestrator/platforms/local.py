"""`leap run --platform local`: the trainer service over gRPC, LoadAdapter on the one student server."""

from __future__ import annotations

import logging

import grpc

from leap.v1 import common_pb2, student_pb2, trainer_pb2
from orchestrator.config import RetryConfig
from orchestrator.platforms.base import Platform, StatusCallback, TrainingObserver
from orchestrator.platforms.hot_swap import ConflictingAdapter, same_checkpoint
from services.trainer.client import FINISHED_STATES, WatchPolicy, wait_for_job

log = logging.getLogger("leap.orchestrator")


class LocalPlatform(Platform):
    """Trains with the trainer service at `stubs.trainer`, serves adapters from the student at `stubs.student`."""

    description = "the trainer service"

    def __init__(self, stubs, retry: RetryConfig):
        self.stubs = stubs
        self.retry = retry
        self.watch_policy = WatchPolicy(backoff_s=retry.watch_backoff_s,
                                        reconnect_for_s=retry.watch_reconnect_s or None,
                                        call_timeout_s=retry.call_timeout_s)

    def train_job(self, request: trainer_pb2.StartJobRequest, observer: TrainingObserver) -> trainer_pb2.Job:
        trainer = self.stubs.trainer
        try:
            job = trainer.StartJob(request, timeout=self.retry.start_timeout_s)
        except grpc.RpcError as exc:
            # The id was submitted before with another spec (e.g. by a release that wrote it
            # differently): the id names this training, so that job is the one to follow.
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            job = trainer.GetJob(trainer_pb2.GetJobRequest(job_id=request.job_id), timeout=self.retry.call_timeout_s)
            log.info("training job exists already; following it", extra={"job_id": job.job_id})
        observer.submitted(job.job_id)
        if job.state in FINISHED_STATES:
            return job
        return wait_for_job(trainer, job.job_id, policy=self.watch_policy, on_progress=observer.progress)

    def cancel_job(self, job_id: str) -> None:
        try:
            self.stubs.trainer.CancelJob(trainer_pb2.CancelJobRequest(job_id=job_id),
                                         timeout=self.retry.call_timeout_s)
        except grpc.RpcError as exc:
            # FAILED_PRECONDITION: it ended already; NOT_FOUND: it was never submitted.
            if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                raise

    def load_adapter(self, checkpoint: common_pb2.CheckpointRef, on_status: StatusCallback) -> student_pb2.AdapterInfo:
        try:
            return self.stubs.student.LoadAdapter(student_pb2.LoadAdapterRequest(checkpoint=checkpoint),
                                                  timeout=self.retry.load_adapter_timeout_s)
        except grpc.RpcError as exc:
            # Loaded already under this version: by this run before a restart (the same checkpoint), or
            # by another run sharing the student (another checkpoint under the same name), which this
            # run must not evaluate as its own.
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        return self._held(checkpoint)

    def confirm_adapter(self, checkpoint: common_pb2.CheckpointRef | None, on_status: StatusCallback) -> None:
        if checkpoint is None:
            return
        if checkpoint.version not in {a.version for a in self._adapters()}:
            on_status(f"loading {checkpoint.version}")
            self.load_adapter(checkpoint, on_status)
        else:
            self._held(checkpoint)

    def _held(self, checkpoint: common_pb2.CheckpointRef) -> student_pb2.AdapterInfo:
        """The student's adapter of `checkpoint`'s version; ConflictingAdapter when it holds other weights."""
        info = next((a for a in self._adapters() if a.version == checkpoint.version), None)
        if info is None:
            raise ConflictingAdapter(f"the student answered that {checkpoint.version} is loaded, but does not list it")
        if not same_checkpoint(info.checkpoint, checkpoint):
            raise ConflictingAdapter(
                f"the student serves {checkpoint.version} from {info.checkpoint.uri or '(unknown)'}, not this run's "
                f"checkpoint {checkpoint.uri}: another run shares this student, and a version name is bound to its "
                f"first weights. Unload it (UnloadAdapter {checkpoint.version}), restart the student, or give each "
                "run a student of its own")
        return info

    def _adapters(self) -> list[student_pb2.AdapterInfo]:
        return list(self.stubs.student.ListAdapters(student_pb2.ListAdaptersRequest(),
                                                    timeout=self.retry.call_timeout_s).adapters)
