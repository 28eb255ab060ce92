"""gRPC servicer of leap.v1.TrainerService: message translation only; logic lives in service.py."""

from __future__ import annotations

from pathlib import Path

from leap.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from services.runtime.server import Registration
from services.trainer import methods
from services.trainer.datasets import DEFAULT_LIMITS, DatasetLimits
from services.trainer.jobs import CheckpointRef, DatasetRef, HyperParameters, JobRecord, JobRequest, JobState
from services.trainer.service import Executor, JobRunner, TrainerService, default_executor
from services.trainer.store import JobStore

NAME = "leap.v1.TrainerService"

_STATE_TO_PROTO = {
    JobState.QUEUED: trainer_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: trainer_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: trainer_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: trainer_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: trainer_pb2.JOB_STATE_CANCELLED,
}


def _f32(value: float) -> float:
    """proto floats are 32-bit: 3e-5 arrives as 2.9999999e-05; keep the 7 digits a float32 carries."""
    return float(f"{value:.7g}")


def _method_name(value: int) -> str:
    """The method name of a TrainingMethod number; "" for UNSPECIFIED, so validation names the valid ones."""
    return methods.from_proto(value).name if value else ""


def request_from_proto(msg: trainer_pb2.StartJobRequest) -> JobRequest:
    hp = msg.hyper_parameters
    parent = None
    if msg.HasField("parent"):
        p = msg.parent
        parent = CheckpointRef(name=p.name, version=p.version, uri=p.uri, sha256=p.sha256, base_model=p.base_model)
    return JobRequest(
        job_id=msg.job_id,
        method=_method_name(msg.method),
        datasets=[DatasetRef(uri=d.uri, sha256=d.sha256, format=d.format) for d in msg.datasets],
        base_model=msg.base_model,
        parent=parent,
        output_name=msg.output_name,
        run_dir=msg.run_dir,
        hyper_parameters=HyperParameters(
            lora_r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=_f32(hp.lora_dropout) if hp.HasField("lora_dropout") else None,
            target_modules=list(hp.target_modules), learning_rate=_f32(hp.learning_rate), epochs=_f32(hp.epochs),
            batch_size=hp.batch_size, gradient_accumulation=hp.gradient_accumulation, max_length=hp.max_length,
            beta=_f32(hp.beta), seed=hp.seed, max_steps=hp.max_steps, lr_scheduler=hp.lr_scheduler,
            warmup_ratio=_f32(hp.warmup_ratio), lora_last_layers=hp.lora_last_layers,
        ),
    )


def _checkpoint_to_proto(ref: CheckpointRef) -> common_pb2.CheckpointRef:
    return common_pb2.CheckpointRef(name=ref.name, version=ref.version, uri=ref.uri, sha256=ref.sha256,
                                    base_model=ref.base_model)


def progress_to_proto(record: JobRecord) -> trainer_pb2.JobProgress:
    p = record.progress
    return trainer_pb2.JobProgress(
        job_id=record.job_id, state=_STATE_TO_PROTO[record.state], step=p.step, total_steps=p.total_steps,
        epoch=p.epoch, loss=p.loss, tokens_per_second=p.tokens_per_second, eta_seconds=p.eta_seconds,
        metrics=p.metrics, message=p.message,
    )


def job_to_proto(record: JobRecord) -> trainer_pb2.Job:
    spec = record.spec
    hp = spec.hyper_parameters
    request = trainer_pb2.StartJobRequest(
        job_id=record.job_id,
        method=methods.to_proto(spec.method),
        datasets=[common_pb2.ArtifactRef(uri=d.uri, sha256=d.sha256, format=d.format, size_bytes=d.size_bytes)
                  for d in spec.datasets],
        base_model=spec.base_model,
        output_name=spec.output_name,
        run_dir=spec.run_dir,
        hyper_parameters=trainer_pb2.HyperParameters(**hp.to_dict()),
    )
    if spec.parent is not None:
        request.parent.CopyFrom(_checkpoint_to_proto(spec.parent))
    job = trainer_pb2.Job(
        job_id=record.job_id, spec=request, state=_STATE_TO_PROTO[record.state], progress=progress_to_proto(record),
        error=record.error, created_at=record.created_at, started_at=record.started_at,
        finished_at=record.finished_at,
    )
    if record.checkpoint is not None:
        job.checkpoint.CopyFrom(_checkpoint_to_proto(record.checkpoint))
    return job


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, service: TrainerService):
        self.service = service

    def StartJob(self, request, context):
        return job_to_proto(self.service.start_job(request_from_proto(request)))

    def WatchJob(self, request, context):
        for record in self.service.watch_job(request.job_id, is_active=context.is_active):
            yield progress_to_proto(record)

    def GetJob(self, request, context):
        return job_to_proto(self.service.get_job(request.job_id))

    def CancelJob(self, request, context):
        return job_to_proto(self.service.cancel_job(request.job_id))

    def ListJobs(self, request, context):
        return trainer_pb2.ListJobsResponse(jobs=[job_to_proto(r) for r in self.service.list_jobs(request.limit)])


#: Threads of the pools of the trainer's long calls (services.runtime.server): watch streams are held
#: for a whole job; StartJob reads every dataset row.
DEFAULT_WATCH_THREADS = 64
START_JOB_THREADS = 4


def create_service(state_dir: str | Path, runs_dir: str | Path, device: str = "auto",
                   execute: Executor = default_executor,
                   dataset_limits: DatasetLimits = DEFAULT_LIMITS) -> TrainerService:
    """Open the job store (recovering it), start the worker, and return the service."""
    store = JobStore(state_dir)
    runner = JobRunner(store, execute, device=device, dataset_limits=dataset_limits)
    runner.start()
    return TrainerService(store, runner, runs_dir, dataset_limits=dataset_limits)


def registrations(service: TrainerService, watch_threads: int = DEFAULT_WATCH_THREADS) -> list[Registration]:
    """The trainer service. WatchJob and StartJob run on pools of their own, so that held watch streams
    (one per watcher, for a job's whole run) never keep GetJob, CancelJob or health checks waiting."""
    return [Registration(NAME, trainer_pb2_grpc.add_TrainerServiceServicer_to_server, TrainerServicer(service),
                         long_calls={"WatchJob": watch_threads, "StartJob": START_JOB_THREADS})]
