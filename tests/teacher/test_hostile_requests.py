"""The teacher against a hostile or careless client, over real gRPC (a real household environment behind
it): clear INVALID_ARGUMENT for malformed input, never INTERNAL, and an unset level that means 50.

Findings of issue 20 covered here: 1 (a 5,000-digit task id through Correct and Demonstrate), 6 (bounded
echoes), 8 (garbage bytes answered with grpc's generic INTERNAL; Demonstrate(expert=999) answered
"expert UNSPECIFIED"; full-width digits in task ids), 9 (an unset realizability_level meant 0).
"""

from __future__ import annotations

import grpc
import pytest

from leap.v1 import common_pb2
from leap.v1 import environment_pb2 as env_pb
from leap.v1 import teacher_pb2 as pb
from leap.v1 import teacher_pb2_grpc as pb_grpc
from services.environment.client import EnvironmentClient
from services.teacher.backends.oracle import OracleTeacher
from tests.teacher.conftest import start_teacher

MAX_DETAILS = 2048


@pytest.fixture(scope="module")
def teacher_port(env_addr):
    host = start_teacher(OracleTeacher(), env_addr)
    yield host.port
    host.stop(grace=0)


@pytest.fixture(scope="module")
def channel(teacher_port):
    with grpc.insecure_channel(f"127.0.0.1:{teacher_port}") as ch:  # no retries: each status exactly once
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.TeacherServiceStub(channel)


@pytest.fixture(scope="module")
def trajectory(env_addr) -> common_pb2.Trajectory:
    """Four steps of a student that keeps choosing the last candidate, played over gRPC."""
    with EnvironmentClient(env_addr) as env, env.session("household", task_id="train-00011") as session:
        t = common_pb2.Trajectory(task=session.task.task, goal=session.task.goal, task_type=session.task.task_type)
        obs = session.observation
        for i in range(4):
            action = obs.candidates[-1]
            after = session.step(action)
            t.steps.add(index=i, observation=obs.text, candidates=list(obs.candidates), action=action,
                        action_valid=after.last_action_valid, next_observation=after.text)
            obs = after
    return t


