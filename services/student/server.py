"""gRPC servicer of leap.v1.StudentService: message translation only; logic lives in service.py.

Health: the service registers NOT_SERVING and flips to SERVING once the model has loaded
(`on_start`), so Kubernetes readiness probes hold traffic back while weights load.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from leap.v1 import common_pb2, student_pb2, student_pb2_grpc
from services.runtime.config import ServerConfig
from services.runtime.deadline import Deadline
from services.runtime.server import Registration, ServiceHost, serve_forever
from services.student.prompts import HistoryTurn
from services.student.service import StudentService
from services.student.types import ActInput, AdapterStatus, CheckpointSpec

log = logging.getLogger("leap.student.server")

SERVICE_NAME = student_pb2.DESCRIPTOR.services_by_name["StudentService"].full_name


# -- protobuf <-> plain ---------------------------------------------------------------------------

def item_from_pb(item: student_pb2.ActItem) -> ActInput:
    return ActInput(
        request_id=item.request_id, env=item.env, goal=item.goal,
        history=[HistoryTurn(h.observation, h.action) for h in item.history],
        observation=item.observation, candidates=list(item.candidates),
        temperature=item.sampling.temperature, max_new_tokens=item.sampling.max_new_tokens,
        seed=item.sampling.seed, top_p=item.sampling.top_p, adapter_version=item.adapter_version,
        constrain_action=item.sampling.constrain_action, max_reason_tokens=item.sampling.max_reason_tokens,
    )


def checkpoint_from_pb(ref: common_pb2.CheckpointRef) -> CheckpointSpec:
    return CheckpointSpec(name=ref.name, version=ref.version, uri=ref.uri, sha256=ref.sha256,
                          base_model=ref.base_model)


def checkpoint_to_pb(spec: CheckpointSpec | None) -> common_pb2.CheckpointRef | None:
    if spec is None:
        return None
    return common_pb2.CheckpointRef(name=spec.name, version=spec.version, uri=spec.uri, sha256=spec.sha256,
                                    base_model=spec.base_model)


def adapter_to_pb(status: AdapterStatus) -> student_pb2.AdapterInfo:
    return student_pb2.AdapterInfo(version=status.version, checkpoint=checkpoint_to_pb(status.checkpoint),
                                   current=status.current, in_flight=status.in_flight,
                                   load_seconds=status.load_seconds)


class StudentServicer(student_pb2_grpc.StudentServiceServicer):
    def __init__(self, service: StudentService):
        self.service = service

    def Act(self, request, context):
        outputs = self.service.act([item_from_pb(i) for i in request.items], Deadline.from_context(context))
        return student_pb2.ActResponse(results=[
            student_pb2.ActResult(
                request_id=o.request_id, reason=o.reason, action=o.action, raw_output=o.raw_output,
                action_valid=o.action_valid, adapter_version=o.adapter_version, prompt_tokens=o.prompt_tokens,
                completion_token_ids=o.completion_token_ids, batch_size=o.batch_size)
            for o in outputs])

    def LoadAdapter(self, request, context):
        status = self.service.load_adapter(checkpoint_from_pb(request.checkpoint), keep_current=request.keep_current)
        return adapter_to_pb(status)

    def UnloadAdapter(self, request, context):
        return adapter_to_pb(self.service.unload_adapter(request.version))

    def ListAdapters(self, request, context):
        current, statuses = self.service.list_adapters()
        return student_pb2.ListAdaptersResponse(current_version=current,
                                                adapters=[adapter_to_pb(s) for s in statuses])

    def GetModelInfo(self, request, context):
        d = self.service.model_info()
        return student_pb2.ModelInfo(
            base_model=d.base_model, backend=d.backend, device=d.device, dtype=d.dtype,
            supports_hot_swap=d.supports_hot_swap, supports_per_request_adapter=d.supports_per_request_adapter,
            max_batch_size=d.max_batch_size, max_prompt_tokens=d.max_prompt_tokens,
            current_version=d.current_version, supports_action_constraint=d.supports_action_constraint)


def registrations(service: StudentService) -> list[Registration]:
    """The student service, NOT_SERVING until `load_and_mark_serving` has loaded the model."""
    return [Registration(SERVICE_NAME, student_pb2_grpc.add_StudentServiceServicer_to_server,
                         StudentServicer(service), serving=service.ready)]


@dataclass
class StartupState:
    """How the background model load went (for the process exit code and for tests)."""

    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


def load_and_mark_serving(service: StudentService, host: ServiceHost, state: StartupState | None = None) -> None:
    """Load the model, then report SERVING. On failure, log it and stop the server (exit code 1)."""
    state = state or StartupState()
    try:
        service.start()
        host.set_serving(SERVICE_NAME, True)
    except BaseException as exc:  # noqa: BLE001 - a server that cannot load its model must not linger
        state.error = exc
        log.exception("the student model could not be loaded; stopping")
        threading.Thread(target=host.stop, kwargs={"grace": 0}, daemon=True).start()
    finally:
        state.done.set()


def start_in_background(service: StudentService, config: ServerConfig) -> tuple[ServiceHost, StartupState]:
    """Start a host now (NOT_SERVING) and load the model on a thread; for tests and embedding."""
    host = ServiceHost(config, registrations(service), label="student", on_shutdown=[service.close])
    host.start()
    state = StartupState()
    threading.Thread(target=load_and_mark_serving, args=(service, host, state), daemon=True,
                     name="student-startup").start()
    return host, state


def serve(service: StudentService, config: ServerConfig) -> int:
    """Serve until SIGTERM; the model loads in the background while health says NOT_SERVING."""
    state = StartupState()
    # serve_forever returns only after the shutdown hooks ran (service.close stops the decode thread).
    serve_forever(config, registrations(service), label="student",
                  on_start=lambda host: load_and_mark_serving(service, host, state),
                  on_shutdown=[service.close])
    return 1 if state.error is not None else 0


__all__ = ["SERVICE_NAME", "StudentServicer", "registrations", "serve", "start_in_background"]
