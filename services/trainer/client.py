"""A small typed client of leap.v1.TrainerService (torch-free), and the one job watch every caller uses.

    client = TrainerClient("127.0.0.1:50081")
    job = client.start_job("sft", ["runs/r1/datasets/iter1.jsonl"], output_name="student",
                           run_dir="runs/r1", hyper_parameters={"learning_rate": 3e-5})
    for progress in client.watch(job.job_id):
        print(progress.step, progress.total_steps, progress.loss)
    job = client.wait(job.job_id)          # -> Job (SUCCEEDED / FAILED / CANCELLED)
    job.checkpoint.uri, job.checkpoint.version

`watch_job` and `wait_for_job` follow a job over any TrainerService stub and survive a dropped
connection or a restarted server: they reconnect and continue from the job's current state
(progress is a snapshot, so nothing is lost by reconnecting). The orchestrator's local platform,
the Kubernetes trainer-Job runner and this client all follow jobs with them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import grpc

from leap.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from services.runtime.channels import make_channel
from services.trainer import methods as training_methods

FINISHED_STATES = (trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED)
# A stream broken by a network blip, a restarting server or a stream deadline (not by a bad request)
# is reopened.
_RECONNECTABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class WatchPolicy:
    """How a job watch reconnects."""

    # Pause before reopening a broken stream.
    backoff_s: float = 0.5
    # Give up (re-raising the last error) after this many seconds in a row without a working stream;
    # None: never (the job goes on at the trainer, which may be restarting).
    reconnect_for_s: float | None = 120.0
    # Deadline of the GetJob call that reads the finished job.
    call_timeout_s: float = 60.0


def watch_job(stub: trainer_pb2_grpc.TrainerServiceStub, job_id: str, *, policy: WatchPolicy = WatchPolicy(),
              timeout: float | None = None) -> Iterator[trainer_pb2.JobProgress]:
    """Progress of a job until it ends (the last item has a finished state).

    A broken stream is reopened (policy); `timeout` bounds the whole watch (TimeoutError).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    broken_since = None
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f}s")
        call = stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id), timeout=remaining)
        try:
            for progress in call:
                broken_since = None
                yield progress
                if progress.state in FINISHED_STATES:
                    return
            # The stream ended without a final state (the server is shutting down): reopen it.
            broken_since = broken_since or time.monotonic()
            if policy.reconnect_for_s is not None and time.monotonic() - broken_since > policy.reconnect_for_s:
                raise ConnectionError(f"the watch of job {job_id} keeps ending before the job does")
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f}s") from exc
            if code not in _RECONNECTABLE:
                raise
            broken_since = broken_since or time.monotonic()
            if policy.reconnect_for_s is not None and time.monotonic() - broken_since > policy.reconnect_for_s:
                raise
        finally:
            call.cancel()  # stops the stream when the caller stops iterating early
        time.sleep(policy.backoff_s)


def wait_for_job(stub: trainer_pb2_grpc.TrainerServiceStub, job_id: str, *, policy: WatchPolicy = WatchPolicy(),
                 timeout: float | None = None,
                 on_progress: Callable[[trainer_pb2.JobProgress], None] | None = None) -> trainer_pb2.Job:
    """Follow the job until it ends (watch_job) and return it, with its checkpoint or error."""
    for progress in watch_job(stub, job_id, policy=policy, timeout=timeout):
        if on_progress is not None:
            on_progress(progress)
    return stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id), timeout=policy.call_timeout_s)


class TrainerClient:
    def __init__(self, address: str | None = None, *, channel: grpc.Channel | None = None, timeout: float = 60.0):
        if (address is None) == (channel is None):
            raise ValueError("give either an address or a channel")
        self._own_channel = channel is None
        self.channel = channel or make_channel(address)
        self.stub = trainer_pb2_grpc.TrainerServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def __enter__(self) -> "TrainerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------- calls

    def start_job(self, method: str, datasets: Iterable[str | common_pb2.ArtifactRef], *, output_name: str = "",
                  run_dir: str = "", base_model: str = "", parent: common_pb2.CheckpointRef | None = None,
                  hyper_parameters: Mapping | trainer_pb2.HyperParameters | None = None,
                  job_id: str = "") -> trainer_pb2.Job:
        """Queue a job. `method` is sft, dpo or kto; datasets are paths or ArtifactRefs; unset
        hyper-parameters take LEAP's defaults. A repeated call with the same job_id returns that job."""
        if not training_methods.is_known(method.lower()):
            raise ValueError(f"method must be one of {', '.join(training_methods.names())} (got {method!r})")
        refs = [d if isinstance(d, common_pb2.ArtifactRef) else common_pb2.ArtifactRef(uri=str(d)) for d in datasets]
        if isinstance(hyper_parameters, trainer_pb2.HyperParameters):
            hp = hyper_parameters
        else:
            hp = trainer_pb2.HyperParameters(**dict(hyper_parameters or {}))
        request = trainer_pb2.StartJobRequest(
            job_id=job_id, method=training_methods.to_proto(method.lower()), datasets=refs, base_model=base_model,
            output_name=output_name, run_dir=str(run_dir), hyper_parameters=hp,
        )
        if parent is not None:
            request.parent.CopyFrom(parent)
        return self.stub.StartJob(request, timeout=self.timeout)

    def get(self, job_id: str) -> trainer_pb2.Job:
        return self.stub.GetJob(trainer_pb2.GetJobRequest(job_id=job_id), timeout=self.timeout)

    def cancel(self, job_id: str) -> trainer_pb2.Job:
        return self.stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=job_id), timeout=self.timeout)

    def list(self, limit: int = 0) -> list[trainer_pb2.Job]:
        return list(self.stub.ListJobs(trainer_pb2.ListJobsRequest(limit=limit), timeout=self.timeout).jobs)

    def watch(self, job_id: str, *, timeout: float | None = None,
              reconnect_for: float = 120.0) -> Iterator[trainer_pb2.JobProgress]:
        """Progress of a job until it ends (watch_job): a broken stream is reopened for up to
        `reconnect_for` seconds in a row; `timeout` bounds the whole watch (TimeoutError)."""
        policy = WatchPolicy(reconnect_for_s=reconnect_for, call_timeout_s=self.timeout)
        return watch_job(self.stub, job_id, policy=policy, timeout=timeout)

    def wait(self, job_id: str, *, timeout: float | None = None) -> trainer_pb2.Job:
        """Block until the job ends (TimeoutError after `timeout` seconds) and return it."""
        return wait_for_job(self.stub, job_id, policy=WatchPolicy(call_timeout_s=self.timeout), timeout=timeout)