def status(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    return err.value


def assert_clean(err: grpc.RpcError, code: grpc.StatusCode) -> str:
    details = err.details() or ""
    assert err.code() == code, (err.code(), details[:300])
    assert len(details) <= MAX_DETAILS and "Traceback" not in details and "internal error" not in details
    return details


def with_task(trajectory, **fields) -> common_pb2.Trajectory:
    copy = common_pb2.Trajectory()
    copy.CopyFrom(trajectory)
    for name, value in fields.items():
        setattr(copy.task, name, value)
    return copy


# --- finding 1 (through the teacher) and finding 8 (full-width digits) ---------------------------------

@pytest.mark.parametrize("task_id", ["train-" + "9" * 5000, "train-\uff10\uff10\uff10\uff11\uff11", "train-\u00b2"])
def test_correct_and_demonstrate_refuse_malformed_task_ids(stub, trajectory, task_id):
    details = assert_clean(status(stub.Correct, pb.CorrectRequest(trajectory=with_task(trajectory, task_id=task_id))),
                           grpc.StatusCode.INVALID_ARGUMENT)
    assert "task_id" in details
    request = pb.DemonstrateRequest(task=common_pb2.TaskRef(env="household", task_id=task_id),
                                    expert=env_pb.EXPERT_KIND_SEARCHER)
    assert "task_id" in assert_clean(status(stub.Demonstrate, request), grpc.StatusCode.INVALID_ARGUMENT)


def test_long_names_are_echoed_bounded(stub, trajectory):
    for fields in [{"env": "e" * 20_000}, {"split": "s" * 20_000}, {"task_id": "\u00e9" * 9_000}]:
        err = status(stub.Correct, pb.CorrectRequest(trajectory=with_task(trajectory, **fields)))
        assert_clean(err, grpc.StatusCode.INVALID_ARGUMENT)
    # A name within the limits that the environment does not know: NOT_FOUND from downstream, bounded.
    err = status(stub.Correct, pb.CorrectRequest(trajectory=with_task(trajectory, env="n" * 250)))
    assert "unknown environment" in assert_clean(err, grpc.StatusCode.NOT_FOUND)


# --- finding 8: garbage bytes, undefined enum values ---------------------------------------------------

@pytest.mark.parametrize("method", ["Correct", "Annotate", "Demonstrate", "GetTeacherInfo"])
def test_garbage_bytes_are_invalid_argument(channel, stub, method):
    call = channel.unary_unary(f"/leap.v1.TeacherService/{method}", request_serializer=None,
                               response_deserializer=None)
    for garbage in [b"\xff" * 64, b"\x0a\x05ab", bytes(range(256)) * 4]:
        details = assert_clean(status(call, garbage), grpc.StatusCode.INVALID_ARGUMENT)
        assert "leap.v1." in details
    assert stub.GetTeacherInfo(pb.GetTeacherInfoRequest(), timeout=10).backend == "oracle"


def test_a_string_that_is_not_utf8_is_named(channel):
    call = channel.unary_unary("/leap.v1.TeacherService/Demonstrate", request_serializer=None,
                               response_deserializer=None)
    # DemonstrateRequest.task (1) = TaskRef{env (1) = b"\xc3\x28"}
    details = assert_clean(status(call, b"\x0a\x04\x0a\x02\xc3\x28"), grpc.StatusCode.INVALID_ARGUMENT)
    assert "task.env is not valid UTF-8" in details


def test_demonstrate_with_an_undefined_expert_names_the_value(stub):
    request = pb.DemonstrateRequest(task=common_pb2.TaskRef(env="household", task_id="train-00003"), expert=999)
    details = assert_clean(status(stub.Demonstrate, request), grpc.StatusCode.INVALID_ARGUMENT)
    assert "999" in details and "EXPERT_KIND_SEARCHER" in details and "EXPERT_KIND_PLANNER" in details
    request.expert = -5
    assert "-5" in assert_clean(status(stub.Demonstrate, request), grpc.StatusCode.INVALID_ARGUMENT)


# --- finding 9: an unset realizability level is the default, 50 ---------------------------------------

def test_an_unset_realizability_level_means_50_and_an_explicit_0_means_0(stub, trajectory):
    unset = stub.Correct(pb.CorrectRequest(trajectory=trajectory), timeout=60)
    assert unset.ok and unset.realizability_level == 50
    no_level = stub.Correct(pb.CorrectRequest(trajectory=trajectory, options=pb.CorrectionOptions(max_retries=1)),
                            timeout=60)
    assert no_level.ok and no_level.realizability_level == 50
    zero = stub.Correct(pb.CorrectRequest(trajectory=trajectory, options=pb.CorrectionOptions(realizability_level=0)),
                        timeout=60)
    assert zero.ok and zero.realizability_level == 0
    bad = status(stub.Correct, pb.CorrectRequest(trajectory=trajectory,
                                                 options=pb.CorrectionOptions(realizability_level=42)))
    assert "0, 25, 50, 75, 100" in assert_clean(bad, grpc.StatusCode.INVALID_ARGUMENT)


# --- the LLM teacher's answers are hostile input too ----------------------------------------------------

def test_numbers_an_llm_cannot_mean_are_format_errors_not_exceptions():
    from services.teacher.validation import AnswerFormatError, _as_int, first_json_object

    for text in ['{"steps": [{"t": ' + "9" * 5000 + "}]}", '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}"]:
        with pytest.raises(AnswerFormatError):
            first_json_object(text)
    assert [_as_int(v) for v in ["\u00b2", "9" * 5000, "\uff11", " 3 ", "-2", 4.0, float("inf")]] == \
        [None, None, None, 3, -2, 4, None]


def test_a_goal_copied_with_its_your_task_is_prefix_is_understood(stub, trajectory):
    prefixed = common_pb2.Trajectory()
    prefixed.CopyFrom(trajectory)
    prefixed.goal = "Your task is to: " + trajectory.goal
    correction = stub.Correct(pb.CorrectRequest(trajectory=prefixed), timeout=60)
    bare = stub.Correct(pb.CorrectRequest(trajectory=trajectory), timeout=60)
    assert correction.ok and correction.summary == bare.summary
    assert "your task is" not in correction.summary.lower()
