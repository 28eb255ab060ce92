"""The teacher's access to privileged state: the environment's PrivilegedService over gRPC.

Only the teacher talks to PrivilegedService; callers of the teacher never send privileged state.
Downstream failures become errors a teacher's caller can act on:
UNAVAILABLE (environment down, naming its address), NOT_FOUND (unknown task, the environment's
message), FAILED_PRECONDITION (the teacher's token was refused: a deployment mistake), and the
environment's own code for anything else.
"""

from __future__ import annotations

import threading
from typing import Protocol, Sequence

import grpc

from leap.v1 import common_pb2
from leap.v1 import environment_pb2 as env_pb
from services.environment.client import PrivilegedClient
from services.runtime.deadline import NO_DEADLINE, Deadline
from services.runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.runtime.experts import EXPERT_KINDS, expert_names


def offered_experts(state: env_pb.PrivilegedState) -> tuple[str, ...]:
    """The expert names the environment of a privileged state offers (empty: it did not say)."""
    return expert_names(state.experts)


class PrivilegedSource(Protocol):
    """Where the teacher gets privileged state and expert actions (gRPC in production, fakes in tests)."""

    address: str

    def state(self, task: common_pb2.TaskRef, actions: Sequence[str] = (), *,
              deadline: Deadline = NO_DEADLINE) -> env_pb.PrivilegedState: ...

    def expert(self, task: common_pb2.TaskRef, actions: Sequence[str], expert: str, *,
               deadline: Deadline = NO_DEADLINE) -> env_pb.ExpertActionsResponse: ...

    def demonstration(self, task: common_pb2.TaskRef, expert: str, horizon: int = 0, *,
                      deadline: Deadline = NO_DEADLINE) -> common_pb2.Trajectory: ...

    def close(self) -> None: ...


class GrpcPrivilegedSource:
    """PrivilegedService at `address` (the environment's PrivilegedClient), with the bearer `token`.

    The channel is opened on first use, so a teacher starts (and reports its own health) even while
    the environment is not up yet; calls then fail with UNAVAILABLE naming the address."""

    def __init__(self, address: str, token: str, *, timeout_s: float = 30.0):
        if not address:
            raise ValueError("the environment address is empty; set --env-addr or LEAP_ENV_ADDR")
        self.address = address
        self._token = token
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._client: PrivilegedClient | None = None

    def _get_client(self) -> PrivilegedClient:
        with self._lock:
            if self._client is None:
                self._client = PrivilegedClient(self.address, self._token, timeout_s=self._timeout_s)
            return self._client

    def _timeout(self, deadline: Deadline) -> float:
        remaining = deadline.remaining()
        if remaining is None:
            return self._timeout_s
        if remaining <= 0:
            raise DeadlineExceeded("deadline exceeded before the environment could be asked")
        return min(self._timeout_s, remaining)

    def state(self, task, actions=(), *, deadline: Deadline = NO_DEADLINE) -> env_pb.PrivilegedState:
        client = self._get_client()
        try:
            return client.privileged_state(task, list(actions), timeout_s=self._timeout(deadline))
        except grpc.RpcError as exc:
            raise translate_environment_error(exc, self.address, "GetPrivilegedState") from None

    def expert(self, task, actions, expert: str, *, deadline: Deadline = NO_DEADLINE) -> env_pb.ExpertActionsResponse:
        if expert not in EXPERT_KINDS:
            raise ValueError(f"unknown expert {expert!r}; valid: {', '.join(EXPERT_KINDS)}")
        client = self._get_client()
        try:
            return client.expert_actions(task, list(actions), EXPERT_KINDS[expert], timeout_s=self._timeout(deadline))
        except grpc.RpcError as exc:
            raise translate_environment_error(exc, self.address, "GetExpertActions") from None

    def demonstration(self, task, expert: str, horizon: int = 0, *,
                      deadline: Deadline = NO_DEADLINE) -> common_pb2.Trajectory:
        if expert not in EXPERT_KINDS:
            raise ValueError(f"unknown expert {expert!r}; valid: {', '.join(EXPERT_KINDS)}")
        client = self._get_client()
        try:
            return client.demonstration(task, EXPERT_KINDS[expert], horizon, timeout_s=self._timeout(deadline))
        except grpc.RpcError as exc:
            raise translate_environment_error(exc, self.address, "GetDemonstration") from None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None


def translate_environment_error(exc: grpc.RpcError, address: str, method: str) -> ServiceError:
    """A downstream gRPC error of the environment as the error the teacher's caller should see."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or str(exc)
    where = f"the environment service at {address}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"{where} is unreachable ({method}: {details}); check --env-addr / LEAP_ENV_ADDR "
                           "and that the environment is running")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return FailedPrecondition(f"{where} refused the teacher's privileged token ({details}); "
                                  "set --privileged-token / LEAP_PRIVILEGED_TOKEN to the environment's token")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{where} did not answer {method} in time")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return InvalidArgument(f"{where} rejected the trajectory: {details}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(f"{where}: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(f"{where} is overloaded: {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return FailedPrecondition(f"{where} does not serve PrivilegedService.{method}: {details}")
    return Internal(f"{where} failed in {method} ({code.name if code else 'unknown'}): {details}")
