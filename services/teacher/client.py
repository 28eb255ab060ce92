"""A small typed client of the teacher service (no torch, no heavy imports)."""

from __future__ import annotations

import grpc

from leap.v1 import common_pb2
from leap.v1 import environment_pb2 as env_pb
from leap.v1 import teacher_pb2 as pb
from leap.v1 import teacher_pb2_grpc as pb_grpc
from services.runtime.channels import make_channel
from services.runtime.tls import ClientTLS

_EXPERTS = {
    "searcher": env_pb.EXPERT_KIND_SEARCHER,
    "prior_searcher": env_pb.EXPERT_KIND_PRIOR_SEARCHER,
    "planner": env_pb.EXPERT_KIND_PLANNER,
}


class TeacherClient:
    """    with TeacherClient("localhost:50071") as teacher:
        correction = teacher.correct(trajectory, level=50)
    """

    def __init__(self, address: str, *, timeout_s: float = 600.0, channel: grpc.Channel | None = None,
                 tls: ClientTLS | None = None):
        self.address = address
        self.timeout_s = timeout_s
        self._own_channel = channel is None
        self._channel = channel or make_channel(address, tls=tls, side_effect_free=True)
        self._stub = pb_grpc.TeacherServiceStub(self._channel)

    def correct(self, trajectory: common_pb2.Trajectory, *, level: int | None = None, max_retries: int = 0,
                temperature: float = 0.0, timeout_s: float | None = None) -> pb.Correction:
        """Corrections of every step of `trajectory` (Correction.ok is False when the teacher failed).

        level: a realizability level (0, 25, 50, 75, 100); None leaves it to the server (50)."""
        options = pb.CorrectionOptions(max_retries=max_retries, temperature=temperature)
        if level is not None:
            options.realizability_level = level
        request = pb.CorrectRequest(trajectory=trajectory, options=options)
        return self._stub.Correct(request, timeout=timeout_s or self.timeout_s)

    def annotate(self, demonstration: common_pb2.Trajectory, *, timeout_s: float | None = None) -> pb.Annotation:
        """One reason per step of an expert demonstration."""
        return self._stub.Annotate(pb.AnnotateRequest(demonstration=demonstration), timeout=timeout_s or self.timeout_s)

    def demonstrate(self, task: common_pb2.TaskRef, *, expert: str = "searcher", horizon: int = 0,
                    annotate: bool = True, timeout_s: float | None = None) -> common_pb2.Trajectory:
        """An expert demonstration played by the environment, annotated with the teacher's reasons."""
        if expert not in _EXPERTS:
            raise ValueError(f"unknown expert {expert!r}; valid: {', '.join(_EXPERTS)}")
        request = pb.DemonstrateRequest(task=task, expert=_EXPERTS[expert], horizon=horizon, annotate=annotate)
        return self._stub.Demonstrate(request, timeout=timeout_s or self.timeout_s)

    def info(self, *, timeout_s: float = 10.0) -> pb.TeacherInfo:
        return self._stub.GetTeacherInfo(pb.GetTeacherInfoRequest(), timeout=timeout_s)

    def close(self) -> None:
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> TeacherClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
