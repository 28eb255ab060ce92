"""The server's side of the shell sandbox: start a supervisor, send it requests, stop it.

A `Sandbox` is one supervisor (supervisor.py, run by this interpreter with `-I -S` and an empty
environment) holding one sandbox: new user, mount, pid, network, IPC and UTS namespaces, a root file
system of bounded size over a read-only template, and the limits of `SandboxLimits`. Commands run
one at a time. Everything the supervisor sends is treated as untrusted: replies are bounded in
size, parsed strictly, and awaited with a deadline (the command's timeout plus a little); a
supervisor that does not answer in time is killed and the sandbox counts as dead.

`SandboxPool` keeps a few started sandboxes of one template ready, so that an episode does not wait
for a start; a background thread refills it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("leap.environment.intercode_bash")

SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "supervisor.py")
MAX_REPLY_BYTES = 64 * 1024 * 1024
#: Time a started supervisor has to set up its sandbox and say it is ready.
START_TIMEOUT_S = 20.0
#: What the supervisor may take beyond a command's timeout to kill, reap and answer.
REPLY_GRACE_S = 0.6


class SandboxError(Exception):
    """The sandbox could not be started, or stopped answering and was killed."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandbox; every command gets them afresh."""

    timeout_s: float = 10.0  # wall clock per command (InterCode's TIMEOUT_DURATION)
    output_bytes: int = 64 * 1024  # stdout + stderr kept per command; the command is stopped beyond
    processes: int = 64  # RLIMIT_NPROC, counted in the sandbox's own user namespace
    memory_mb: int = 512  # RLIMIT_AS of each process
    total_memory_mb: int = 768  # resident memory of all the sandbox's processes together
    file_mb: int = 16  # RLIMIT_FSIZE: the largest file a command may write
    disk_mb: int = 64  # size of the sandbox's tmpfs: everything it writes, all files together
    inodes: int = 16384  # files and directories the tmpfs may hold
    open_files: int = 256  # RLIMIT_NOFILE

    def __post_init__(self) -> None:
        checks = {"timeout_s": (0.1, 600), "output_bytes": (1024, 16 << 20), "processes": (8, 4096),
                  "memory_mb": (64, 65536), "total_memory_mb": (64, 65536), "file_mb": (1, 65536),
                  "disk_mb": (8, 65536), "inodes": (1024, 10_000_000), "open_files": (32, 65536)}
        for name, (low, high) in checks.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}; got {value}")

    def wire(self) -> dict[str, int | float]:
        return {"timeout_s": self.timeout_s, "output_bytes": self.output_bytes, "processes": self.processes,
                "memory_bytes": self.memory_mb << 20, "total_memory_bytes": self.total_memory_mb << 20,
                "file_bytes": self.file_mb << 20, "open_files": self.open_files}


@dataclass(frozen=True)
class SandboxSpec:
    """What a sandbox is made of: its template, shell, environment and host settings."""

    lower: str  # the read-only template of the root file system
    stage: str  # an empty host directory the tmpfs is mounted on (in the sandbox's own mount namespace)
    shell: str = "/bin/bash"
    env: tuple[tuple[str, str], ...] = ()
    cwd_prefix: str = ""  # shells without BASH_ENV: a prefix that reports the final directory on fd 9
    ro_binds: tuple[tuple[str, str], ...] = (("/usr", "/usr"),)
    uid: int = 65534  # the host uid the sandbox runs as when the server runs as root
    gid: int = 65534
    hostname: str = "intercode"
    overlay: str = "auto"  # auto | on | off (copy the template into the tmpfs)
    seccomp: bool = True
    proc: bool = True
    sys: bool = False
    limits: SandboxLimits = field(default_factory=SandboxLimits)


@dataclass(frozen=True)
class RunResult:
    output: bytes
    exit_code: int | None
    signal: int | None
    timed_out: bool
    truncated: bool
    memory_exceeded: bool
    cwd: str | None
    seconds: float

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


