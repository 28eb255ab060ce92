"""The environment service over real gRPC on loopback: sessions, errors, the token guard, robustness."""

from __future__ import annotations

import logging
import random
import re
import threading
import time

import grpc
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from leap.v1 import environment_pb2 as pb
from leap.v1 import environment_pb2_grpc as pb_grpc
from services.environment.backends.household import HouseholdBackend
from services.environment.client import EnvironmentClient, PrivilegedClient, task_ref
from services.environment.server import ENVIRONMENT_SERVICE, PRIVILEGED_SERVICE, EnvironmentServer
from services.runtime.config import ServerConfig
from tests.environment.server_helpers import code_of, served

TOKEN = "s3cret-token-for-tests"
BACKEND = HouseholdBackend()


def start(**kw) -> EnvironmentServer:
    server = EnvironmentServer(ServerConfig(port=0, max_message_bytes=1024 * 1024), {"household": BACKEND}, **kw)
    server.start()
    return server


server, env, oracle = served("household", TOKEN, max_sessions=256, timeout_s=10, backend=BACKEND,
                             max_message_bytes=1024 * 1024)


def raw(channel: grpc.Channel, service: str, method: str):
    return channel.unary_unary(f"/{service}/{method}", request_serializer=None, response_deserializer=None)


def test_lists_environments_and_pages_through_tasks(env):
    [info] = env.list_environments()
    assert info.name == "household" and info.version == "household 1.0" and info.default_horizon == 20
    assert list(info.splits) == ["train", "valid_seen", "valid_unseen"] and len(info.task_types) == 6
    tasks = list(env.list_tasks("household", "valid_seen", page_size=64))
    assert [t.task.task_id for t in tasks] == [f"valid_seen-{i:05d}" for i in range(200)]
    assert all(t.task.env == "household" and t.task.split == "valid_seen" and t.goal for t in tasks)


