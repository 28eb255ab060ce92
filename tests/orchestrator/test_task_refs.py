"""list_task_refs against a real environment server: it reads only the tasks it asks for."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest

from leap.v1 import environment_pb2_grpc
from orchestrator.episodes import LIST_PAGE_SIZE, list_task_refs
from services.environment.backends import create
from services.environment.server import EnvironmentServer
from services.runtime.config import ServerConfig


class CountingBackend:
    """The household backend, counting the tasks it is asked to build for a listing."""

    def __init__(self):
        self.inner = create("household")
        self.built: list[tuple[int, int]] = []

    def list_tasks(self, split, offset, limit):
        self.built.append((offset, limit))
        return self.inner.list_tasks(split, offset, limit)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def served():
    backend = CountingBackend()
    server = EnvironmentServer(ServerConfig(port=0), {"household": backend})
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield SimpleNamespace(env=environment_pb2_grpc.EnvironmentServiceStub(channel)), backend
    channel.close()
    server.host.stop(grace=0)


def test_tasks_start_at_the_offset_and_only_those_are_built(served):
    stubs, backend = served
    backend.built.clear()
    total = backend.num_tasks("train")
    refs = list_task_refs(stubs, "household", "train", total - 10, 10)
    assert [r.task_id for r in refs] == [f"train-{i:05d}" for i in range(total - 10, total)]
    # Pages of LIST_PAGE_SIZE from the offset on; nothing before the offset was listed.
    assert backend.built[0] == (total - 10, LIST_PAGE_SIZE)
    assert sum(limit for _offset, limit in backend.built) == 10
    assert min(offset for offset, _limit in backend.built) == total - 10


def test_a_split_too_small_names_the_config_keys(served):
    stubs, backend = served
    total = backend.num_tasks("valid_unseen")
    with pytest.raises(ValueError, match=rf"has only {total} tasks; asked for 2 from index {total - 1} "
                                         r"\(set environment.rollout_offset in the run config\)"):
        list_task_refs(stubs, "household", "valid_unseen", total - 1, 2, "environment.rollout_offset")


def test_pages_say_where_they_start(served):
    from leap.v1 import environment_pb2

    stubs, _backend = served
    first = stubs.env.ListTasks(environment_pb2.ListTasksRequest(env="household", split="train", page_size=3,
                                                                 offset=7), timeout=30)
    assert first.offset == 7 and first.tasks[0].task.task_id == "train-00007"
    second = stubs.env.ListTasks(environment_pb2.ListTasksRequest(env="household", split="train", page_size=3,
                                                                  page_token=first.next_page_token), timeout=30)
    assert second.offset == 10 and second.tasks[0].task.task_id == "train-00010"


class OffsetBlindServer(environment_pb2_grpc.EnvironmentServiceServicer):
    """An environment server from before ListTasksRequest.offset: it lists from the split's start."""

    def ListTasks(self, request, context):
        from leap.v1 import common_pb2, environment_pb2

        tasks = [environment_pb2.TaskInfo(task=common_pb2.TaskRef(task_id=f"train-{i:05d}"))
                 for i in range(request.page_size)]
        return environment_pb2.ListTasksResponse(tasks=tasks, total=500)


def test_a_server_that_ignores_the_offset_is_refused_not_trusted():
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    environment_pb2_grpc.add_EnvironmentServiceServicer_to_server(OffsetBlindServer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stubs = SimpleNamespace(env=environment_pb2_grpc.EnvironmentServiceStub(channel),
                            addresses={"environment": f"127.0.0.1:{port}"})
    try:
        # From the start of a split, an old server answers what a new one does.
        assert [r.task_id for r in list_task_refs(stubs, "household", "train", 0, 2)] == ["train-00000", "train-00001"]
        with pytest.raises(ValueError, match=r"ignored the offset 100 .* predates ListTasksRequest.offset"):
            list_task_refs(stubs, "household", "train", 100, 2)
    finally:
        channel.close()
        server.stop(0)
