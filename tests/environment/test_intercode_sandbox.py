"""The shell sandbox under attack, through a running server, while other sessions keep working.

Every attack is one Step of an agent session on a server whose per-command timeout is 2 s; each call
must come back with a status within that timeout plus one second (the gRPC deadline of the call).
Meanwhile a bystander session in another thread runs an ordinary command over and over and checks its
answer. Afterwards nothing of a closed session's sandbox may still run.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import grpc
import pytest

from services.environment.client import EnvironmentClient
from tests.environment.intercode_helpers import TIMEOUT_S, TOKEN, make_backend, sandbox_of, start_server

ENV = "intercode_bash"
DEADLINE_S = TIMEOUT_S + 1.0  # the bound on every call
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server():
    backend = make_backend()
    backend.template(2)  # the bystander's file system, built before the clock of any call starts
    srv = start_server(backend, max_sessions=32)
    yield srv
    srv.stop(grace=0)
    backend.close()


@pytest.fixture(scope="module")
def env(server):
    with EnvironmentClient(f"127.0.0.1:{server.port}", timeout_s=30) as client:
        yield client


class Bystander(threading.Thread):
    """Another session that keeps running `cat` and checking the answer while the attacks run."""

    def __init__(self, env: EnvironmentClient):
        super().__init__(daemon=True)
        self.env = env
        self.stop = threading.Event()
        self.answers = 0
        self.failures: list[str] = []
        self.session = env.reset(ENV, task_id="fs2-000", horizon=1000).session_id

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                obs = self.env.step(self.session, "cat /system/text1.txt", timeout_s=DEADLINE_S)
                if obs.text != "Hello world!\n":
                    self.failures.append(f"wrong answer: {obs.text[:200]!r}")
                self.answers += 1
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code()}: {exc.details()}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def bystander(env):
    thread = Bystander(env)
    thread.start()
    yield thread
    thread.stop.set()
    thread.join(timeout=10)
    env.close_session(thread.session)


@pytest.fixture(scope="module")
def victim(env, bystander):
    """The attacker's session (fs1), and its sandbox's pid namespace for the final check."""
    reset = env.reset(ENV, task_id="fs1-000", horizon=1000)
    yield reset.session_id


def run(env, session: str, command: str):
    """One step within the deadline the issue sets (a DEADLINE_EXCEEDED fails the test)."""
    return env.step(session, command, timeout_s=DEADLINE_S)


def test_no_way_out_of_the_file_system(env, victim, tmp_path):
    canary = tmp_path / "canary.txt"
    secret = f"canary-{os.getpid()}-{time.time_ns()}"
    canary.write_text(secret)
    for command in (f"cat {canary}", f"ls {tmp_path}", f"ls {REPO}", "cat /etc/shadow", "ls /root/.ssh",
                    f"cat {REPO}/pyproject.toml", "ls /home", "cat /proc/1/root/etc/hostname"):
        obs = run(env, victim, command)
        assert secret not in obs.text and "leap-serve" not in obs.text, (command, obs.text)
        assert obs.info["exit_code"] != "0" or command == "ls /home", (command, obs.text)
    # A search over everything the sandbox can see (but the host's /usr, read-only, and /proc).
    found = run(env, victim, f"grep -rls --exclude-dir=usr --exclude-dir=proc --exclude-dir=sys -e {secret} / "
                             "; echo rc=$?")
    assert re.fullmatch(r"rc=[12]\n", found.text), found.text  # no file holds it (2: some were unreadable)
    # Symlinks and chroot tricks resolve inside the sandbox.
    escape = run(env, victim, "ln -s / /tmp/up && ls /tmp/up/../../../ && python3 -c \"import os; os.mkdir('/tmp/j'); "
                              "os.chroot('/tmp/j'); [os.chdir('..') for _ in range(64)]; os.chroot('.'); "
                              "print(sorted(os.listdir('/')))\"")
    assert "testbed" in escape.text and "work" not in escape.text.split() and "old_root" not in escape.text
    # Writes stay inside: the host's /usr is read-only and a file at / exists only in the sandbox.
    write = run(env, victim, "touch /usr/leap-evil; echo x > /leap-written; cat /leap-written")
    assert "Read-only file system" in write.text and write.text.rstrip().endswith("x")
    assert not os.path.exists("/usr/leap-evil") and not os.path.exists("/leap-written")


def test_no_view_of_host_processes_or_secrets(env, victim, server):
    procs = run(env, victim, "ps -e -o pid=,args=")
    lines = [line for line in procs.text.splitlines() if line.strip()]
    assert len(lines) <= 4 and "pytest" not in procs.text, procs.text  # pid 1 (the supervisor), the shell, ps
    assert int(lines[0].split()[0]) == 1
    # The sandbox's pid 1 is its supervisor: not the host's init, and not readable (non-dumpable).
    one = run(env, victim, "cat /proc/1/environ; ls /proc/1/root/; cat /proc/1/mem; head -c 100 /proc/1/maps")
    assert one.text.count("Permission denied") == 4, one.text
    host_init = Path("/proc/1/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    cmdline = run(env, victim, "tr '\\0' ' ' < /proc/1/cmdline")
    assert "supervisor.py" in cmdline.text and host_init not in cmdline.text.split()
    # The server's environment (the privileged token) reaches no command.
    leak = run(env, victim, f"env; cat /proc/*/environ 2>/dev/null; grep -r {TOKEN} /proc/*/environ 2>/dev/null")
    assert TOKEN not in leak.text and "LEAP_" not in leak.text
    # Kernel interfaces that talk about or to the host are closed.
    kernel = run(env, victim, "echo b > /proc/sysrq-trigger && echo wrote; head -c 1 /proc/kcore && echo read; "
                              "dmesg > /dev/null && echo dmesg; ls /sys | wc -l")
    assert kernel.text.splitlines()[-1] == "0" and not re.search(r"^(wrote|read|dmesg)$", kernel.text, re.M), \
        kernel.text


def test_no_network(env, victim, server):
    obs = run(env, victim, f"python3 -c \"import socket; s = socket.socket(); s.settimeout(1); "
                           f"print(s.connect_ex(('127.0.0.1', {server.port})))\"; ip -o link 2>/dev/null | wc -l; "
                           "curl -sS -m 1 http://1.1.1.1/ ; python3 -c \"import socket; socket.socket(40, 1)\"")
    lines = obs.text.splitlines()
    assert lines[0] == "111", obs.text  # ECONNREFUSED: the server's port is not in this network namespace
    assert "Couldn't connect" in obs.text or "unreachable" in obs.text.lower(), obs.text
    assert "Address family not supported" in obs.text, obs.text  # AF_VSOCK: the VM's host


def test_namespaces_and_mounts_are_closed(env, victim):
    obs = run(env, victim, "unshare -Ur true; echo unshare=$?; "
                           "python3 -c \"import ctypes; l = ctypes.CDLL(None, use_errno=True); "
                           "print('mount', l.mount(b'none', b'/tmp', b'tmpfs', 0, None), ctypes.get_errno()); "
                           "print('ptrace', l.ptrace(16, 1, 0, 0), ctypes.get_errno()); "
                           "print('bpf', l.syscall(321, 0, 0, 0), ctypes.get_errno())\"; "
                           "su -c id nobody; echo su=$?; grep Cap /proc/self/status")
    assert "unshare=1" in obs.text and "mount -1 1" in obs.text and "ptrace -1 1" in obs.text
    assert "su=" in obs.text and not re.search(r"^uid=65534", obs.text, re.M)
    bounding = int(re.search(r"CapBnd:\s*([0-9a-f]+)", obs.text).group(1), 16)
    assert not bounding & (1 << 21) and not bounding & (1 << 19) and not bounding & (1 << 12)  # admin ptrace net


def test_no_memory_outside_any_process(env, victim):
    """System V shared memory (a detached segment belongs to no process), semaphores, message queues and
    memfd files hold memory that the sandbox's watchdog, which adds up its processes' RSS, would not see:
    each is refused (EPERM)."""
    probe = ("import ctypes, os; l = ctypes.CDLL(None, use_errno=True)\n"
             "for name, args in (('shmget', (0, 50 << 20, 0o1600)), ('semget', (0, 1, 0o1600)), "
             "('msgget', (0, 0o1600))):\n"
             "    print(name, getattr(l, name)(*args), ctypes.get_errno())\n"
             "print('mq_open', l.mq_open(b'/q', 0o100 | 2, 0o600, None), ctypes.get_errno())\n"
             "try:\n    os.memfd_create('x'); print('memfd ok')\n"
             "except OSError as e:\n    print('memfd', e.errno)\n")
    obs = run(env, victim, f"python3 -c \"{probe}\"; ipcs -m | grep -c 0x || true")
    for line in ("shmget -1 1", "semget -1 1", "msgget -1 1", "mq_open -1 1", "memfd 1"):
        assert line in obs.text, obs.text


def test_hard_links_do_not_multiply_the_work_of_scoring(env, bystander):
    """Hard links cost an inode, not disk: 3,000 links to one 8 MB file would make the submission's
    snapshot read 24 GB (tens of seconds of a server thread). Each file is read once per inode."""
    session = env.reset(ENV, task_id="fs1-000", horizon=10).session_id
    try:
        made = run(env, session, "python3 -c \"import os\nos.mkdir('/big')\n"
                                 "with open('/big/f', 'wb') as f: f.write(b'x' * (8 << 20))\n"
                                 "for i in range(3000): os.link('/big/f', '/big/l%d' % i)\n"
                                 "print(len(os.listdir('/big')))\"")
        assert made.text.strip() == "3001", made.text
        started = time.monotonic()
        scored = env.step(session, "submit", timeout_s=30)
        assert scored.done and time.monotonic() - started < 5.0, time.monotonic() - started
    finally:
        env.close_session(session)


@pytest.mark.parametrize("name, command", [
    ("fork bomb", ":(){ :|:& };:"),
    ("fork bomb in the foreground", "bomb() { bomb | bomb; }; bomb"),
    ("yes", "yes"),
    ("endless sleep", "sleep 100000"),
    ("10 GB dd", "dd if=/dev/zero of=/tmp/big bs=1M count=10240"),
    ("kill everything", "kill -9 -1"),
    ("busy loop", "while :; do :; done"),
    ("fill the disk", "for i in $(seq 1 8); do head -c 7M /dev/zero > /tmp/fill$i; done; df -m /tmp | tail -1"),
    ("memory", "python3 -c \"b = b'x' * (1 << 30)\""),
    # Three processes, each under the per-process limit, together over the sandbox's budget. One
    # interpreter forks the other two, so a loaded machine still reaches the budget well inside the 2 s.
    ("memory together", "python3 -c \"import os, time\nfor _ in range(2):\n    if os.fork() == 0: break\n"
                        "b = b'x' * (220 << 20); time.sleep(30)\""),
    ("background survivor", "nohup sleep 100000 > /dev/null 2>&1 &"),
    ("no newline", "head -c 100000 /dev/zero | tr '\\0' 'a'"),
    ("binary", "head -c 2000 /dev/urandom"),
    ("signal the supervisor", "kill -TERM 1; kill -INT 1; kill -STOP 1; kill -SEGV 1; kill -KILL 1; sleep 0.2"),
    # Same uid, so the kernel would allow it: CPU time 0 makes the kernel kill pid 1, 3 files starve it.
    ("limits of the supervisor", "prlimit --pid 1 --cpu=0:0; prlimit --pid 1 --nofile=3:3; sleep 1.2; "
                                 "ulimit -n 64; ulimit -n"),
    ("many files", "python3 -c \"import os\nfor i in range(20000): os.mkdir('/tmp/d%d' % i)\"; ls /tmp | wc -l; "
                   "rm -rf /tmp/d*"),
])
def test_limits_contain(env, victim, name, command):
    obs = run(env, victim, command)
    assert obs.step >= 1 and not obs.done
    if name == "yes" or name == "no newline":
        assert "[output cut at" in obs.text and len(obs.text.encode()) < 17 * 1024
    if name in ("endless sleep", "busy loop"):
        assert "[the command was stopped after 2 s]" in obs.text
    if name == "10 GB dd":
        assert obs.info["exit_code"] != "0"
        size = run(env, victim, "stat -c %s /tmp/big; rm -f /tmp/big")
        assert int(size.text.split()[0]) <= 8 << 20  # RLIMIT_FSIZE (file_mb=8)
    if name == "fill the disk":
        assert "No space left on device" in obs.text or "File size limit" in obs.text, obs.text
        run(env, victim, "rm -f /tmp/fill*")
    if name == "memory":
        assert "MemoryError" in obs.text
    if name == "many files":
        assert "No space left on device" in obs.text and int(obs.text.split()[-1]) < 16384  # the tmpfs's inodes
    if name == "limits of the supervisor":
        assert obs.text.count("Operation not permitted") == 2 and obs.text.endswith("64\n"), obs.text
    if name == "memory together":
        assert "memory" in obs.text and "stopped" in obs.text, obs.text
    # The sandbox is still there, clean, and nothing of the attack runs on.
    after = run(env, victim, "echo alive; ps -e -o pid=,comm= > /tmp/ps.txt; grep -v -x -E ' *[0-9]+ (bash|ps)' "
                             "/tmp/ps.txt")
    assert after.text == "alive\n      1 python\n", (name, after.text)  # pid 1 (the supervisor), bash and ps


def test_bystander_kept_answering(bystander):
    time.sleep(0.3)
    assert bystander.answers >= 10 and not bystander.failures, (bystander.answers, bystander.failures[:5])


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _members(namespace: str) -> list[int]:
    """Living processes of a pid namespace, from the host's /proc (zombies have no namespace link)."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _pid_namespace(int(name)) == namespace:
            members.append(int(name))
    return members


def test_nothing_runs_after_close(env, server, victim):
    if os.geteuid() != 0:
        pytest.skip("reading another uid's namespace links needs root")
    sessions = [victim] + [env.reset(ENV, task_id=t).session_id for t in ("fs3-000", "fs5-000")]
    namespaces = []
    for sid in sessions:
        run(env, sid, "sleep 1000 > /dev/null 2>&1 & sleep 0.2")  # a detached job the shell leaves behind
        sandbox = sandbox_of(server, sid)
        namespace = _pid_namespace(sandbox.inner_pid)
        assert namespace and _members(namespace), sid
        namespaces.append((namespace, sandbox.pid, sandbox.inner_pid))
    for sid in sessions:
        env.close_session(sid)
    for namespace, outer, inner in namespaces:
        assert _members(namespace) == [], namespace
        for pid in (outer, inner):
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] if Path(f"/proc/{pid}").exists() \
                else "gone"
            assert state in ("gone", "Z"), (pid, state)
