"""gRPC servicer of the teacher: protobuf in, TeacherService call, protobuf out. Nothing else."""

from __future__ import annotations

from leap.v1 import common_pb2
from leap.v1 import teacher_pb2 as pb
from leap.v1 import teacher_pb2_grpc as pb_grpc
from services.runtime.config import ServerConfig
from services.runtime.deadline import Deadline
from services.runtime.experts import expert_name
from services.runtime.server import Registration, ServiceHost
from services.teacher.levels import DEFAULT_LEVEL
from services.teacher.service import TeacherService
from services.teacher.types import AnnotationResult, CorrectionResult, Usage

NAME = "leap.v1.TeacherService"


def usage_to_proto(usage: Usage) -> pb.Usage:
    return pb.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                    cost_usd=usage.cost_usd, calls=usage.calls)


def correction_to_proto(result: CorrectionResult) -> pb.Correction:
    return pb.Correction(
        ok=result.ok, error=result.error, summary=result.summary,
        steps=[pb.CorrectedStep(index=s.index, reason=s.reason, action=s.action, is_corrected=s.is_corrected,
                                original_action=s.original_action, original_reason=s.original_reason)
               for s in result.steps],
        usage=usage_to_proto(result.usage), teacher=result.teacher,
        realizability_level=result.realizability_level, attempts=result.attempts,
    )


def annotation_to_proto(result: AnnotationResult) -> pb.Annotation:
    return pb.Annotation(ok=result.ok, error=result.error, reasons=result.reasons, usage=usage_to_proto(result.usage))


class TeacherServicer(pb_grpc.TeacherServiceServicer):
    def __init__(self, service: TeacherService):
        self.service = service

    def Correct(self, request: pb.CorrectRequest, context) -> pb.Correction:
        options = request.options
        # An unset level is the default (50), not 0: proto3 `optional` tells the two apart.
        level = options.realizability_level if options.HasField("realizability_level") else DEFAULT_LEVEL
        return correction_to_proto(self.service.correct(
            request.trajectory, level=level, max_retries=options.max_retries,
            temperature=options.temperature, deadline=Deadline.from_context(context)))

    def Annotate(self, request: pb.AnnotateRequest, context) -> pb.Annotation:
        return annotation_to_proto(self.service.annotate(request.demonstration,
                                                         deadline=Deadline.from_context(context)))

    def Demonstrate(self, request: pb.DemonstrateRequest, context) -> common_pb2.Trajectory:
        return self.service.demonstrate(request.task, expert=expert_name(request.expert),
                                        horizon=request.horizon, annotate=request.annotate,
                                        deadline=Deadline.from_context(context))

    def GetTeacherInfo(self, request: pb.GetTeacherInfoRequest, context) -> pb.TeacherInfo:
        info = self.service.describe()
        return pb.TeacherInfo(backend=info.backend, model=info.model,
                              realizability_levels=list(info.realizability_levels), max_steps=info.max_steps)


def registrations(service: TeacherService, *, serving: bool = True) -> list[Registration]:
    return [Registration(NAME, pb_grpc.add_TeacherServiceServicer_to_server, TeacherServicer(service), serving)]


def start_in_process(service: TeacherService, config: ServerConfig | None = None) -> ServiceHost:
    """Serve `service` on a background server (port 0 by default) and return its host (tests, embedding)."""
    host = ServiceHost(config or ServerConfig(port=0), registrations(service), label="teacher",
                       on_shutdown=[service.close])
    host.start()
    return host
