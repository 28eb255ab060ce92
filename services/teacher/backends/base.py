"""What every teacher backend implements; the service does validation, privileged access and leak checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from leap.v1 import common_pb2, environment_pb2
from services.runtime.deadline import Deadline
from services.teacher.privileged import PrivilegedSource
from services.teacher.types import AnnotationResult, CorrectionResult


@dataclass(frozen=True)
class CorrectionJob:
    """Everything a backend needs to correct one trajectory."""

    trajectory: common_pb2.Trajectory
    # Privileged state of the task at its initial state (the teacher's own fetch).
    privileged: environment_pb2.PrivilegedState
    level: int
    max_retries: int
    temperature: float
    deadline: Deadline


@dataclass(frozen=True)
class AnnotationJob:
    """Everything a backend needs to annotate one demonstration."""

    demonstration: common_pb2.Trajectory
    privileged: environment_pb2.PrivilegedState
    max_retries: int
    deadline: Deadline


class TeacherBackend(Protocol):
    """A teacher: corrections of failed trajectories and reasons for demonstrations."""

    name: str
    model: str

    def correct(self, job: CorrectionJob, source: PrivilegedSource) -> CorrectionResult: ...

    def annotate(self, job: AnnotationJob, source: PrivilegedSource) -> AnnotationResult: ...

    def close(self) -> None: ...
