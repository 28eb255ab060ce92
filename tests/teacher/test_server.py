"""The teacher over real gRPC: info, bad requests, downstream failures, annotations, the LLM backend
against a scripted OpenAI-compatible server, and the `leap teacher` command line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from leap.v1 import common_pb2
from services.environment.client import PrivilegedClient
from services.teacher.backends.chat import EndpointChatModel
from services.teacher.backends.llm import LlmSettings, LlmTeacher, Pricing
from services.teacher.backends.oracle import OracleTeacher
from services.teacher.client import TeacherClient
from services.teacher.leak import SecretIndex, find_leaks
from tests.teacher.conftest import TOKEN, start_teacher
from tests.teacher.fake_llm import FakeChatServer

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def plain_client():
    """A TeacherClient on a channel without client-side retries (to see a status exactly once)."""
    clients = []

    def make(port: int) -> TeacherClient:
        client = TeacherClient(f"127.0.0.1:{port}", channel=grpc.insecure_channel(f"127.0.0.1:{port}"), timeout_s=60)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client._channel.close()


def _status(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def test_teacher_info(oracle_teacher):
    info = oracle_teacher.info()
    assert info.backend == "oracle" and info.max_steps == 100
    assert list(info.realizability_levels) == [0, 25, 50, 75, 100]


def test_bad_requests_get_clear_codes_and_the_server_keeps_serving(env_addr, failed_trajectories, plain_client):
    host = start_teacher(OracleTeacher(), env_addr, max_steps=8)
    try:
        teacher = plain_client(host.port)
        good = failed_trajectories[0]
        short = common_pb2.Trajectory()
        short.CopyFrom(good)
        del short.steps[8:]
        empty = common_pb2.Trajectory(task=good.task, goal=good.goal)
        err = _status(lambda: teacher.correct(empty, level=50))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "no steps" in err.details()
        err = _status(lambda: teacher.correct(good, level=50))  # 12 steps > --max-steps 8
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "more than this teacher accepts (8)" in err.details()
        err = _status(lambda: teacher.correct(short, level=60))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "0, 25, 50, 75, 100" in err.details()
        unknown = common_pb2.Trajectory()
        unknown.CopyFrom(short)
        unknown.task.task_id = "train-99999999"
        err = _status(lambda: teacher.correct(unknown, level=50))
        assert err.code() == grpc.StatusCode.NOT_FOUND and "train-99999999" in err.details()
        unknown.task.env = "no-such-env"
        err = _status(lambda: teacher.correct(unknown, level=50))
        assert err.code() == grpc.StatusCode.NOT_FOUND and "household" in err.details()
        # Still serving, and correctly.
        correction = teacher.correct(short, level=50)
        assert correction.ok and len(correction.steps) == 8
    finally:
        host.stop(grace=0)


def test_unreachable_environment_is_unavailable_naming_it(failed_trajectories, plain_client):
    dead = f"127.0.0.1:{_free_port()}"
    host = start_teacher(OracleTeacher(), dead)
    try:
        teacher = plain_client(host.port)
        err = _status(lambda: teacher.correct(failed_trajectories[0], level=50))
        assert err.code() == grpc.StatusCode.UNAVAILABLE and dead in err.details()
        assert teacher.info().backend == "oracle"  # the teacher itself is fine
    finally:
        host.stop(grace=0)


def test_wrong_privileged_token_is_a_failed_precondition(env_addr, failed_trajectories, plain_client):
    host = start_teacher(OracleTeacher(), env_addr, token="not-the-token")
    try:
        err = _status(lambda: plain_client(host.port).correct(failed_trajectories[0], level=50))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "privileged token" in err.details()
    finally:
        host.stop(grace=0)


def test_oracle_annotates_demonstrations_from_what_was_seen(oracle_teacher, env_addr):
    with PrivilegedClient(env_addr, TOKEN) as privileged:
        for task_id in ("train-00003", "train-00004", "train-00005"):
            task = common_pb2.TaskRef(env="household", task_id=task_id, split="train")
            demo = privileged.demonstration(task, "searcher")
            annotation = oracle_teacher.annotate(demo)
            assert annotation.ok, annotation.error
            assert len(annotation.reasons) == len(demo.steps) and all(annotation.reasons)
            actions = [step.action for step in demo.steps]
            for t, reason in enumerate(annotation.reasons):
                index = SecretIndex.build(privileged.privileged_state(task, actions[:t]))
                assert find_leaks(reason, index, said=actions[:t + 1]) == [], reason


def _llm_teacher(url: str, max_new_tokens: int = 512) -> LlmTeacher:
    return LlmTeacher(EndpointChatModel(url, timeout_s=30), settings=LlmSettings(max_new_tokens=max_new_tokens),
                      pricing=Pricing(prompt_per_1k=1.0, completion_per_1k=2.0))


def test_llm_teacher_happy_path_over_grpc(env_addr, failed_trajectories, oracle_teacher):
    trajectory = common_pb2.Trajectory()
    trajectory.CopyFrom(failed_trajectories[1])
    del trajectory.steps[4:]
    reference = oracle_teacher.correct(trajectory, level=50)
    answer = json.dumps({"summary": "The student wandered instead of searching where the object is usually kept.",
                         "steps": [{"t": s.index, "reason": "Things are usually kept in their usual places, "
                                                            "so I search the likeliest place I have not checked.",
                                    "action": s.action} for s in reference.steps]})
    with FakeChatServer([answer]) as llm:
        host = start_teacher(_llm_teacher(llm.url), env_addr)
        try:
            with TeacherClient(f"127.0.0.1:{host.port}") as teacher:
                info = teacher.info()
                correction = teacher.correct(trajectory, level=50)
        finally:
            host.stop(grace=0)
        prompt = "\n".join(m["content"] for m in llm.requests[0]["messages"])
    assert info.backend == "llm" and info.model == "fake-teacher"
    assert correction.ok and correction.attempts == 1 and correction.teacher == "llm"
    assert [s.action for s in correction.steps] == [s.action for s in reference.steps]
    assert [s.is_corrected for s in correction.steps] == [s.is_corrected for s in reference.steps]
    usage = correction.usage
    assert usage.calls == 1 and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.cost_usd == pytest.approx(usage.prompt_tokens / 1000 + usage.completion_tokens * 2 / 1000)
    # The teacher fetched the privileged state itself and showed it to the model.
    assert "hidden facts:" in prompt and trajectory.steps[0].action in prompt


def test_llm_teacher_failure_is_ok_rpc_with_ok_false(env_addr, failed_trajectories):
    with FakeChatServer(["I cannot answer in JSON, sorry."]) as llm:
        host = start_teacher(_llm_teacher(llm.url), env_addr)
        try:
            with TeacherClient(f"127.0.0.1:{host.port}") as teacher:
                correction = teacher.correct(failed_trajectories[2], level=50, max_retries=1)
                again = teacher.correct(failed_trajectories[3], level=25, max_retries=1)
        finally:
            host.stop(grace=0)
    assert not correction.ok and correction.attempts == 2 and correction.usage.calls == 2
    assert "no valid correction after 2 attempt(s)" in correction.error and not correction.steps
    assert not again.ok and again.realizability_level == 25


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "teacher", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_correct_prints_tables_and_json(env_addr, failed_trajectories, tmp_path):
    path = tmp_path / "failed.jsonl"
    path.write_text("".join(json.dumps(json_format.MessageToDict(t)) + "\n" for t in failed_trajectories[:2]))
    table = _cli("correct", "--trajectory", str(path), "--env-addr", env_addr, "--privileged-token", TOKEN)
    assert table.returncode == 0, table.stderr
    assert "teacher action" in table.stdout and "summary:" in table.stdout
    assert failed_trajectories[0].task.task_id in table.stdout
    single = tmp_path / "one.json"
    single.write_text(json.dumps(json_format.MessageToDict(failed_trajectories[0]), indent=2))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    as_json = _cli("correct", "--trajectory", str(single), "--env-addr", env_addr, "--level", "100", "--json",
                   "--privileged-token-file", str(token_file))
    assert as_json.returncode == 0, as_json.stderr
    correction = json.loads(as_json.stdout)
    assert correction["ok"] and correction["realizabilityLevel"] == 100
    assert len(correction["steps"]) == len(failed_trajectories[0].steps)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"task": {"env": "household"}}\nnot json\n')
    bad = _cli("correct", "--trajectory", str(broken), "--env-addr", env_addr, "--privileged-token", TOKEN)
    assert bad.returncode == 2 and "broken.jsonl:2: not JSON" in bad.stderr


def test_cli_serve_runs_until_sigterm(env_addr, failed_trajectories, tmp_path):
    port_file = tmp_path / "port"
    env = dict(os.environ, PYTHONPATH=str(ROOT), LEAP_PRIVILEGED_TOKEN=TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "teacher", "serve", "--port", "0",
                             "--port-file", str(port_file), "--env-addr", env_addr, "--log-format", "text"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert port_file.exists(), proc.stdout.read() if proc.poll() is not None else "no port file"
        with TeacherClient(f"127.0.0.1:{port_file.read_text().strip()}") as teacher:
            assert teacher.info().backend == "oracle"
            assert teacher.correct(failed_trajectories[5], level=50).ok
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demonstrate_plays_the_expert_and_annotates(oracle_teacher, experts, plain_client, env_addr):
    task = common_pb2.TaskRef(env="household", task_id="train-00007", split="train")
    demo = oracle_teacher.demonstrate(task, expert="searcher", annotate=True)
    assert demo.won and demo.agent == "searching_expert" and demo.metadata["teacher"] == "oracle"
    actions = [step.action for step in demo.steps]
    assert actions == [step.action for step in experts.demonstration(task, "searcher").steps]
    for t, step in enumerate(demo.steps):
        assert step.reason
        index = SecretIndex.build(experts.state(task, actions[:t]))
        assert find_leaks(step.reason, index, said=actions[:t + 1]) == [], step.reason
    plain = oracle_teacher.demonstrate(task, expert="planner", annotate=False)
    assert plain.won and "teacher" not in plain.metadata
    assert len(plain.steps) == len(experts.state(task).optimal_actions)


def test_demonstrate_bad_requests(env_addr, plain_client):
    host = start_teacher(OracleTeacher(), env_addr)
    try:
        teacher = plain_client(host.port)
        from leap.v1 import teacher_pb2

        unknown = common_pb2.TaskRef(env="household", task_id="train-77777777")
        err = _status(lambda: teacher.demonstrate(unknown))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        task = common_pb2.TaskRef(env="household", task_id="train-00001")
        err = _status(lambda: teacher._stub.Demonstrate(teacher_pb2.DemonstrateRequest(task=task), timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "EXPERT_KIND_SEARCHER" in err.details()
        assert teacher.demonstrate(task, horizon=3, annotate=True).truncated
    finally:
        host.stop(grace=0)


def test_llm_demonstration_that_cannot_be_annotated_is_aborted(env_addr, plain_client):
    with FakeChatServer(["no JSON here"]) as llm:
        host = start_teacher(_llm_teacher(llm.url), env_addr)
        try:
            teacher = plain_client(host.port)
            task = common_pb2.TaskRef(env="household", task_id="train-00002")
            err = _status(lambda: teacher.demonstrate(task, horizon=4))
            assert err.code() == grpc.StatusCode.ABORTED and "could not annotate" in err.details()
            assert len(llm.requests) == 3  # the first answer and the server's default of two retries
        finally:
            host.stop(grace=0)
