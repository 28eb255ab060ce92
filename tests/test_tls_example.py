"""The outsider's example client (examples/outsider_client.py) against real servers with mutual TLS on.

The environment and the oracle teacher run as `leap env serve` / `leap teacher serve` processes with
certificates made at test time; the teacher reaches the environment over mutual TLS with its own client
certificate. The example runs as a separate Python process in isolated mode (-I: no PYTHONPATH, no
current directory on the path) from a foreign working directory, and must import nothing of LEAP-serve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runtime.certs import make_authority

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "outsider_client.py"
SAMPLE = ROOT / "examples" / "sample_trajectory.json"
TOKEN = "example-test-token"

# Runs the example as __main__ and then reports whether any LEAP-serve module was imported.
RUNNER = """
import runpy, sys
sys.argv = [sys.argv[1]] + sys.argv[2:]
code = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
own = sorted(m for m in sys.modules if m.split(".")[0] in ("services", "orchestrator"))
print("PROJECT-MODULES:", ",".join(own) or "none")
sys.exit(code)
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAP_") and k != "PYTHONPATH"}
    env.update(extra)
    return env


def _serve(argv: list[str], port_file: Path, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *argv, "--port", "0", "--port-file",
                             str(port_file), "--log-format", "text"], cwd=ROOT,
                            env=_clean_env(PYTHONPATH=str(ROOT), LEAP_PRIVILEGED_TOKEN=TOKEN),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not port_file.exists():
        proc.kill()
        pytest.fail(f"{argv[0]} did not start:\n{log.read_text()[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("example")
    ca = make_authority(tmp / "pki")
    env_cert = ca.issue("environment", server=True)
    teacher_cert = ca.issue("teacher", server=True, client=True)  # serves, and calls the environment
    client = ca.issue("outsider", client=True)
    env_proc = _serve(["env", "serve", "--tls-cert", env_cert.cert, "--tls-key", env_cert.key, "--tls-ca", ca.cert],
                      tmp / "env.port", tmp / "env.log")
    env_addr = f"localhost:{(tmp / 'env.port').read_text().strip()}"
    teacher_proc = _serve(["teacher", "serve", "--env-addr", env_addr, "--tls-cert", teacher_cert.cert,
                           "--tls-key", teacher_cert.key, "--tls-ca", ca.cert,
                           "--tls-client-cert", teacher_cert.cert, "--tls-client-key", teacher_cert.key],
                          tmp / "teacher.port", tmp / "teacher.log")
    teacher_addr = f"localhost:{(tmp / 'teacher.port').read_text().strip()}"
    yield {"tmp": tmp, "env": env_addr, "teacher": teacher_addr, "ca": ca.cert, "client": client}
    for proc in (teacher_proc, env_proc):
        proc.terminate()
    for proc in (teacher_proc, env_proc):
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_example(servers, *extra: str, client_cert: bool = True) -> subprocess.CompletedProcess:
    tls = ["--tls-ca", servers["ca"]]
    if client_cert:
        tls += ["--tls-client-cert", servers["client"].cert, "--tls-client-key", servers["client"].key]
    return subprocess.run([sys.executable, "-I", "-c", RUNNER, str(EXAMPLE), "--env-addr", servers["env"],
                           "--teacher-addr", servers["teacher"], *tls, *extra],
                          cwd=servers["tmp"], env=_clean_env(), capture_output=True, text=True, timeout=120)


def test_the_example_plays_and_gets_a_correction_over_mutual_tls(servers):
    saved = servers["tmp"] / "episode.json"
    result = run_example(servers, "--task-id", "train-00002", "--steps", "6", "--save", str(saved))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PROJECT-MODULES: none" in result.stdout
    assert "played household/train-00002" in result.stdout
    assert "teacher oracle at realizability level 50" in result.stdout
    assert result.stdout.count("  t=") == 6
    trajectory = json.loads(saved.read_text())
    assert len(trajectory["steps"]) == 6 and trajectory["task"]["taskId"] == "train-00002"
    # An explicit level 0 is sent as 0 (proto3 optional), not mistaken for "unset".
    zero = run_example(servers, "--task-id", "train-00002", "--steps", "2", "--level", "0")
    assert zero.returncode == 0 and "realizability level 0" in zero.stdout, zero.stderr


def test_the_example_without_a_client_certificate_is_refused(servers):
    result = run_example(servers, "--steps", "1", client_cert=False)
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr, result.stdout + result.stderr


def test_the_sample_trajectory_is_corrected_by_the_running_teacher(servers):
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "teacher", "correct", "--trajectory",
                             str(SAMPLE), "--addr", servers["teacher"], "--json", "--tls-ca", servers["ca"],
                             "--tls-client-cert", servers["client"].cert, "--tls-client-key", servers["client"].key],
                            cwd=ROOT, env=_clean_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    correction = json.loads(result.stdout)
    sample = json.loads(SAMPLE.read_text())
    assert correction["ok"] and len(correction["steps"]) == len(sample["steps"]) == 8
    assert not sample["goal"].lower().startswith("your task is")
