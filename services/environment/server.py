"""gRPC servicers of the environment: EnvironmentService (agents) and PrivilegedService (the teacher).

Each RPC is a few lines of translation to service.py; errors are raised, and the shared runtime
interceptor turns them into status codes.

Two things happen before a servicer method runs, in the handler table built by `_add_service`
(the same for every method of a service, so no method can forget them):

1. PrivilegedService only: the bearer token check. Metadata `authorization: Bearer <token>` is
   required; missing or malformed -> UNAUTHENTICATED, wrong -> PERMISSION_DENIED (constant-time
   comparison). It runs before the request is even parsed. Without a configured token the
   PrivilegedService is not registered at all (calls get UNIMPLEMENTED), so privileged data cannot be
   reached without the token.
2. Request parsing: requests arrive as raw bytes and are parsed here, after the guard, with the
   runtime's `parse_request` (the one every service uses): a malformed message, a string that is not
   UTF-8 or an undefined enum number becomes INVALID_ARGUMENT naming the field, instead of grpc's
   generic INTERNAL "Exception deserializing request!".

`EnvironmentServer` hosts both on one port, or PrivilegedService on its own port (so a Kubernetes
NetworkPolicy can let only the teacher reach it).
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
from typing import Any, Callable, Mapping

import grpc
from google.protobuf.message_factory import GetMessageClass

from leap.v1 import environment_pb2 as pb
from leap.v1 import environment_pb2_grpc as pb_grpc
from services.environment import convert
from services.environment.backends import Backend
from services.environment.service import EnvironmentSessions, PrivilegedOracle
from services.runtime import experts
from services.runtime.config import ServerConfig
from services.runtime.errors import InvalidArgument, PermissionDenied, Unauthenticated
from services.runtime.messages import parse_request
from services.runtime.server import Registration, ServiceHost

log = logging.getLogger("leap.environment")

ENVIRONMENT_SERVICE = pb.DESCRIPTOR.services_by_name["EnvironmentService"].full_name
PRIVILEGED_SERVICE = pb.DESCRIPTOR.services_by_name["PrivilegedService"].full_name


# --- servicers ------------------------------------------------------------------------------------------

class EnvironmentServicer(pb_grpc.EnvironmentServiceServicer):
    """The agent-facing service. Nothing it returns is privileged: observations, candidates, goals."""

    def __init__(self, sessions: EnvironmentSessions):
        self.sessions = sessions

    def ListEnvironments(self, request, context):
        return pb.ListEnvironmentsResponse(
            environments=[convert.environment_info(spec) for spec in self.sessions.list_environments()])

    def ListTasks(self, request, context):
        page = self.sessions.list_tasks(request.env, request.split, request.page_size, request.page_token,
                                        request.offset)
        return pb.ListTasksResponse(tasks=[convert.task_info(request.env, t) for t in page.tasks],
                                    next_page_token=page.next_page_token, total=page.total, offset=page.offset)

    def Reset(self, request, context):
        result = self.sessions.reset(request.env, request.task_id, request.split, request.seed, request.horizon)
        return pb.ResetResponse(session_id=result.session_id, task=convert.task_info(request.env, result.task),
                                observation=convert.observation(result.observation))

    def Step(self, request, context):
        return pb.StepResponse(observation=convert.observation(self.sessions.step(request.session_id, request.action)))

    def Close(self, request, context):
        summary = self.sessions.close(request.session_id)
        return pb.CloseResponse(steps=summary.steps, won=summary.won, score=summary.score)


def _expert(kind: int) -> str:
    name = experts.expert_name(kind)
    if not name and kind != pb.EXPERT_KIND_UNSPECIFIED:
        valid = ", ".join(pb.ExpertKind.Name(k) for k in experts.EXPERT_NAMES)
        raise InvalidArgument(f"unknown expert kind {kind}; valid kinds: {valid}")
    return name


class PrivilegedServicer(pb_grpc.PrivilegedServiceServicer):
    """The teacher-only service. Registered only behind the token guard (see `_add_service`)."""

    def __init__(self, oracle: PrivilegedOracle):
        self.oracle = oracle

    def GetPrivilegedState(self, request, context):
        task = request.task
        info = self.oracle.privileged_state(task.env, task.task_id, task.split, list(request.actions))
        return convert.privileged_state(task.env, info, self.oracle.experts(task.env))

    def GetExpertActions(self, request, context):
        task = request.task
        advice = self.oracle.expert_advice(task.env, task.task_id, task.split, list(request.actions),
                                           _expert(request.expert))
        return convert.expert_actions(advice)

    def GetDemonstration(self, request, context):
        task = request.task
        demo = self.oracle.demonstration(task.env, task.task_id, task.split, _expert(request.expert),
                                         request.horizon)
        return convert.trajectory(task.env, demo)


# --- the token guard ------------------------------------------------------------------------------------

class TokenGuard:
    """Checks `authorization: Bearer <token>` call metadata in constant time."""

    def __init__(self, token: str):
        if not token or not token.strip():
            raise ValueError("the privileged token is empty")
        self._token = token.strip().encode("utf-8")

    def check(self, context: grpc.ServicerContext) -> None:
        values = [value for key, value in (context.invocation_metadata() or ()) if key.lower() == "authorization"]
        if not values:
            raise Unauthenticated("the privileged service needs the metadata 'authorization: Bearer <token>' "
                                  "(the teacher's --privileged-token)")
        value = values[0].decode("utf-8", "replace") if isinstance(values[0], bytes) else values[0]
        scheme, _, credential = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise Unauthenticated("the authorization metadata must read 'Bearer <token>'")
        if not hmac.compare_digest(credential.strip().encode("utf-8"), self._token):
            raise PermissionDenied("the privileged token is wrong")


# --- request parsing ------------------------------------------------------------------------------------
# `parse_request` (services.runtime.messages) is shared by every service; here it runs after the token
# guard, so that nothing of an unauthenticated request is even parsed.


def _add_service(service_name: str, servicer: Any, server: grpc.Server, guard: TokenGuard | None = None) -> None:
    """Register every method of a leap.v1 service: (guard ->) parse -> servicer method."""
    service = pb.DESCRIPTOR.services_by_name[service_name.rpartition(".")[2]]
    handlers = {}
    for method in service.methods:
        request_cls = GetMessageClass(method.input_type)
        response_cls = GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name)

        def handle(raw: bytes, context, _cls=request_cls, _behaviour=behaviour):
            if guard is not None:
                guard.check(context)
            return _behaviour(parse_request(_cls, raw), context)

        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=None, response_serializer=response_cls.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
    server.add_registered_method_handlers(service_name, handlers)


def environment_registration(sessions: EnvironmentSessions) -> Registration:
    return Registration(ENVIRONMENT_SERVICE,
                        lambda servicer, server: _add_service(ENVIRONMENT_SERVICE, servicer, server),
                        EnvironmentServicer(sessions))


def privileged_registration(oracle: PrivilegedOracle, token: str) -> Registration:
    guard = TokenGuard(token)
    return Registration(PRIVILEGED_SERVICE,
                        lambda servicer, server: _add_service(PRIVILEGED_SERVICE, servicer, server, guard),
                        PrivilegedServicer(oracle))


# --- hosting --------------------------------------------------------------------------------------------

class EnvironmentServer:
    """EnvironmentService (+ PrivilegedService when a token is given) over the shared runtime.

    privileged_port: None serves PrivilegedService on the same server as EnvironmentService; a number
    serves it on its own server at that port (0 picks a free one).
    """

    def __init__(self, config: ServerConfig, backends: Mapping[str, Backend], *, token: str | None = None,
                 privileged_port: int | None = None, max_sessions: int = 1024, idle_ttl_s: float = 900.0,
                 reap_interval_s: float | None = None, label: str = "environment"):
        self.backends = dict(backends)
        self.sessions = EnvironmentSessions(self.backends, max_sessions=max_sessions, idle_ttl_s=idle_ttl_s,
                                            reap_interval_s=reap_interval_s)
        self.oracle = PrivilegedOracle(self.backends)
        self.token_configured = bool(token and token.strip())
        registrations = [environment_registration(self.sessions)]
        privileged = privileged_registration(self.oracle, token) if self.token_configured else None
        self.privileged_host: ServiceHost | None = None
        if privileged is not None and privileged_port is not None:
            own = dataclasses.replace(config, port=privileged_port, metrics_port=0, port_file="", health_port=0)
            self.privileged_host = ServiceHost(own, [privileged], label=f"{label}-privileged")
        elif privileged is not None:
            registrations.append(privileged)
        self.host = ServiceHost(config, registrations, label=label,
                                on_shutdown=[self._shutdown_privileged, self.sessions.stop, self._close_backends])
        self.port: int | None = None
        self.privileged_port: int | None = None
        self._grace: float | None = None  # None: the configured grace period

    def start(self) -> int:
        """Bind and serve; returns the EnvironmentService port (privileged_port says where the other is)."""
        if self.privileged_host is not None:  # first, so that the main port file means "all ready"
            self.privileged_port = self.privileged_host.start()
        try:
            self.port = self.host.start()
        except BaseException:
            if self.privileged_host is not None:
                self.privileged_host.stop(grace=0)
            raise
        self.sessions.start_reaper()
        if not self.token_configured:
            log.warning("PrivilegedService is not served: no privileged token is configured "
                        "(--privileged-token, --privileged-token-file, LEAP_PRIVILEGED_TOKEN or "
                        "LEAP_PRIVILEGED_TOKEN_FILE)")
            self.privileged_port = None
        elif self.privileged_host is None:
            self.privileged_port = self.port
        if self.token_configured:
            log.info("PrivilegedService is served behind the bearer token",
                     extra={"privileged_port": self.privileged_port,
                            "same_server": self.privileged_host is None})
        return self.port

    def _shutdown_privileged(self) -> None:
        if self.privileged_host is not None:
            self.privileged_host.stop(self._grace)

    def _close_backends(self) -> None:
        for backend in self.backends.values():
            backend.close()

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (both ports), letting in-flight calls finish within `grace` seconds."""
        self._grace = grace
        self.host.stop(grace)

    def wait(self) -> None:
        self.host.wait()


def read_token(token: str | None, token_file: str | None, environ: Mapping[str, str]) -> str | None:
    """The privileged token: --privileged-token, else --privileged-token-file, else
    $LEAP_PRIVILEGED_TOKEN, else $LEAP_PRIVILEGED_TOKEN_FILE; None when none is set."""
    if token and token_file:
        raise ValueError("give either --privileged-token or --privileged-token-file, not both")
    if not token and not token_file:
        token = environ.get("LEAP_PRIVILEGED_TOKEN") or None
        token_file = None if token else (environ.get("LEAP_PRIVILEGED_TOKEN_FILE") or None)
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the privileged token file {token_file}: {exc.strerror}") from None
        if not token:
            raise ValueError(f"the privileged token file {token_file} is empty")
    if token is not None and not token.strip():
        raise ValueError("the privileged token is empty")
    return token.strip() if token else None


def make_backends(names: list[str], options: Mapping[str, Mapping[str, str]] | None = None,
                  create: Callable[..., Backend] | None = None) -> dict[str, Backend]:
    """Backends by name, each created with its own options."""
    from services.environment import backends as registry

    create = create or registry.create
    return {name: create(name, **dict((options or {}).get(name, {}))) for name in names}
