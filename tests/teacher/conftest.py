"""Fixtures of the teacher's integration tests: a real household environment server on loopback port 0,
failed trajectories played through its client, and teacher servers talking real gRPC to it."""

from __future__ import annotations

import random

import pytest

from leap.v1 import common_pb2
from services.environment.client import EnvironmentClient
from services.environment.server import EnvironmentServer, make_backends
from services.runtime.config import ServerConfig
from services.teacher.backends.oracle import OracleTeacher
from services.teacher.client import TeacherClient
from services.teacher.privileged import GrpcPrivilegedSource
from services.teacher.server import start_in_process
from services.teacher.service import TeacherService
from tests.teacher.household import InProcessExperts, random_failure

TOKEN = "teacher-test-token"
FAILED_TRAJECTORIES = 200
HORIZON = 12


@pytest.fixture(scope="session")
def environment():
    server = EnvironmentServer(ServerConfig(port=0), make_backends(["household"]), token=TOKEN)
    server.start()
    yield server
    server.stop(grace=0)


@pytest.fixture(scope="session")
def env_addr(environment) -> str:
    return f"127.0.0.1:{environment.port}"


@pytest.fixture(scope="session")
def experts(environment) -> InProcessExperts:
    return InProcessExperts(environment.oracle)


class _ClientSessions:
    """random_failure's view of the environment client."""

    def __init__(self, client: EnvironmentClient):
        self.client = client

    def reset(self, task, horizon):
        reply = self.client.reset(task.env, task_id=task.task_id, horizon=horizon)
        return reply.session_id, reply.observation

    def step(self, session_id, action):
        return self.client.step(session_id, action)

    def close(self, session_id):
        self.client.close_session(session_id)


@pytest.fixture(scope="session")
def failed_trajectories(env_addr) -> list[common_pb2.Trajectory]:
    """200 failed trajectories of a noisy random student on training tasks, played over gRPC."""
    rng = random.Random(1234)
    failures = []
    with EnvironmentClient(env_addr) as client:
        sessions = _ClientSessions(client)
        for task in client.list_tasks("household", "train"):
            trajectory = random_failure(sessions, task.task, task.goal, rng, HORIZON)
            if trajectory is not None:
                trajectory.task_type = task.task_type
                failures.append(trajectory)
            if len(failures) == FAILED_TRAJECTORIES:
                break
    assert len(failures) == FAILED_TRAJECTORIES
    return failures


def start_teacher(backend, env_addr: str, *, token: str = TOKEN, max_steps: int = 100):
    service = TeacherService(backend, GrpcPrivilegedSource(env_addr, token, timeout_s=10), max_steps=max_steps)
    return start_in_process(service)


@pytest.fixture(scope="session")
def oracle_teacher(env_addr):
    host = start_teacher(OracleTeacher(), env_addr)
    client = TeacherClient(f"127.0.0.1:{host.port}")
    yield client
    client.close()
    host.stop(grace=0)
