"""gRPC servicer of leap.v1.StudentService: message translation only; logic lives in service.py.

Health: the service registers NOT_SERVING and flips to SERVING once the model has loaded
(`on_start`), so Kubernetes readiness probes hold traffic back while weights load. With a desired
adapter follower (services.student.desired_adapter), SERVING waits for the recorded adapter too, and
Act answers UNAVAILABLE until then (a retryable code: the caller's channel tries another replica).
A backend that can lose its model while serving (a remote inference server) is probed every
`health_interval` seconds, and the service reports NOT_SERVING while the probe fails.

Act and LoadAdapter run on handler pools of their own (services.runtime.server long calls), so held
Acts never keep Health, GetModelInfo or ListAdapters waiting. A cancelled Act (the client cancelled,
or went away) drops its rows from the scheduler.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from leap.v1 import common_pb2, student_pb2, student_pb2_grpc
from services.runtime.config import ServerConfig
from services.runtime.deadline import Deadline
from services.runtime.errors import InvalidArgument, Unavailable
from services.runtime.server import Registration, ServiceHost, serve_forever
from services.student.prompts import HistoryTurn
from services.student.service import CallCancellation, StudentService, item_size_problem
from services.student.types import ActInput, AdapterStatus, CheckpointSpec

log = logging.getLogger("leap.student.server")

SERVICE_NAME = student_pb2.DESCRIPTOR.services_by_name["StudentService"].full_name
#: LoadAdapter calls handled at once (loads are serialised anyway; the rest wait in their pool's queue).
LOAD_ADAPTER_THREADS = 4


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
    def __init__(self, service: StudentService, accepting: threading.Event | None = None):
        self.service = service
        # Set once the replica serves its desired adapter (None: no follower, nothing to wait for).
        self.accepting = accepting

    def Act(self, request, context):
        if self.accepting is not None and not self.accepting.is_set():
            raise Unavailable("this replica is still loading its desired adapter; retry (another replica may answer)")
        cancellation = CallCancellation()
        if not context.add_callback(cancellation.cancel):  # runs when the call ends, cancelled or not
            cancellation.cancel()  # the call has already ended
        for index, item in enumerate(request.items[:self.service.limits.max_items]):  # before converting them
            problem = item_size_problem(item)
            if problem is not None:
                raise InvalidArgument(f"item {index}: {problem}")
        outputs = self.service.act([item_from_pb(i) for i in request.items], Deadline.from_context(context),
                                   cancellation)
        return student_pb2.ActResponse(results=[
            student_pb2.ActResult(
                request_id=o.request_id, reason=o.reason, action=o.action, raw_output=o.raw_output,
                action_valid=o.action_valid, adapter_version=o.adapter_version, prompt_tokens=o.prompt_tokens,
                completion_token_ids=o.completion_token_ids, batch_size=o.batch_size,
                cached_prompt_tokens=o.cached_prompt_tokens, reason_cut=o.reason_cut)
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


def registrations(service: StudentService, accepting: threading.Event | None = None) -> list[Registration]:
    """The student service, NOT_SERVING until `load_and_mark_serving` has loaded the model."""
    return [Registration(SERVICE_NAME, student_pb2_grpc.add_StudentServiceServicer_to_server,
                         StudentServicer(service, accepting), serving=service.ready and accepting is None,
                         long_calls={"Act": service.limits.act_workers, "LoadAdapter": LOAD_ADAPTER_THREADS})]


def watch_backend_health(service: StudentService, host: ServiceHost, interval: float) -> None:
    """Report NOT_SERVING while the backend's health probe fails, SERVING again once it passes."""
    serving = True
    while not service.closed.wait(interval):
        try:
            healthy = service.check_health()
        except Exception:  # noqa: BLE001 - a probe that cannot run is a failed probe
            log.exception("the backend health probe failed to run")
            healthy = False
        if healthy != serving:
            serving = healthy
            host.set_serving(SERVICE_NAME, healthy)
            (log.info if healthy else log.warning)(
                "backend healthy again: SERVING" if healthy else "backend unhealthy: NOT_SERVING")


@dataclass
class StartupState:
    """How the background model load went (for the process exit code and for tests)."""

    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


def load_and_mark_serving(service: StudentService, host: ServiceHost, state: StartupState | None = None,
                          follower=None, accepting: threading.Event | None = None) -> None:
    """Load the model (and the desired adapter, with a follower), then report SERVING.

    On failure, log it and stop the server (exit code 1). A desired adapter that cannot be loaded yet
    is retried: the replica stays NOT_SERVING meanwhile, and Kubernetes' startup probe decides when
    to give up on it.
    """
    state = state or StartupState()
    try:
        service.start()
        if follower is not None:
            if not follower.wait_until_synced():
                return  # stopped while waiting (shutdown)
            follower.start()
        if accepting is not None:
            accepting.set()
        host.set_serving(SERVICE_NAME, True)
        interval = service.backend.health_interval
        if interval > 0:
            threading.Thread(target=watch_backend_health, args=(service, host, interval), daemon=True,
                             name="student-health").start()
    except BaseException as exc:  # noqa: BLE001 - a server that cannot load its model must not linger
        state.error = exc
        log.exception("the student model could not be loaded; stopping")
        threading.Thread(target=host.stop, kwargs={"grace": 0}, daemon=True).start()
    finally:
        state.done.set()


def start_in_background(service: StudentService, config: ServerConfig,
                        follower=None) -> tuple[ServiceHost, StartupState]:
    """Start a host now (NOT_SERVING) and load the model on a thread; for tests and embedding."""
    accepting = threading.Event() if follower is not None else None
    hooks = ([follower.stop] if follower is not None else []) + [service.close]
    host = ServiceHost(config, registrations(service, accepting), label="student", on_shutdown=hooks)
    host.start()
    state = StartupState()
    threading.Thread(target=load_and_mark_serving, args=(service, host, state, follower, accepting), daemon=True,
                     name="student-startup").start()
    return host, state


def serve(service: StudentService, config: ServerConfig, follower=None) -> int:
    """Serve until SIGTERM; the model loads in the background while health says NOT_SERVING.

    `follower`: a services.student.desired_adapter.DesiredAdapterFollower (None: adapters come
    through LoadAdapter only)."""
    state = StartupState()
    accepting = threading.Event() if follower is not None else None
    hooks = ([follower.stop] if follower is not None else []) + [service.close]
    # serve_forever returns only after the shutdown hooks ran (service.close stops the decode thread).
    serve_forever(config, registrations(service, accepting), label="student",
                  on_start=lambda host: load_and_mark_serving(service, host, state, follower, accepting),
                  on_shutdown=hooks)
    return 1 if state.error is not None else 0


__all__ = ["SERVICE_NAME", "StudentServicer", "registrations", "serve", "start_in_background"]
