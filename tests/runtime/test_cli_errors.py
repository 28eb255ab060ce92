"""The `leap` command line against careless input (issue 20, finding 10): one line on stderr and exit
code 2 for every bad input, never a traceback; `env play --privileged-addr` and `--save FILE`, and
`teacher correct --addr` reading that file from a running teacher.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import cli
from services.environment.backends.household import HouseholdBackend
from services.environment.server import EnvironmentServer
from services.runtime.config import ServerConfig
from services.teacher.backends.oracle import OracleTeacher
from services.teacher.privileged import GrpcPrivilegedSource
from services.teacher.server import start_in_process
from services.teacher.service import TeacherService
from tests.environment.helpers import feed

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "cli-test-token"


def leap(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    for name in ("LEAP_TLS_CA", "LEAP_TLS_CLIENT_CERT", "LEAP_TLS_CLIENT_KEY", "LEAP_DEBUG"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture()
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# --- bad inputs: exit 2, one line ----------------------------------------------------------------------

def test_an_unknown_environment_is_one_line_and_exit_2():
    result = leap("env", "tasks", "--env", "nosuch")
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert "unknown environment 'nosuch'; valid names: " in line and "household" in line


@pytest.mark.parametrize("argv,expected", [
    (["env", "tasks", "-o", "nosuch=1"], "unknown household option 'nosuch'"),
    (["env", "tasks", "-o", "train_tasks=abc"], "train_tasks='abc' is not a valid int"),
    (["env", "tasks", "-o", "novalue"], "--env-option wants [ENV:]KEY=VALUE"),
    (["env", "tasks", "-o", "webshop:a=1"], "names 'webshop', which is not served"),
    (["env", "tasks", "--split", "nope"], "unknown split 'nope'"),
    (["env", "play", "--env", "nosuch"], "unknown environment 'nosuch'"),
    (["env", "play", "--task-id", "train-\uff10\uff11"], "task_id"),
    (["env", "play", "--privileged-addr", "127.0.0.1:1"], "--privileged-addr needs --addr"),
    (["env", "play", "--save", "/nonexistent/dir/episode.json"], "No such directory: /nonexistent/dir"),
    (["env", "serve", "-o", "household:horizon=x"], "horizon='x' is not a valid int"),
    (["env", "serve", "--port", "0", "--max-sessions", "0"], "max_sessions must be >= 1"),
    (["teacher", "correct", "--trajectory", "/nonexistent.json", "--env-addr", "127.0.0.1:1"],
     "No such file or directory: /nonexistent.json"),
    (["teacher", "correct", "--trajectory", "/nonexistent.json"], "give --addr (a running teacher) or --env-addr"),
])
def test_bad_inputs_are_one_line_and_exit_2(argv, expected, capsys, monkeypatch):
    monkeypatch.delenv("LEAP_ENV_ADDR", raising=False)
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert expected in one_line_error(captured.err)


def test_a_missing_token_file_is_one_line_and_exit_2(tmp_path, capsys):
    trajectory = tmp_path / "t.json"
    trajectory.write_text(json.dumps({"task": {"env": "household", "taskId": "train-00001"},
                                      "steps": [{"action": "look"}]}))
    assert cli.main(["teacher", "correct", "--trajectory", str(trajectory), "--env-addr", "h:1",
                     "--privileged-token-file", "/nope"]) == 2
    assert "token file /nope does not exist" in one_line_error(capsys.readouterr().err)


def test_a_port_in_use_is_one_line_and_exit_2(busy_port):
    for argv in (["env", "serve", "--port", str(busy_port)],
                 ["teacher", "serve", "--port", str(busy_port), "--privileged-token", "t"]):
        result = leap(*argv, "--log-format", "text")
        assert result.returncode == 2, result.stderr
        line = one_line_error(result.stderr)
        assert f"cannot listen on 127.0.0.1:{busy_port}: Address already in use" in line


def test_an_unreachable_server_is_one_line_and_exit_1(busy_port):
    result = leap("env", "tasks", "--addr", "127.0.0.1:1")
    assert result.returncode == 1 and "UNAVAILABLE" in one_line_error(result.stderr)


# --- play --privileged-addr --save, then teacher correct --addr -----------------------------------------

@pytest.fixture(scope="module")
def servers():
    env = EnvironmentServer(ServerConfig(port=0), {"household": HouseholdBackend()}, token=TOKEN, privileged_port=0)
    env.start()
    assert env.privileged_port != env.port
    source = GrpcPrivilegedSource(f"127.0.0.1:{env.privileged_port}", TOKEN, timeout_s=10)
    teacher = start_in_process(TeacherService(OracleTeacher(), source))
    yield env, teacher
    teacher.stop(grace=0)
    env.stop(grace=0)


def test_play_on_a_separate_privileged_port_saves_a_trajectory_the_teacher_corrects(servers, tmp_path, monkeypatch,
                                                                                   capsys):
    env, teacher = servers
    saved = tmp_path / "episode.json"
    feed(monkeypatch, ["2", "1", "look", "q"])
    code = cli.main(["env", "play", "--task-id", "train-00009", "--addr", f"127.0.0.1:{env.port}", "--privileged",
                     "--privileged-addr", f"127.0.0.1:{env.privileged_port}", "--privileged-token", TOKEN,
                     "--save", str(saved)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "what the teacher sees" in out and "optimal actions" in out and "saved the episode (3 steps)" in out
    data = json.loads(saved.read_text())
    assert data["task"] == {"env": "household", "taskId": "train-00009", "split": "train"}
    assert [s["action"] for s in data["steps"]][2] == "look" and data["agent"] == "human"
    assert data["goal"] and not data["goal"].lower().startswith("your task is")
    assert all(s["observation"] and s["nextObservation"] for s in data["steps"])

    # The running teacher corrects the saved file; the level is the default, 50.
    result = leap("teacher", "correct", "--trajectory", str(saved), "--addr", f"127.0.0.1:{teacher.port}", "--json")
    assert result.returncode == 0, result.stderr
    correction = json.loads(result.stdout)
    assert correction["ok"] and correction["realizabilityLevel"] == 50 and len(correction["steps"]) == 3
    # The in-process teacher reads the same file.
    local = leap("teacher", "correct", "--trajectory", str(saved), "--env-addr", f"127.0.0.1:{env.privileged_port}",
                 "--privileged-token", TOKEN, "--json", "--level", "100")
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout)["realizabilityLevel"] == 100


def test_without_the_privileged_address_the_privileged_port_is_not_reached(servers, monkeypatch, capsys):
    env, _ = servers
    feed(monkeypatch, ["q"])
    code = cli.main(["env", "play", "--task-id", "train-00009", "--addr", f"127.0.0.1:{env.port}", "--privileged",
                     "--privileged-token", TOKEN])
    # The agent-facing port does not serve PrivilegedService when it has its own port: UNIMPLEMENTED, a
    # deployment mistake the user fixes with --privileged-addr (exit 2, one line).
    assert code == 2
    assert "UNIMPLEMENTED" in one_line_error(capsys.readouterr().err)


def test_teacher_correct_against_a_teacher_that_refuses_the_file(servers, tmp_path):
    _, teacher = servers
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"task": {"env": "household", "taskId": "train-" + "9" * 5000}, "steps": [{"action": "look"}]}))
    result = leap("teacher", "correct", "--trajectory", str(bad), "--addr", f"127.0.0.1:{teacher.port}")
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert "INVALID_ARGUMENT" in line and len(line) < 600