def test_parallel_sessions_from_several_threads(env, oracle):
    results, errors = [], []

    def play(k: int) -> None:
        try:
            for j in range(4):
                task_id = f"train-{k * 4 + j:05d}"
                plan = oracle.privileged_state(task_ref("household", task_id)).optimal_actions
                with env.session("household", task_id=task_id) as session:
                    for action in plan:
                        obs = session.step(action)
                    results.append((task_id, obs.won, obs.step == len(plan)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=play, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 32 and all(won and counted for _, won, counted in results)


def test_every_error_has_its_code(env):
    stub = env.stub
    assert code_of(env.step, "no-such-session", "look")[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(env.close_session, "no-such-session")[0] == grpc.StatusCode.NOT_FOUND
    code, details = code_of(env.reset, "nope", split="train")
    assert code == grpc.StatusCode.NOT_FOUND and "valid names: household" in details
    code, details = code_of(env.reset, "household", split="test")
    assert code == grpc.StatusCode.NOT_FOUND and "valid splits: train" in details
    code, details = code_of(env.reset, "household", task_id="train-99999")
    assert code == grpc.StatusCode.NOT_FOUND and "valid task ids" in details
    assert code_of(stub.ListTasks, pb.ListTasksRequest(env="household", split="train", page_token="zz"),
                   timeout=5)[0] == grpc.StatusCode.INVALID_ARGUMENT
    r = env.reset("household", split="train", seed=3, horizon=2)
    for action in ("", "  ", "x" * 5000):
        assert code_of(env.step, r.session_id, action)[0] == grpc.StatusCode.INVALID_ARGUMENT
    # Non-UTF-8 action: raw bytes through a generic call (a stub would refuse to encode them).
    body = pb.StepRequest(session_id=r.session_id, action="go").SerializeToString()[:-2] + b"\xc3\x28"
    code, details = code_of(raw(env.channel, ENVIRONMENT_SERVICE, "Step"), body, timeout=5)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "action is not valid UTF-8" in details
    env.step(r.session_id, "look")
    assert env.step(r.session_id, "look").done
    code, details = code_of(env.step, r.session_id, "look")
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "Reset a new one" in details
    env.close_session(r.session_id)


def test_session_limit_is_resource_exhausted():
    srv = start(max_sessions=2)
    try:
        with EnvironmentClient(f"127.0.0.1:{srv.port}", timeout_s=10) as env:
            first = env.reset("household", split="train")
            env.reset("household", split="train")
            code, details = code_of(env.reset, "household", split="train")
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit is 2" in details and "Close" in details
            env.close_session(first.session_id)
            env.reset("household", split="train")
    finally:
        srv.stop(grace=0)


def test_idle_sessions_are_evicted():
    srv = start(idle_ttl_s=0.3, reap_interval_s=0.05)
    try:
        with EnvironmentClient(f"127.0.0.1:{srv.port}", timeout_s=10) as env:
            r = env.reset("household", split="train")
            deadline = time.monotonic() + 10
            while srv.sessions.open_sessions and time.monotonic() < deadline:
                time.sleep(0.05)
            code, details = code_of(env.step, r.session_id, "look")
            assert code == grpc.StatusCode.NOT_FOUND and "idle" in details
    finally:
        srv.stop(grace=0)


def test_token_guard(server, oracle):
    task = task_ref("household", "train-00004")
    channel = oracle.channel
    stub = pb_grpc.PrivilegedServiceStub(channel)
    request = pb.PrivilegedStateRequest(task=task)
    code, details = code_of(stub.GetPrivilegedState, request, timeout=5)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
    for header in ("Basic abc", "Bearer", "bearer  "):
        assert code_of(stub.GetPrivilegedState, request, metadata=(("authorization", header),),
                       timeout=5)[0] == grpc.StatusCode.UNAUTHENTICATED
    for wrong in ("wrong", TOKEN + "x", TOKEN[:-1]):
        assert code_of(stub.GetPrivilegedState, request, metadata=(("authorization", f"Bearer {wrong}"),),
                       timeout=5)[0] == grpc.StatusCode.PERMISSION_DENIED
    # Every method is guarded, even with a body that would not parse.
    for method in ("GetPrivilegedState", "GetExpertActions", "GetDemonstration"):
        assert code_of(raw(channel, PRIVILEGED_SERVICE, method), b"\xff\xff", timeout=5)[0] == \
            grpc.StatusCode.UNAUTHENTICATED
    state = oracle.privileged_state(task)
    assert state.optimal_actions and state.secrets and state.goal
    assert stub.GetPrivilegedState(request, metadata=(("authorization", f"bearer {TOKEN}"),), timeout=5).goal


def test_privileged_calls(oracle):
    task = task_ref("household", "train-00002")
    advice = oracle.expert_actions(task, [], "searcher")
    assert advice.next_action == advice.plan[0] and advice.rationale and not advice.already_won
    demo = oracle.demonstration(task, "prior_searcher")
    assert demo.won and demo.agent == "prior_searching_expert" and all(s.reason for s in demo.steps)
    assert demo.metadata["engine"] == "household 1.0" and demo.task.task_id == "train-00002"
    code, details = code_of(oracle.expert_actions, task, [], 99)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "EXPERT_KIND_PLANNER" in details
    code, details = code_of(oracle.expert_actions, task, [], 0)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unspecified" in details
    assert code_of(oracle.privileged_state, task_ref("household", "train-99999"))[0] == grpc.StatusCode.NOT_FOUND


def test_without_a_token_the_privileged_service_does_not_exist(caplog):
    with caplog.at_level(logging.WARNING, logger="leap.environment"):
        srv = start(token=None)
    assert "PrivilegedService is not served: no privileged token" in caplog.text
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = pb_grpc.PrivilegedServiceStub(channel)
            request = pb.PrivilegedStateRequest(task=task_ref("household", "train-00001"))
            assert code_of(stub.GetPrivilegedState, request, metadata=(("authorization", "Bearer x"),),
                           timeout=5)[0] == grpc.StatusCode.UNIMPLEMENTED
            assert PRIVILEGED_SERVICE not in _reflected(channel)
        assert srv.privileged_port is None
    finally:
        srv.stop(grace=0)


def test_privileged_service_on_its_own_port():
    srv = start(token=TOKEN, privileged_port=0)
    try:
        assert srv.privileged_port and srv.privileged_port != srv.port
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            request = pb.PrivilegedStateRequest(task=task_ref("household", "train-00001"))
            code, _ = code_of(pb_grpc.PrivilegedServiceStub(channel).GetPrivilegedState, request,
                              metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5)
            assert code == grpc.StatusCode.UNIMPLEMENTED
        with PrivilegedClient(f"127.0.0.1:{srv.privileged_port}", TOKEN) as oracle:
            assert oracle.privileged_state(task_ref("household", "train-00001")).optimal_actions
            code = code_of(pb_grpc.EnvironmentServiceStub(oracle.channel).ListEnvironments,
                           pb.ListEnvironmentsRequest(), timeout=5)[0]
            assert code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        srv.stop(grace=0)


def test_server_survives_garbage(server, env):
    rng = random.Random(5)
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    methods = [(ENVIRONMENT_SERVICE, m) for m in ("ListEnvironments", "ListTasks", "Reset", "Step", "Close")]
    methods += [(PRIVILEGED_SERVICE, m) for m in ("GetPrivilegedState", "GetExpertActions", "GetDemonstration")]
    for service, method in methods:
        call = raw(env.channel, service, method)
        if method != "ListEnvironments":  # its request has no fields: little to get wrong
            code, details = code_of(call, b"\xff\xff\xff\xff", metadata=metadata, timeout=5)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid leap.v1." in details
        for _ in range(25):
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            try:
                call(blob, metadata=metadata, timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (method, blob, exc)
    assert env.list_environments()[0].name == "household"
    with env.session("household", split="train", seed=1) as session:
        assert session.step("look").step == 1


def _reflected(channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    return {s.name for r in responses for s in r.list_services_response.service}


def test_reflection_and_health(env):
    assert {ENVIRONMENT_SERVICE, PRIVILEGED_SERVICE, "grpc.health.v1.Health"} <= _reflected(env.channel)
    health = health_pb2_grpc.HealthStub(env.channel)
    for name in ("", ENVIRONMENT_SERVICE, PRIVILEGED_SERVICE):
        assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_no_privileged_fact_in_environment_messages(env, oracle):
    """Along the planner's path (straight to hidden objects), no response of EnvironmentService names a
    hidden object or quotes a hidden fact before the agent has seen it."""

    def hidden_after(task_id, actions):
        objects = set(BACKEND.scene(task_id).objects)
        secrets = oracle.privileged_state(task_ref("household", task_id), actions).secrets
        return [s for s in secrets if s in objects or " is " in s]

    def shows(message, secret):
        text = text_format.MessageToString(message, as_utf8=True)
        return re.search(r"(?<![\w])" + re.escape(secret) + r"(?![\w])", text) is not None

    for k in range(12):
        task_id = f"valid_unseen-{k:05d}"
        reset = env.reset("household", task_id=task_id)
        assert not any(shows(reset, s) for s in hidden_after(task_id, []))
        actions: list[str] = []
        for action in oracle.privileged_state(task_ref("household", task_id)).optimal_actions:
            obs = env.step(reset.session_id, action)
            actions.append(action)
            assert not any(shows(obs, s) for s in hidden_after(task_id, actions)), (task_id, actions)
        assert obs.won
        env.close_session(reset.session_id)


def test_gym_wrapper(server, oracle):
    from services.environment.gym_env import RemoteTextEnv, register

    gym_env = RemoteTextEnv(f"127.0.0.1:{server.port}", split="train")
    try:
        text, info = gym_env.reset(seed=7)
        assert gym_env.observation_space.contains(text) and info["task_id"] == "train-00007" and info["candidates"]
        plan = oracle.privileged_state(task_ref("household", "train-00007")).optimal_actions
        for action in plan:
            text, reward, terminated, truncated, info = gym_env.step(action)
        assert terminated and not truncated and reward == 1.0 and info["won"]
        text, info = gym_env.reset(options={"task_id": "valid_seen-00003", "horizon": 1})
        _, _, terminated, truncated, _ = gym_env.step("look")
        assert truncated and not terminated
    finally:
        gym_env.close()
    assert register() == "leap/Household-v0"
