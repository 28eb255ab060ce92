"""`leap env serve | tasks | play`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.environment import cli
from services.environment.backends.household import HouseholdBackend
from services.environment.client import EnvironmentClient, PrivilegedClient, task_ref
from services.runtime.cli import UsageError
from tests.environment.helpers import feed

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="leap env")
    cli.configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)


def test_tasks_in_process(capsys):
    assert run(["tasks", "--split", "valid_seen", "--offset", "2", "--limit", "3", "-o", "valid_seen_tasks=10"]) == 0
    out = capsys.readouterr().out
    assert "valid_seen-00002" in out and "valid_seen-00004" in out and "valid_seen-00005" not in out
    assert run(["tasks", "--split", "nope"]) == 2  # a bad input: exit code 2, one line on stderr
    assert "valid splits" in capsys.readouterr().err


def test_play_in_process_to_a_win(monkeypatch, capsys):
    plan = HouseholdBackend().privileged_state("train-00003", []).optimal_actions
    feed(monkeypatch, ["", "99", *plan])  # an empty line, an out-of-range number (sent as text), the plan
    assert run(["play", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "train-00003" in out and "Nothing happens." in out and "won" in out


def test_play_shows_what_the_teacher_sees(monkeypatch, capsys):
    feed(monkeypatch, ["1", "q"])
    assert run(["play", "--task-id", "valid_unseen-00004", "--privileged"]) == 0
    out = capsys.readouterr().out
    for part in ("what the teacher sees", "essential objects", "optimal actions", "secrets", "planner ->",
                 "prior_searcher ->", "searcher ->", "stopped after 1 steps"):
        assert part in out, part


def test_option_parsing():
    assert cli._parse_options(["a=1", "household:b=x:y"], ["household"]) == {"household": {"a": "1", "b": "x:y"}}
    with pytest.raises(UsageError):
        cli._parse_options(["novalue"], ["household"])
    with pytest.raises(UsageError):
        cli._parse_options(["webshop:a=1"], ["household"])


def test_serve_as_a_process_with_a_token_file(tmp_path, monkeypatch, capsys):
    port_file = tmp_path / "port"
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAP_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "env", "serve", "--port", "0", "--port-file", str(port_file),
         "--log-format", "text", "--privileged-token-file", str(token_file), "-o", "train_tasks=50"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not port_file.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert port_file.exists(), proc.stderr.read() if proc.poll() is not None else "no port file"
        address = f"127.0.0.1:{int(port_file.read_text())}"
        with EnvironmentClient(address) as client:
            assert len(list(client.list_tasks("household", "train"))) == 50
        with PrivilegedClient(address, "file-token") as oracle:
            assert oracle.privileged_state(task_ref("household", "train-00001")).optimal_actions
        # play against the running server, with the token from the environment
        monkeypatch.setenv("LEAP_PRIVILEGED_TOKEN", "file-token")
        feed(monkeypatch, ["2", "q"])
        assert run(["play", "--addr", address, "--seed", "1", "--privileged"]) == 0
        assert "what the teacher sees" in capsys.readouterr().out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert "PrivilegedService is served behind the bearer token" in err


def test_serve_refuses_bad_token_settings(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert run(["serve", "--privileged-token-file", str(empty)]) == 2
    assert run(["serve", "--privileged-token", "a", "--privileged-token-file", str(empty)]) == 2
    assert run(["serve", "--privileged-token", "a", "--port", "50999", "--privileged-port", "50999"]) == 2
    assert run(["serve", "--env", "nope"]) == 2
    err = capsys.readouterr().err
    assert "is empty" in err and "not both" in err and "must differ" in err and "valid names: " in err and "household" in err


def test_the_environment_side_never_imports_torch():
    code = (
        "import sys, argparse\n"
        "import services.environment.client, services.environment.server, services.environment.gym_env\n"
        "from services.environment.cli import configure\n"
        "configure(argparse.ArgumentParser())\n"
        "from services.environment.backends import create\n"
        "create('household').start('train-00000', 0).reset()\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
