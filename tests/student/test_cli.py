"""`leap student serve`: flags, torch-free imports, and the real entry point end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli import build_parser
from services.student.client import StudentClient, act_item
from tests.student.helpers import STATES

ROOT = Path(__file__).resolve().parents[2]


def test_serve_flags_defaults_and_environment(monkeypatch):
    args = build_parser(["student", "serve"]).parse_args(["student", "serve"])
    assert (args.port, args.backend, args.model, args.max_batch_size, args.stop_at) == (50061, "local", "smollm2", 16, "action")
    # The same scheduling defaults as a run config's student section (one source: services.student.defaults).
    from orchestrator.config import StudentConfig

    run = StudentConfig()
    assert (args.max_batch_size, args.max_prefill_rows, args.max_wait_ms, args.history_window) == \
        (run.max_batch_size, run.max_prefill_rows, run.max_wait_ms, run.history_window)
    assert callable(args.func)
    monkeypatch.setenv("LEAP_MAX_BATCH_SIZE", "24")
    monkeypatch.setenv("LEAP_BACKEND", "tgi")
    argv = ["student", "serve", "--endpoint", "http://tgi:80", "--history-window", "3", "--max-wait-ms", "5"]
    args = build_parser(argv).parse_args(argv)
    assert (args.max_batch_size, args.backend, args.endpoint, args.history_window, args.max_wait_ms) == \
        (24, "tgi", "http://tgi:80", 3, 5.0)


def test_prefill_grouping_flag_defaults_to_the_device_and_refuses_hostile_values(monkeypatch):
    from orchestrator.cli import build_parser as parser_for
    from services.student.cli import build_service

    args = parser_for(["student", "serve"]).parse_args(["student", "serve"])
    assert args.prefill_group_overhead_tokens is None  # the backend picks: measured CPU default, one pass on GPUs
    monkeypatch.setenv("LEAP_PREFILL_GROUP_OVERHEAD_TOKENS", "-1")
    args = parser_for(["student", "serve"]).parse_args(["student", "serve"])
    assert args.prefill_group_overhead_tokens == -1
    for hostile in ("-2", "-1000000000000"):
        argv = ["student", "serve", "--prefill-group-overhead-tokens", hostile]
        with pytest.raises(SystemExit, match="prefill-group-overhead-tokens"):
            build_service(parser_for(argv).parse_args(argv))
    for hostile in ("nan", "1e400", "4\x00"):
        argv = ["student", "serve", "--prefill-group-overhead-tokens", hostile]
        with pytest.raises(SystemExit):
            parser_for(argv).parse_args(argv)


def test_clients_cli_and_service_logic_import_without_torch():
    code = ("import sys\n"
            "import services.student.cli, services.student.client, services.student.prompts\n"
            "import services.student.service, services.student.server, services.student.backends.remote\n"
            "import orchestrator.cli\n"
            "orchestrator.cli.build_parser(['student', 'serve'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.model
def test_leap_student_serve_end_to_end(tmp_path):
    """The real command: loads the model, reports SERVING, answers Act, drains and exits 0 on SIGTERM."""
    port_file = tmp_path / "port"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "student", "serve", "--port", "0", "--port-file", str(port_file),
         "--max-new-tokens", "4", "--log-format", "text"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the server did not bind within 120 s"
            time.sleep(0.1)
        with StudentClient(f"127.0.0.1:{int(port_file.read_text())}") as client:
            client.wait_ready(timeout=180)
            [result] = client.act([act_item(**STATES[0])])
            assert result.adapter_version == "base" and 0 < len(result.completion_token_ids) <= 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
