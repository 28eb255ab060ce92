"""Start the four services locally, each a real gRPC server process on a free loopback port.

Used by `leap run` when the config gives no address for a service. Each child process:
- binds port 0 and reports the bound port through --port-file (no port races);
- logs to <run>/services/<name>.log;
- dies with the orchestrator (PR_SET_PDEATHSIG), so a killed run leaves no orphan servers;
- is stopped with SIGTERM (graceful drain) at the end.
Only the environment and the teacher get the privileged token (in their environment variables).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestrator.config import RunConfig
from services.runtime.channels import make_channel
from services.teacher import backends as teacher_backends

SERVICE_NAMES = {
    "environment": "leap.v1.EnvironmentService",
    "student": "leap.v1.StudentService",
    "teacher": "leap.v1.TeacherService",
    "trainer": "leap.v1.TrainerService",
}


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a crashed run takes its servers with it
    except OSError:
        pass


@dataclass
class LaunchedService:
    name: str
    process: subprocess.Popen
    address: str
    log_path: Path


@dataclass
class LocalServices:
    """The services this run started itself (others are used at their configured addresses)."""

    run_dir: Path
    started: dict[str, LaunchedService] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    privileged_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def start(self, config: RunConfig, startup_timeout: float = 300.0, start_trainer: bool = True) -> dict[str, str]:
        svc_dir = self.run_dir / "services"
        svc_dir.mkdir(parents=True, exist_ok=True)
        token = self.privileged_token
        privileged_env = {"LEAP_PRIVILEGED_TOKEN": token}
        common = ["--host", "127.0.0.1", "--port", "0", "--log-format", "json"]
        self.addresses = {
            "environment": config.environment.address,
            "student": config.student.address,
            "teacher": config.teacher.address,
            "trainer": config.trainer.address,
        }
        if not self.addresses["environment"]:
            env = config.environment
            options = [arg for key, value in sorted(env.options.items())
                       for arg in ("--env-option", f"{env.name}:{key}={value}")]
            self._spawn("environment", ["env", "serve", "--env", env.name, *options, *common], privileged_env)
        if not self.addresses["student"]:
            s = config.student
            self._spawn("student", ["student", "serve", "--model", s.model, "--device", s.device, "--dtype", s.dtype,
                                    "--max-batch-size", str(s.max_batch_size),
                                    "--max-prefill-rows", str(s.max_prefill_rows), "--max-wait-ms", str(s.max_wait_ms),
                                    "--history-window", str(s.history_window),
                                    "--prompt-cache-mb", str(s.prompt_cache_mb),
                                    # LoadAdapter reads only under the run: the trainer writes its checkpoints there.
                                    "--adapters-root", str(self.run_dir), *common], {})
        if not start_trainer:
            del self.addresses["trainer"]
        elif not self.addresses["trainer"]:
            self._spawn("trainer", ["trainer", "serve", "--state-dir", str(svc_dir / "trainer-state"),
                                    "--runs-dir", str(self.run_dir), *common], {})
        # The teacher needs the environment's address, so wait for the environment first.
        self._wait_ports(["environment"], startup_timeout)
        if not self.addresses["teacher"]:
            t = config.teacher
            args = ["teacher", "serve", "--backend", t.backend, "--env-addr", self.addresses["environment"],
                    *teacher_backends.spec(t.backend).launch_args(t), *common]
            self._spawn("teacher", args, privileged_env)
        self._wait_ports(list(self.started), startup_timeout)
        for name, address in self.addresses.items():
            wait_serving(address, SERVICE_NAMES[name], startup_timeout, self.started.get(name))
        return dict(self.addresses)

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str]) -> None:
        svc_dir = self.run_dir / "services"
        port_file = svc_dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        log_path = svc_dir / f"{name}.log"
        env = dict(os.environ)
        env.pop("LEAP_PRIVILEGED_TOKEN", None)
        env.update(extra_env)
        env["LEAP_PORT_FILE"] = str(port_file)
        env.setdefault("PYTHONUNBUFFERED", "1")
        log = open(log_path, "ab")
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], stdout=log, stderr=log,
                                env=env, preexec_fn=_die_with_parent, cwd=os.getcwd())
        self.started[name] = LaunchedService(name, proc, "", log_path)

    def _wait_ports(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            launched = self.started.get(name)
            if launched is None or launched.address:
                continue
            port_file = self.run_dir / "services" / f"{name}.port"
            while not port_file.exists():
                if launched.process.poll() is not None:
                    raise RuntimeError(f"the {name} service exited with code {launched.process.returncode} "
                                       f"before serving; see {launched.log_path}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the {name} service did not start within {timeout:.0f}s; see {launched.log_path}")
                time.sleep(0.05)
            launched.address = f"127.0.0.1:{int(port_file.read_text())}"
            self.addresses[name] = launched.address

    def stop(self, grace: float = 15.0) -> None:
        for launched in self.started.values():
            if launched.process.poll() is None:
                launched.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for launched in self.started.values():
            try:
                launched.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                launched.process.kill()
                launched.process.wait()


def wait_serving(address: str, service: str, timeout: float, launched: LaunchedService | None = None) -> None:
    """Poll grpc.health.v1 until `service` is SERVING (a model may take a while to load)."""
    deadline = time.monotonic() + timeout
    with make_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if launched is not None and launched.process.poll() is not None:
                raise RuntimeError(f"the {launched.name} service exited with code {launched.process.returncode}; "
                                   f"see {launched.log_path}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} at {address} not SERVING after {timeout:.0f}s")
            time.sleep(0.25)
