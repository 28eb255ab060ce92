"""What a LEAP run needs from the platform it runs on.

The run (orchestrator.loop.LeapRun) decides what to train and which adapter the student must serve;
the platform decides how: the local one talks to the trainer service and the student over gRPC
(orchestrator.platforms.local), the Kubernetes one runs trainer Jobs and hot-swaps adapters on every
student replica (orchestrator.platforms.kubernetes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

from leap.v1 import common_pb2, student_pb2, trainer_pb2

# The adapter version that names the untrained student (the base model).
BASE_VERSION = "base"
StatusCallback = Callable[[str], None]


class TrainingFailed(RuntimeError):
    """A training ended without a trainer job to show for it (e.g. its Kubernetes Job failed).

    A training that ends as a FAILED or CANCELLED trainer job is returned, not raised."""


class TrainingObserver:
    """What a platform reports while it runs one training; every method is optional."""

    def submitted(self, job_id: str) -> None:
        """The job exists on the platform (created now, or adopted from an earlier submission)."""

    def progress(self, progress: trainer_pb2.JobProgress) -> None:
        """A progress snapshot of the running job."""

    def status(self, text: str) -> None:
        """A one-line status when the platform has no progress snapshots (e.g. a pod being scheduled)."""


class Platform(ABC):
    """Where a run trains its adapters and serves them to the student."""

    # Named in errors: "training failed 3 times on <description>".
    description: str = "the platform"
    # The run's label, given by begin_run; the platform names what it creates for the run with it.
    run_label: str = ""

    def begin_run(self, run_label: str) -> None:
        """Called once by the run before anything else, with its label (`<config name>-<run id>`)."""
        self.run_label = run_label

    @abstractmethod
    def train_job(self, request: trainer_pb2.StartJobRequest, observer: TrainingObserver) -> trainer_pb2.Job:
        """Submit `request` (its job_id set) and follow it until it ends; return the finished job.

        A job with that id that exists already (a resumed run) is adopted and followed, not submitted
        again. Raises TrainingFailed when the training ended without a trainer job."""

    @abstractmethod
    def cancel_job(self, job_id: str) -> None:
        """Stop the training `job_id` (nothing when it has ended or is unknown)."""

    @abstractmethod
    def load_adapter(self, checkpoint: common_pb2.CheckpointRef, on_status: StatusCallback) -> student_pb2.AdapterInfo:
        """Load `checkpoint` under its version on every student replica and make it current there."""

    @abstractmethod
    def confirm_adapter(self, checkpoint: common_pb2.CheckpointRef | None, on_status: StatusCallback) -> None:
        """Make sure every student replica serves `checkpoint` (None: the base model, nothing loaded
        needed), loading it where it is missing (a replica restarted or added since)."""
