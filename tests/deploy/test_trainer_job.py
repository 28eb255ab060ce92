"""The trainer Job's command (orchestrator.platforms.trainer_job), run as the pod would run it.

The trainer service it starts is replaced by tests/deploy/fake_trainer.py (same command line and
TrainerService contract; the real one needs torch and a model and is tested with the trainer).
Checked: the result in the termination message (what the orchestrator reads), the result file on
the runs volume, and the exit codes the Job's pod failure policy relies on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from google.protobuf import json_format

from leap.v1 import trainer_pb2
from orchestrator.platforms.kubernetes import EXIT_BAD_REQUEST, parse_result

ROOT = Path(__file__).resolve().parents[2]


def run_job(tmp_path: Path, output_name: str = "student", request_json: str | None = None):
    run_dir = tmp_path / "runs" / "r1"
    request = trainer_pb2.StartJobRequest(job_id="r1-iter1-a1", output_name=output_name, base_model="smollm2",
                                          run_dir=str(run_dir), method=trainer_pb2.TRAINING_METHOD_SFT)
    text = request_json or json.dumps(json_format.MessageToDict(request, preserving_proto_field_name=True))
    termination = tmp_path / "termination-log"
    scratch = tmp_path / "scratch"  # the command's temp dir (TMPDIR): it must be gone at the end
    scratch.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(scratch),
               LEAP_TRAINER_JOB_SERVE=f"{sys.executable} -m tests.deploy.fake_trainer")
    proc = subprocess.run([sys.executable, "-m", "orchestrator.platforms.trainer_job", "--request-json", text,
                           "--runs-dir", str(tmp_path / "runs"), "--termination-log", str(termination),
                           "--startup-timeout", "60"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    message = termination.read_text() if termination.exists() else ""
    assert not list(scratch.iterdir()), "the trainer Job left its work directory behind"
    return proc, message, run_dir


def test_a_successful_training_leaves_its_checkpoint_in_the_termination_message(tmp_path):
    proc, message, run_dir = run_job(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = parse_result(message)
    assert job is not None and job.state == trainer_pb2.JOB_STATE_SUCCEEDED
    assert job.job_id == "r1-iter1-a1"
    assert (job.checkpoint.version, job.checkpoint.uri) == ("v1", f"{run_dir}/checkpoints/student/v1")
    assert not job.HasField("spec") and len(message) < 4096
    assert "step 2/2" in proc.stdout, "progress is logged for kubectl logs"
    on_volume = parse_result((run_dir / "k8s" / "trainer-r1-iter1-a1.json").read_text())
    assert on_volume == job


def test_a_failed_training_exits_1_with_the_trainers_error(tmp_path):
    proc, message, _ = run_job(tmp_path, output_name="fail")
    assert proc.returncode == 1
    job = parse_result(message)
    assert job.state == trainer_pb2.JOB_STATE_FAILED and "loss is NaN" in job.error


def test_a_request_the_trainer_refuses_exits_2_so_the_job_is_not_retried(tmp_path):
    proc, message, _ = run_job(tmp_path, output_name="invalid")
    assert proc.returncode == EXIT_BAD_REQUEST
    assert "INVALID_ARGUMENT" in parse_result(message).error


def test_an_unreadable_request_exits_2(tmp_path):
    proc, message, _ = run_job(tmp_path, request_json='{"job_id": 3, "nope": true}')
    assert proc.returncode == EXIT_BAD_REQUEST
    assert "bad training request" in json.loads(message)["error"]


def test_sigterm_stops_the_job_and_says_so(tmp_path):
    """Evicted or deleted, the pod gets SIGTERM: the runner stops its trainer and exits at once (143)
    with a CANCELLED termination message, instead of watching a dead trainer until the SIGKILL."""
    import signal
    import time

    run_dir = tmp_path / "runs" / "r1"
    request = trainer_pb2.StartJobRequest(job_id="r1-iter1-a1", output_name="slow", base_model="smollm2",
                                          run_dir=str(run_dir), method=trainer_pb2.TRAINING_METHOD_SFT)
    termination = tmp_path / "termination-log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), LEAP_TRAINER_JOB_SERVE=f"{sys.executable} -m tests.deploy.fake_trainer")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.platforms.trainer_job", "--request-json",
                             json.dumps(json_format.MessageToDict(request, preserving_proto_field_name=True)),
                             "--runs-dir", str(tmp_path / "runs"), "--termination-log", str(termination),
                             "--startup-timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT, env=env)
    try:
        for line in proc.stdout:
            if "step 1/1000" in line:
                break
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert time.monotonic() - stopped_at < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    job = parse_result(termination.read_text())
    assert job.state == trainer_pb2.JOB_STATE_CANCELLED and "SIGTERM" in job.error