def _send(sock: socket.socket, message: dict) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _wait_readable(fd: int, timeout_s: float) -> None:
    """Wait until `fd` is readable (a pidfd: its process exited). poll(), not select(), which refuses
    descriptors numbered 1024 or more."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll(int(timeout_s * 1000))


def _recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    chunks, got = [], 0
    while got < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket, deadline: float) -> dict:
    (size,) = struct.unpack(">I", _recv_exact(sock, 4, deadline))
    if size > MAX_REPLY_BYTES:
        raise ValueError(f"a reply of {size} bytes")
    message = json.loads(_recv_exact(sock, size, deadline))
    if not isinstance(message, dict):
        raise ValueError("a reply that is not an object")
    return message


class Sandbox:
    """One started sandbox. Thread-safe: requests are serialised."""

    def __init__(self, spec: SandboxSpec, *, build_root: str | None = None):
        self.spec = spec
        self._build_root = build_root
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._inner_fd: int | None = None
        self.inner_pid: int | None = None  # pid 1 of the sandbox, as the host sees it
        self.info: dict[str, Any] = {}
        self.dead = False
        self.started_at = 0.0

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> "Sandbox":
        spec = self.spec
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", SUPERVISOR, str(child.fileno())],
                pass_fds=(child.fileno(),), env={}, cwd="/", stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        finally:
            child.close()
        self._sock = parent
        config = {
            "mode": "build" if self._build_root else "run", "root": self._build_root, "lower": spec.lower,
            "stage": spec.stage, "disk_bytes": spec.limits.disk_mb << 20, "inodes": spec.limits.inodes,
            "overlay": spec.overlay, "ro_binds": [list(b) for b in spec.ro_binds], "proc": spec.proc, "sys": spec.sys,
            "hostname": spec.hostname, "uid": spec.uid, "gid": spec.gid, "seccomp": spec.seccomp,
            "shell": spec.shell, "env": dict(spec.env), "cwd_prefix": spec.cwd_prefix, "limits": spec.limits.wire(),
        }
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            _send(parent, config)
            spawned = _recv(parent, deadline)
            if spawned.get("event") != "spawned":
                raise SandboxError(str(spawned.get("message", spawned))[:2000])
            self.inner_pid = int(spawned["pid"])
            # A pidfd names pid 1 itself (no pid reuse can redirect it): close() kills through it and
            # waits for it, and pid 1 exits only after every other process of its namespace is gone.
            try:
                self._inner_fd = os.pidfd_open(self.inner_pid)
            except (AttributeError, OSError):
                self._inner_fd = None
            ready = _recv(parent, deadline)
            if ready.get("event") != "ready":
                raise SandboxError(str(ready.get("message", ready))[:2000])
        except SandboxError as exc:
            self._kill()
            raise SandboxError(f"the sandbox did not start: {exc}") from None
        except (OSError, EOFError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            self._kill()
            detail = self._stderr_tail()
            raise SandboxError(f"the sandbox did not start ({type(exc).__name__}){': ' + detail if detail else ''}") \
                from None
        self.info = {k: v for k, v in ready.items() if k != "event"}
        self.started_at = time.monotonic()
        return self

    def _stderr_tail(self) -> str:
        """What a dead supervisor wrote to stderr (a Python that could not start says why there)."""
        proc = self._proc
        if proc is None or proc.stderr is None or proc.returncode is None:
            return ""
        try:
            return proc.stderr.read(4000).decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        finally:
            proc.stderr.close()

    def _kill(self) -> None:
        """Kill the sandbox: pid 1 first (through its pidfd), so that the outer process reaps it and exits
        on its own; pid 1 exits only after every process of its namespace is gone. Killing the outer
        process first would work too (pid 1 has a parent-death signal) but would leave pid 1 a zombie
        of whatever reaps orphans on the host, which in a container is often nothing."""
        self.dead = True
        proc, sock = self._proc, self._sock
        inner_fd, self._inner_fd = self._inner_fd, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        if inner_fd is not None:
            try:
                signal.pidfd_send_signal(inner_fd, signal.SIGKILL)
            except OSError:
                pass  # already gone
            try:
                _wait_readable(inner_fd, 10.0)
            finally:
                os.close(inner_fd)
        if proc is not None:
            try:
                proc.wait(timeout=2.0 if inner_fd is not None else 0)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    log.error("a sandbox supervisor did not exit after SIGKILL", extra={"pid": proc.pid})

    def close(self) -> None:
        with self._lock:
            if not self.dead:
                self._kill()
            if self._proc is not None and self._proc.stderr is not None and not self._proc.stderr.closed:
                self._proc.stderr.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The host pid of the supervisor's outer process."""
        return self._proc.pid if self._proc else None

    # --- requests ------------------------------------------------------------------------------------

    def _request(self, message: dict, timeout_s: float) -> dict:
        with self._lock:
            if self.dead or self._sock is None:
                raise SandboxError("the sandbox is closed")
            try:
                _send(self._sock, message)
                reply = _recv(self._sock, time.monotonic() + timeout_s)
            except (OSError, EOFError, TimeoutError, ValueError) as exc:
                self._kill()
                what = "did not answer in time" if isinstance(exc, TimeoutError) else f"failed ({type(exc).__name__})"
                raise SandboxError(f"the sandbox {what} and was stopped") from None
        if "error" in reply:
            raise SandboxError(f"the sandbox refused the request: {str(reply['error'])[:500]}")
        return reply

    def run(self, command: str, cwd: str = "/", timeout_s: float | None = None) -> RunResult:
        """Run one command with the sandbox's shell; SandboxError when the sandbox died."""
        limit = self.spec.limits.timeout_s if timeout_s is None else timeout_s
        reply = self._request({"op": "run", "cmd": command, "cwd": cwd, "timeout": limit},
                              limit + REPLY_GRACE_S)
        try:
            output = base64.b64decode(reply["output"], validate=True)[:self.spec.limits.output_bytes]
            cwd_after = reply.get("cwd")
            return RunResult(
                output=output,
                exit_code=_int_or_none(reply.get("exit_code")),
                signal=_int_or_none(reply.get("signal")),
                timed_out=reply.get("timed_out") is True,
                truncated=reply.get("truncated") is True,
                memory_exceeded=reply.get("memory_exceeded") is True,
                cwd=cwd_after if isinstance(cwd_after, str) and cwd_after.startswith("/") and len(cwd_after) < 4096
                and "\x00" not in cwd_after else None,
                seconds=float(reply.get("seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError, binascii.Error):
            self.close()
            raise SandboxError("the sandbox sent a malformed answer and was stopped") from None

    def snapshot(self) -> tuple[dict[str, tuple], bool]:
        """The file-system state InterCode compares: {path: ("f", exec bit, md5) | ("l", target)}."""
        reply = self._request({"op": "snapshot"}, 30.0)
        entries = reply.get("entries")
        if not isinstance(entries, dict):
            raise SandboxError("the sandbox sent a malformed snapshot")
        state: dict[str, tuple] = {}
        for path, entry in entries.items():
            if isinstance(entry, list) and entry and entry[0] in ("f", "l"):
                state[str(path)] = tuple(entry)
        return state, reply.get("truncated") is True

    def hashes(self, paths: list[str]) -> list[str]:
        reply = self._request({"op": "hashes", "paths": list(paths)}, 30.0)
        values = reply.get("hashes")
        if not isinstance(values, list) or len(values) != len(paths):
            raise SandboxError("the sandbox sent malformed hashes")
        return [str(v) for v in values]


def _int_or_none(value: object) -> int | None:
    return value if type(value) is int else None


class SandboxPool:
    """Started sandboxes of one spec, kept ready (at most `size`), refilled by a background thread."""

    def __init__(self, spec: SandboxSpec, size: int, on_start: Callable[[Sandbox], None] | None = None):
        self.spec = spec
        self.size = max(0, size)
        self._ready: list[Sandbox] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._on_start = on_start

    def _new(self) -> Sandbox:
        sandbox = Sandbox(self.spec).start()
        if self._on_start:
            self._on_start(sandbox)
        return sandbox

    def acquire(self) -> Sandbox:
        """A started sandbox of the spec, ready at once when the pool holds one."""
        with self._lock:
            sandbox = self._ready.pop() if self._ready else None
            self._ensure_thread()
        self._wake.set()
        if sandbox is not None:
            return sandbox
        return self._new()

    def _ensure_thread(self) -> None:  # caller holds self._lock
        if self.size and self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._fill, name="leap-intercode-pool", daemon=True)
            self._thread.start()

    def _fill(self) -> None:
        failures = 0
        while not self._closed:
            with self._lock:
                missing = self.size - len(self._ready)
            if missing <= 0:
                self._wake.wait(timeout=5.0)
                self._wake.clear()
                continue
            try:
                sandbox = self._new()
                failures = 0
            except SandboxError as exc:
                failures += 1
                log.warning("could not start a pooled sandbox", extra={"error": str(exc)})
                time.sleep(min(30.0, 0.5 * 2 ** failures))
                continue
            with self._lock:
                if self._closed:
                    keep = False
                else:
                    self._ready.append(sandbox)
                    keep = True
            if not keep:
                sandbox.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
        self._wake.set()
        for sandbox in ready:
            sandbox.close()
        if self._thread is not None:
            self._thread.join(timeout=30)

