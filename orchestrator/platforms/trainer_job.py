"""One training as a Kubernetes Job: the command of the pods built from the leap-trainer PodTemplate.

    python -m orchestrator.platforms.trainer_job --request-json '{...StartJobRequest...}' --runs-dir /runs

It starts the trainer service (`leap trainer serve`) on a loopback port inside the pod, submits the
request (StartJob), follows it (WatchJob) while printing progress lines, and then:
- writes the finished trainer job (checkpoint reference, final progress, error) as compact JSON to
  the pod's termination message, where the orchestrator reads it, and to
  <run_dir>/k8s/trainer-<job_id>.json on the runs volume;
- exits 0 when the job succeeded, 1 when it failed, 2 when the request can never succeed (the Job's
  pod failure policy then fails the Job without retrying).
Only the public TrainerService contract is used, so the trainer's own code can change freely.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_REQUEST = 0, 1, 2
EXIT_STOPPED = 128 + signal.SIGTERM  # stopped by SIGTERM (evicted, deleted): as a shell reports it


class _Stopped(Exception):
    """SIGTERM arrived: the pod is going away."""
TERMINATION_LOG = "/dev/termination-log"
MESSAGE_LIMIT = 4000  # Kubernetes keeps at most 4096 bytes of a termination message


def _say(text: str) -> None:
    print(f"[trainer-job] {text}", flush=True)


def _write_termination(payload: dict, path: str) -> None:
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    if len(text) > MESSAGE_LIMIT:
        payload = dict(payload, error=(payload.get("error", "")[:500] + " ...(truncated)"))
        payload.pop("progress", None)
        text = json.dumps(payload, separators=(",", ":"), sort_keys=True)[:MESSAGE_LIMIT]
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:  # not in a pod, or no termination log mounted
        _say(f"could not write the termination message to {path}: {exc}")


def _result_payload(job) -> dict:
    from google.protobuf import json_format

    data = json_format.MessageToDict(job, preserving_proto_field_name=True)
    data.pop("spec", None)  # the request is known to the orchestrator; keep the message small
    return data


def _wait_port(port_file: Path, proc: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        if proc.poll() is not None:
            raise RuntimeError(f"the trainer service exited with code {proc.returncode} before serving")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the trainer service did not start within {timeout:.0f}s")
        time.sleep(0.1)


def _wait_serving(address: str, timeout: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.runtime.channels import PLAINTEXT, make_channel

    deadline = time.monotonic() + timeout
    with make_channel(address, tls=PLAINTEXT) as channel:  # the trainer this pod started, on loopback
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service="leap.v1.TrainerService"), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the trainer service at {address} was not SERVING within {timeout:.0f}s")
            time.sleep(0.25)


def run(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from leap.v1 import trainer_pb2, trainer_pb2_grpc
    from services.runtime.channels import PLAINTEXT, make_channel
    from services.trainer.client import FINISHED_STATES, WatchPolicy, wait_for_job

    termination = args.termination_log
    # The trainer service runs in this pod: a broken watch is reopened for as long as the Job runs.
    watch_policy = WatchPolicy(backoff_s=1.0, reconnect_for_s=None, call_timeout_s=60.0)
    try:
        request = json_format.Parse(args.request_json, trainer_pb2.StartJobRequest())
    except json_format.ParseError as exc:
        _write_termination({"state": "JOB_STATE_FAILED", "error": f"bad training request: {exc}"}, termination)
        _say(f"bad training request: {exc}")
        return EXIT_BAD_REQUEST
    if not request.job_id:
        _write_termination({"state": "JOB_STATE_FAILED", "error": "the request has no job_id"}, termination)
        return EXIT_BAD_REQUEST

    work = Path(tempfile.mkdtemp(prefix="trainer-job-"))
    port_file = work / "port"
    serve = shlex.split(args.serve_command) if args.serve_command else [sys.executable, "-m", "orchestrator.cli"]
    command = serve + ["trainer", "serve", "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
                       "--state-dir", args.state_dir or str(work / "state"), "--runs-dir", args.runs_dir]
    env = dict(os.environ)
    for key in ("LEAP_HOST", "LEAP_PORT", "LEAP_PORT_FILE"):
        env.pop(key, None)
    _say(f"job {request.job_id}: starting the trainer service")
    proc = subprocess.Popen(command, env=env)

    def forward(signum, _frame):  # evicted or deleted: let the trainer stop cleanly, then go
        _say(f"signal {signum}: stopping the trainer service")
        proc.send_signal(signal.SIGTERM)
        # Stop watching too (the trainer is going away; its watch would be reopened forever): once, so a
        # second signal cannot break the cleanup below.
        signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
        raise _Stopped()

    signal.signal(signal.SIGTERM, forward)
    job = None
    code = EXIT_FAILED
    try:
        port = _wait_port(port_file, proc, args.startup_timeout)
        address = f"127.0.0.1:{port}"
        _wait_serving(address, args.startup_timeout)
        with make_channel(address, tls=PLAINTEXT) as channel:  # loopback, inside this pod
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            try:
                job = stub.StartJob(request, timeout=120)
            except grpc.RpcError as exc:
                bad = exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                     grpc.StatusCode.FAILED_PRECONDITION)
                error = f"StartJob refused the request: {exc.code().name}: {exc.details()}"
                _say(error)
                _write_termination({"job_id": request.job_id, "state": "JOB_STATE_FAILED", "error": error},
                                   termination)
                return EXIT_BAD_REQUEST if bad else EXIT_FAILED
            _say(f"job {job.job_id}: {trainer_pb2.JobState.Name(job.state)}")
            if job.state not in FINISHED_STATES:
                job = wait_for_job(stub, job.job_id, policy=watch_policy, on_progress=lambda p: _say(
                    f"{trainer_pb2.JobState.Name(p.state)} step {p.step}/{p.total_steps} "
                    f"loss {p.loss:.4f} {p.tokens_per_second:.0f} tok/s {p.message}"))
        payload = _result_payload(job)
        code = EXIT_OK if job.state == trainer_pb2.JOB_STATE_SUCCEEDED else EXIT_FAILED
        if request.run_dir:
            try:
                from services.runtime.files import atomic_write_json

                atomic_write_json(Path(request.run_dir) / "k8s" / f"trainer-{request.job_id}.json", payload)
            except OSError as exc:
                _say(f"could not write the result file: {exc}")
        _write_termination(payload, termination)
        _say(f"job {job.job_id}: {trainer_pb2.JobState.Name(job.state)}"
             + (f" checkpoint {job.checkpoint.name}/{job.checkpoint.version}" if job.checkpoint.version else "")
             + (f" error: {job.error}" if job.error else ""))
        return code
    except _Stopped:
        error = "the pod was stopped (SIGTERM: evicted or deleted) while the job ran; resubmit"
        _write_termination({"job_id": request.job_id, "state": "JOB_STATE_CANCELLED", "error": error}, termination)
        return EXIT_STOPPED
    except Exception as exc:  # noqa: BLE001 - every failure ends as a readable termination message
        error = f"{type(exc).__name__}: {exc}"
        _say(error)
        _write_termination({"job_id": request.job_id, "state": "JOB_STATE_FAILED", "error": error}, termination)
        return EXIT_FAILED
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The port file and, without --state-dir, the trainer's state: nothing outlives the pod's job.
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.platforms.trainer_job",
                                     description="Run one training (a Kubernetes Job's pod).")
    parser.add_argument("--request-json", required=True, help="the StartJobRequest as JSON (job_id set)")
    parser.add_argument("--runs-dir", default="/runs", help="the runs volume (the trainer's --runs-dir)")
    parser.add_argument("--state-dir", default="", help="the trainer's --state-dir (default: a temp dir)")
    parser.add_argument("--startup-timeout", type=float, default=600.0,
                        help="seconds for the trainer service to start serving")
    parser.add_argument("--termination-log", default=os.environ.get("LEAP_TERMINATION_LOG", TERMINATION_LOG),
                        help="where the result goes (the container's terminationMessagePath)")
    # Tests run a stand-in trainer service here (the real one needs torch and a model).
    parser.add_argument("--serve-command", default=os.environ.get("LEAP_TRAINER_JOB_SERVE", ""),
                        help=argparse.SUPPRESS)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
