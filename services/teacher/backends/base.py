"""What every teacher backend implements, and how it is registered (`BackendSpec`).

The service does validation, privileged access and leak checks; a backend only corrects and annotates.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

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


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    return None


@dataclass(frozen=True)
class BackendSpec:
    """A teacher backend as the CLI, the config and `leap run` see it (services.teacher.backends registry).

    name           the value of --backend
    help           one line for --backend's help
    create(options, config)  the backend: `options` is what from_args returned, `config` the
                   teacher's TeacherConfig (shared settings such as max_steps)
    add_arguments(parser)    the backend's own flags (an argument group; every flag with LEAP_<FLAG>)
    from_args(args)          the backend's options from parsed flags (None when it has none)
    launch_args(teacher)     the flags `leap run` passes when it starts this teacher itself, from the
                   run config's `teacher` section (orchestrator.config.TeacherConfig)
    """

    name: str
    help: str
    create: Callable[[Any, Any], TeacherBackend]
    add_arguments: Callable[[argparse.ArgumentParser], None] = field(default=_no_arguments)
    from_args: Callable[[argparse.Namespace], Any] = field(default=lambda args: None)
    launch_args: Callable[[Any], list[str]] = field(default=lambda teacher: [])
