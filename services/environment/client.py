"""Torch-free clients of the environment service.

    with EnvironmentClient("127.0.0.1:50051") as env:
        for task in env.list_tasks("household", "valid_seen"):
            ...
        with env.session("household", task_id="train-00042") as session:
            obs = session.observation
            while not obs.done:
                obs = session.step(obs.candidates[0])

    with PrivilegedClient("127.0.0.1:50051", token) as oracle:     # the teacher only
        state = oracle.privileged_state(task_ref, actions)

Methods return the leap.v1 protobuf messages and raise grpc.RpcError with the server's status code
and message. Every call has a default timeout (override per client or per call). TLS: pass
`tls=ClientTLS(...)` (services.runtime.tls), or set it for the process (LEAP_TLS_* variables).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import grpc

from leap.v1 import common_pb2
from leap.v1 import environment_pb2 as pb
from leap.v1 import environment_pb2_grpc as pb_grpc
from services.runtime.channels import bearer, make_channel, wait_ready
from services.runtime.tls import ClientTLS

DEFAULT_TIMEOUT_S = 30.0
EXPERTS = {
    "planner": pb.EXPERT_KIND_PLANNER,
    "searcher": pb.EXPERT_KIND_SEARCHER,
    "prior_searcher": pb.EXPERT_KIND_PRIOR_SEARCHER,
}


class _Client:
    def __init__(self, address: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, channel: grpc.Channel | None = None,
                 tls: ClientTLS | None = None):
        self.address = address
        self.timeout_s = timeout_s
        self._own_channel = channel is None
        self.channel = channel if channel is not None else make_channel(address, tls=tls)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the server is reachable (TimeoutError otherwise)."""
        wait_ready(self.channel, timeout_s)

    def _timeout(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Session:
    """One episode on the server; a context manager that Closes it on exit."""

    def __init__(self, client: "EnvironmentClient", reset: pb.ResetResponse):
        self.client = client
        self.id = reset.session_id
        self.task = reset.task
        self.observation = reset.observation
        self.closed = False

    def step(self, action: str, *, timeout_s: float | None = None) -> pb.Observation:
        self.observation = self.client.step(self.id, action, timeout_s=timeout_s)
        return self.observation

    def close(self) -> pb.CloseResponse | None:
        """Close the session (idempotent; returns the summary the first time)."""
        if self.closed:
            return None
        self.closed = True
        return self.client.close_session(self.id)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        except grpc.RpcError:
            if exc[0] is None:
                raise


class EnvironmentClient(_Client):
    """The agent-facing EnvironmentService."""

    def __init__(self, address: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, channel: grpc.Channel | None = None,
                 tls: ClientTLS | None = None):
        super().__init__(address, timeout_s=timeout_s, channel=channel, tls=tls)
        self.stub = pb_grpc.EnvironmentServiceStub(self.channel)

    def list_environments(self, *, timeout_s: float | None = None) -> list[pb.EnvironmentInfo]:
        response = self.stub.ListEnvironments(pb.ListEnvironmentsRequest(), timeout=self._timeout(timeout_s))
        return list(response.environments)

    def list_tasks(self, env: str, split: str, *, page_size: int = 1000,
                   timeout_s: float | None = None) -> Iterator[pb.TaskInfo]:
        """Every task of a split, in order (pages are fetched as the iteration goes)."""
        token = ""
        while True:
            page = self.stub.ListTasks(pb.ListTasksRequest(env=env, split=split, page_size=page_size, page_token=token),
                                       timeout=self._timeout(timeout_s))
            yield from page.tasks
            token = page.next_page_token
            if not token:
                return

    def reset(self, env: str, *, task_id: str = "", split: str = "", seed: int = 0, horizon: int = 0,
              timeout_s: float | None = None) -> pb.ResetResponse:
        return self.stub.Reset(pb.ResetRequest(env=env, task_id=task_id, split=split, seed=seed, horizon=horizon),
                               timeout=self._timeout(timeout_s))

    def step(self, session_id: str, action: str, *, timeout_s: float | None = None) -> pb.Observation:
        return self.stub.Step(pb.StepRequest(session_id=session_id, action=action),
                              timeout=self._timeout(timeout_s)).observation

    def close_session(self, session_id: str, *, timeout_s: float | None = None) -> pb.CloseResponse:
        return self.stub.Close(pb.CloseRequest(session_id=session_id), timeout=self._timeout(timeout_s))

    def session(self, env: str, *, task_id: str = "", split: str = "", seed: int = 0, horizon: int = 0,
                timeout_s: float | None = None) -> Session:
        """Reset a session; use it as a context manager so that it is Closed however the block ends."""
        return Session(self, self.reset(env, task_id=task_id, split=split, seed=seed, horizon=horizon,
                                        timeout_s=timeout_s))


def task_ref(env: str, task_id: str, split: str = "") -> common_pb2.TaskRef:
    return common_pb2.TaskRef(env=env, task_id=task_id, split=split)


def _expert_kind(expert: str | int) -> int:
    if isinstance(expert, int):
        return expert
    try:
        return EXPERTS[expert]
    except KeyError:
        raise ValueError(f"unknown expert {expert!r}; valid experts: {', '.join(EXPERTS)}") from None


class PrivilegedClient(_Client):
    """The teacher-only PrivilegedService; every call carries the bearer token."""

    def __init__(self, address: str, token: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 channel: grpc.Channel | None = None, tls: ClientTLS | None = None):
        super().__init__(address, timeout_s=timeout_s, channel=channel, tls=tls)
        self.stub = pb_grpc.PrivilegedServiceStub(self.channel)
        self._metadata = bearer(token)

    def privileged_state(self, task: common_pb2.TaskRef, actions: Sequence[str] = (), *,
                         timeout_s: float | None = None) -> pb.PrivilegedState:
        return self.stub.GetPrivilegedState(pb.PrivilegedStateRequest(task=task, actions=list(actions)),
                                            metadata=self._metadata, timeout=self._timeout(timeout_s))

    def expert_actions(self, task: common_pb2.TaskRef, actions: Sequence[str] = (),
                       expert: str | int = "planner", *, timeout_s: float | None = None) -> pb.ExpertActionsResponse:
        return self.stub.GetExpertActions(
            pb.ExpertActionsRequest(task=task, actions=list(actions), expert=_expert_kind(expert)),
            metadata=self._metadata, timeout=self._timeout(timeout_s))

    def demonstration(self, task: common_pb2.TaskRef, expert: str | int = "searcher", horizon: int = 0, *,
                      timeout_s: float | None = None) -> common_pb2.Trajectory:
        return self.stub.GetDemonstration(
            pb.DemonstrationRequest(task=task, expert=_expert_kind(expert), horizon=horizon),
            metadata=self._metadata, timeout=self._timeout(timeout_s))
