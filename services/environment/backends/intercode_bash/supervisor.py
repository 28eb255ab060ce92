"""The sandbox supervisor: the program that becomes a sandbox and runs shell commands inside it.

The environment server starts it as `python -I -S -B supervisor.py FD` with an empty environment,
where FD is one end of a Unix socket pair; the server sends one JSON configuration and then one
request at a time (4-byte big-endian length + UTF-8 JSON, both ways). This file imports only the
standard library and nothing of the project: it runs with `-I -S` (no site-packages, no
PYTHONPATH), and everything it needs is imported before it drops privileges or changes its root.

Two processes make one sandbox:

- the outer process (the one the server started): drops to the sandbox uid when it runs as root,
  creates new user, mount, pid, network, IPC, UTS (and cgroup) namespaces with unshare(2), maps
  root of the new user namespace to its own unprivileged uid, forks the inner process, tells the
  server its pid and waits for it. Killing the outer process kills the sandbox: the inner process
  has PR_SET_PDEATHSIG = SIGKILL, and when pid 1 of a pid namespace dies the kernel kills every
  process in it.
- the inner process, pid 1 of the new pid namespace: mounts the sandbox's file system (a tmpfs of
  bounded size holding an overlay of the task's read-only template, or a copy of it), binds /usr
  (and the like) read-only, a minimal /dev, a fresh /proc of its own pid namespace, sets the host
  name, brings up the loopback interface, then pivot_root(2)s into the new root and detaches the
  old one, so that nothing of the host's file system is reachable any more. It makes itself
  non-dumpable (so nothing in the sandbox can ptrace it or read its memory) and serves requests:

  run       fork a child that sets its rlimits, drops capabilities from its bounding set, sets
            no_new_privs, installs a seccomp filter and execs `SHELL -c COMMAND`; stdout and stderr
            go to one pipe read up to a byte limit; a wall-clock timeout and a memory budget (the
            sum of resident memory in the namespace) are enforced; afterwards every other process
            in the namespace is killed with kill(-1, SIGKILL) and reaped, so no command leaves
            anything running. The shell reports its final working directory on fd 9.
  snapshot  walk the file system (not following symlinks, skipping the names InterCode's
            .gitignore ignores) and return, for every regular file and symlink, its exec bit and
            md5 digest or link target: the state InterCode's reward compares with `git status`.
  hashes    what `md5sum PATH` (paths containing a dot) or `md5deep -r PATH` (others) would say
            about given paths, as comparable tokens: InterCode's check of changed files.

When the server's end of the socket closes (the server exited or closed the sandbox), pid 1 kills
everything and exits.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import fcntl
import hashlib
import json
import math
import os
import resource
import select
import shutil
import signal
import socket
import stat
import struct
import sys
import time

# --- constants of the Linux ABI ---------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
                   | CLONE_NEWPID | CLONE_NEWNET)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MNT_DETACH = 0x2
# statvfs f_flag bits -> the mount flags a read-only remount must keep (the kernel refuses, inside a
# user namespace, a remount that would clear a flag locked by the parent namespace).
ST_TO_MS = ((0x2, MS_NOSUID), (0x4, MS_NODEV), (0x8, MS_NOEXEC), (0x400, MS_NOATIME),
            (0x800, MS_NODIRATIME), (0x1000, MS_RELATIME))

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# Capabilities a command keeps inside its user namespace (Docker's default set): what a root shell
# needs for ordinary work on its own files. Everything else (CAP_SYS_ADMIN: mounts; CAP_SYS_PTRACE;
# CAP_NET_ADMIN; CAP_SYS_RESOURCE; ...) leaves the bounding set before the shell is executed.
KEEP_CAPS = frozenset({0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31})  # chown dac_override fowner
# fsetid kill setgid setuid setpcap net_bind_service net_raw sys_chroot mknod audit_write setfcap

# Names InterCode's docker.gitignore lists: a pattern without a slash matches at any depth, so a
# directory or file of one of these names is not part of the compared state, nor anything below it.
IGNORED_NAMES = frozenset({"bin", "boot", "dev", "etc", "home", "lib", "media", "opt", "proc", "root", "run",
                           "sbin", "srv", "sys", "usr", "var", ".dockerenv", ".git"})


def _readable(fds: list[int], timeout_s: float) -> list[int]:
    """The descriptors among `fds` that are readable (or closed) within `timeout_s`. poll(), not select():
    select() refuses descriptors numbered 1024 or more, which a busy server's sandboxes reach."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return [fd for fd, _ in poller.poll(max(0, math.ceil(timeout_s * 1000)))]


MAX_MESSAGE = 16 * 1024 * 1024
#: An empty directory of every template (under /run, which the reward ignores), removed at start to
#: check that the overlay can remove template directories.
PROBE_DIR = "/run/leap/probe"
MAX_SNAPSHOT_ENTRIES = 50_000

# --- seccomp ----------------------------------------------------------------------------------------
# A deny-list filter: the system calls that a shell task never needs and that widen the kernel's
# attack surface or could leave the sandbox's namespaces (mount, namespaces, ptrace, keyrings, BPF,
# io_uring, module loading, ...). They fail with EPERM; clone3 fails with ENOSYS so that glibc falls
# back to clone, whose flags are checked (no new namespaces). Sockets of the families that are not
# network-namespaced (vsock: a VM's host; AF_ALG: kernel crypto) are refused too.

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_DENY_NAMES = ("ptrace", "syslog", "personality", "mount", "umount2", "pivot_root", "swapon", "swapoff",
               "reboot", "iopl", "ioperm", "init_module", "finit_module", "delete_module", "quotactl",
               "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "kexec_load",
               "kexec_file_load", "add_key", "request_key", "keyctl", "unshare", "setns", "perf_event_open",
               "name_to_handle_at", "open_by_handle_at", "process_vm_readv", "process_vm_writev", "bpf",
               "userfaultfd", "lookup_dcookie", "io_uring_setup", "io_uring_enter", "io_uring_register",
               "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
               "vhangup", "uselib", "nfsservctl", "fanotify_init", "pidfd_getfd",
               # Memory that no process's resident size shows, so the sandbox's memory watchdog (which adds
               # up its processes' RSS) would not see it: System V shared memory, semaphores and message
               # queues (a detached segment belongs to no process), POSIX message queues, memfd files.
               "shmget", "shmat", "semget", "msgget", "mq_open", "memfd_create", "memfd_secret")
SYSCALLS = {
    "x86_64": dict(ptrace=101, syslog=103, personality=135, mount=165, umount2=166, pivot_root=155, swapon=167,
                   swapoff=168, reboot=169, iopl=172, ioperm=173, init_module=175, finit_module=313,
                   delete_module=176, quotactl=179, acct=163, settimeofday=164, clock_settime=227,
                   clock_adjtime=305, adjtimex=159, kexec_load=246, kexec_file_load=320, add_key=248,
                   request_key=249, keyctl=250, unshare=272, setns=308, perf_event_open=298,
                   name_to_handle_at=303, open_by_handle_at=304, process_vm_readv=310, process_vm_writev=311,
                   bpf=321, userfaultfd=323, lookup_dcookie=212, io_uring_setup=425, io_uring_enter=426,
                   io_uring_register=427, open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432,
                   fspick=433, mount_setattr=442, vhangup=153, uselib=134, nfsservctl=180, fanotify_init=300,
                   pidfd_getfd=438, shmget=29, shmat=30, semget=64, msgget=68, mq_open=240, memfd_create=319,
                   memfd_secret=447, clone=56, clone3=435, socket=41, prlimit64=302),
    "aarch64": dict(ptrace=117, syslog=116, personality=92, mount=40, umount2=39, pivot_root=41, swapon=224,
                    swapoff=225, reboot=142, init_module=105, finit_module=273, delete_module=106, quotactl=60,
                    acct=89, settimeofday=170, clock_settime=112, clock_adjtime=266, adjtimex=171,
                    kexec_load=104, kexec_file_load=294, add_key=217, request_key=218, keyctl=219, unshare=97,
                    setns=268, perf_event_open=241, name_to_handle_at=264, open_by_handle_at=265,
                    process_vm_readv=270, process_vm_writev=271, bpf=280, userfaultfd=282, lookup_dcookie=18,
                    io_uring_setup=425, io_uring_enter=426, io_uring_register=427, open_tree=428, move_mount=429,
                    fsopen=430, fsconfig=431, fsmount=432, fspick=433, mount_setattr=442, vhangup=58,
                    nfsservctl=42, fanotify_init=262, pidfd_getfd=438, shmget=194, shmat=196, semget=190,
                    msgget=186, mq_open=180, memfd_create=279, memfd_secret=447, clone=220, clone3=435,
                    socket=198, prlimit64=261),
}
DENIED_SOCKET_FAMILIES = (15, 38, 40)  # AF_KEY, AF_ALG, AF_VSOCK

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000


def seccomp_program(machine: str) -> list[tuple[int, int, int, int]]:
    """The BPF program of the filter for an architecture, as (code, jt, jf, k) instructions."""
    numbers = SYSCALLS[machine]
    prog: list[tuple[int, int, int, int]] = []
    ret_eperm = _RET_ERRNO | errno.EPERM
    # Any other ABI (x32, 32-bit compat) would bypass the numbers below: kill it.
    prog.append((_BPF_LD_W_ABS, 0, 0, 4))                       # A = seccomp_data.arch
    prog.append((_BPF_JEQ_K, 1, 0, AUDIT_ARCH[machine]))
    prog.append((_BPF_RET_K, 0, 0, _RET_KILL_PROCESS))
    prog.append((_BPF_LD_W_ABS, 0, 0, 0))                       # A = seccomp_data.nr
    if machine == "x86_64":
        prog.append((_BPF_JGE_K, 0, 1, 0x40000000))             # x32 system calls
        prog.append((_BPF_RET_K, 0, 0, _RET_KILL_PROCESS))
    for name in _DENY_NAMES:
        if name in numbers:
            prog.append((_BPF_JEQ_K, 0, 1, numbers[name]))
            prog.append((_BPF_RET_K, 0, 0, ret_eperm))
    prog.append((_BPF_JEQ_K, 0, 1, numbers["clone3"]))
    prog.append((_BPF_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS))
    # clone(flags, ...): refuse namespace flags (the low 32 bits of the first argument).
    prog.append((_BPF_JEQ_K, 0, 3, numbers["clone"]))
    prog.append((_BPF_LD_W_ABS, 0, 0, 16))
    prog.append((_BPF_JSET_K, 0, 1, NAMESPACE_FLAGS))
    prog.append((_BPF_RET_K, 0, 0, ret_eperm))
    # prlimit64(pid, ...): only on the caller itself (pid 0). Another process of the sandbox shares its
    # uid, so the kernel would let a command lower pid 1's limits (its CPU time: the kernel kills it) or
    # raise a sibling's. The shell's own `ulimit` passes pid 0.
    prog.append((_BPF_LD_W_ABS, 0, 0, 0))
    prog.append((_BPF_JEQ_K, 0, 3, numbers["prlimit64"]))
    prog.append((_BPF_LD_W_ABS, 0, 0, 16))                      # the pid (a 32-bit pid_t)
    prog.append((_BPF_JEQ_K, 1, 0, 0))
    prog.append((_BPF_RET_K, 0, 0, ret_eperm))
    # socket(family, ...): refuse the families listed above (nr is loaded again: the checks above
    # may have loaded an argument).
    prog.append((_BPF_LD_W_ABS, 0, 0, 0))
    prog.append((_BPF_JEQ_K, 0, 2 * len(DENIED_SOCKET_FAMILIES) + 1, numbers["socket"]))
    prog.append((_BPF_LD_W_ABS, 0, 0, 16))
    for family in DENIED_SOCKET_FAMILIES:
        prog.append((_BPF_JEQ_K, 0, 1, family))
        prog.append((_BPF_RET_K, 0, 0, _RET_ERRNO | errno.EAFNOSUPPORT))
    prog.append((_BPF_RET_K, 0, 0, _RET_ALLOW))
    return prog


# --- libc -------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl {option}")


# --- framing ----------------------------------------------------------------------------------------

def send(sock: socket.socket, message: dict) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket) -> dict | None:
    """The next message, or None when the server closed its end."""
    header = _recv_exact(sock, 4)
    if header is None:
        return None
    (size,) = struct.unpack(">I", header)
    if size > MAX_MESSAGE:
        return None
    body = _recv_exact(sock, size)
    return None if body is None else json.loads(body)


# --- the outer process ------------------------------------------------------------------------------

def outer(sock: socket.socket, cfg: dict) -> None:
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        # As root, become the unprivileged sandbox user first: RLIMIT_NPROC is not enforced for
        # root, and nothing of the sandbox should map to the host's root.
        uid, gid = int(cfg["uid"]), int(cfg["gid"])
        if uid == 0:
            raise OSError(errno.EPERM, "the sandbox uid must not be 0")
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    # setuid made the process non-dumpable, which would make /proc/self/*_map unwritable for it.
    prctl(PR_SET_DUMPABLE, 1)
    flags = NAMESPACE_FLAGS
    if _libc.unshare(flags) != 0:  # kernels without cgroup namespaces
        flags &= ~CLONE_NEWCGROUP
        _check(_libc.unshare(flags), "unshare (user namespaces may be disabled or blocked by seccomp)")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")
    prctl(PR_SET_DUMPABLE, 0)
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        try:
            inner(sock, cfg, go_read)
        except BaseException as exc:  # noqa: BLE001 - report any setup failure to the server
            try:
                send(sock, {"event": "error", "message": f"{type(exc).__name__}: {exc}"})
            except OSError:
                pass
        os._exit(1)
    os.close(go_read)
    send(sock, {"event": "spawned", "pid": pid, "uid": uid})
    os.write(go_write, b"g")
    os.close(go_write)
    sock.close()
    while True:
        try:
            os.waitpid(pid, 0)
            break
        except ChildProcessError:
            break
        except InterruptedError:
            continue
    os._exit(0)


# --- the inner process (pid 1) ----------------------------------------------------------------------

def _flags_of(path: str) -> int:
    f_flag = os.statvfs(path).f_flag
    return sum(ms for st, ms in ST_TO_MS if f_flag & st)


def _bind(source: str, target: str, *, readonly: bool) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    if readonly:
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | _flags_of(target))


def _make_dev(root: str) -> None:
    dev = root + "/dev"
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64")
    for name in ("null", "zero", "full", "random", "urandom"):
        open(f"{dev}/{name}", "w").close()
        mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(f"{dev}/shm", 0o1777)
    os.chmod(f"{dev}/shm", 0o1777)
    os.mkdir(f"{dev}/pts", 0o755)
    mount(None, dev, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64")


# Parts of /proc that say things about the host rather than the sandbox; hidden as Docker does.
_PROC_MASKED_FILES = ("kcore", "keys", "timer_list", "sched_debug", "sysrq-trigger", "kmsg", "kallsyms")
_PROC_MASKED_DIRS = ("acpi", "scsi", "irq", "bus", "fs")


def _mount_proc(root: str) -> None:
    proc = root + "/proc"
    mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in _PROC_MASKED_FILES:
        if os.path.exists(f"{proc}/{name}"):
            try:
                mount(root + "/dev/null", f"{proc}/{name}", None, MS_BIND)
            except OSError:
                pass
    for name in _PROC_MASKED_DIRS:
        if os.path.isdir(f"{proc}/{name}"):
            try:
                mount("tmpfs", f"{proc}/{name}", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")
            except OSError:
                pass


def _loopback_up() -> None:
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


def inner(sock: socket.socket, cfg: dict, go_read: int) -> None:
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # The outer process lives outside this pid namespace (getppid() says 0), so its death before the
    # line above shows as end of file on the go pipe: it writes one byte there once it is ready.
    if os.read(go_read, 1) != b"g":
        os._exit(1)
    os.close(go_read)
    info: dict = {}

    mount(None, "/", None, MS_REC | MS_PRIVATE)
    if cfg["mode"] == "build":
        root = cfg["root"]
        mount(root, root, None, MS_BIND | MS_REC)
        info["fs"] = "bind"
    else:
        stage = cfg["stage"]
        mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV,
              f"mode=0755,size={int(cfg['disk_bytes'])},nr_inodes={int(cfg['inodes'])}")
        root = stage + "/root"
        for name in ("upper", "work", "root"):
            os.mkdir(f"{stage}/{name}", 0o755)
        info["fs"] = "copy"
        if cfg.get("overlay", "auto") != "off":
            try:
                # userxattr: inside a user namespace overlayfs keeps whiteouts and opaque directories
                # in user.* extended attributes (tmpfs has them since Linux 6.6).
                mount("overlay", root, "overlay", MS_NOSUID | MS_NODEV,
                      f"lowerdir={cfg['lower']},upperdir={stage}/upper,workdir={stage}/work,userxattr")
                info["fs"] = "overlay"
                # Removing a directory of the template must work (an overlay that cannot record the
                # removal answers EIO): the template holds an empty directory to try it on.
                probe = root + PROBE_DIR
                if os.path.isdir(probe):
                    try:
                        os.rmdir(probe)
                    except OSError:
                        _check(_libc.umount2(os.fsencode(root), MNT_DETACH), "unmount the overlay")
                        info["fs"] = "copy"
                        info["overlay_error"] = "cannot remove a template directory"
            except OSError as exc:
                info["overlay_error"] = str(exc)
                if cfg.get("overlay") == "on":
                    raise
            if info["fs"] == "copy" and cfg.get("overlay") == "on":
                raise OSError(errno.EIO, "the overlay cannot remove template directories")
        if info["fs"] == "copy":
            shutil.copytree(cfg["lower"], root, symlinks=True, dirs_exist_ok=True)
            mount(root, root, None, MS_BIND | MS_REC)  # pivot_root wants a mount point
    for source, target in cfg.get("ro_binds", ()):
        _bind(source, root + target, readonly=True)
    _make_dev(root)
    info["proc"] = False
    if cfg.get("proc", True):
        try:
            _mount_proc(root)
            info["proc"] = True
        except OSError as exc:  # a container that masks its /proc refuses new proc mounts
            info["proc_error"] = str(exc)
    if cfg.get("sys"):
        _bind("/sys", root + "/sys", readonly=True)
    hostname = cfg.get("hostname", "sandbox").encode()
    _check(_libc.sethostname(hostname, len(hostname)), "sethostname")
    try:
        _loopback_up()
        info["loopback"] = True
    except OSError:
        info["loopback"] = False

    os.chdir(root)
    machine = os.uname().machine
    _check(_libc.syscall(_SYS_PIVOT_ROOT[machine], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")
    prctl(PR_SET_DUMPABLE, 0)
    # As pid 1 of its namespace, this process receives from inside the namespace only the signals it
    # has handlers for: with every disposition at default, nothing in the sandbox can signal it.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    info["seccomp"] = machine in SYSCALLS and bool(cfg.get("seccomp", True))
    send(sock, {"event": "ready", **info})
    serve(sock, cfg, info)


# --- requests ---------------------------------------------------------------------------------------

def serve(sock: socket.socket, cfg: dict, info: dict) -> None:
    while True:
        try:
            request = recv(sock)
        except (OSError, ValueError):
            request = None
        if request is None:
            _kill_all()
            os._exit(0)
        op = request.get("op")
        try:
            if op == "run":
                reply = run(sock, cfg, info, request)
            elif op == "snapshot":
                reply = snapshot()
            elif op == "hashes":
                reply = {"hashes": [path_hash(p) for p in request.get("paths", ())[:10_000]]}
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # noqa: BLE001 - one bad request must not end the sandbox
            _kill_all()
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        send(sock, reply)


def _kill_all() -> None:
    try:
        os.kill(-1, signal.SIGKILL)  # from pid 1: every process of the namespace but this one
    except ProcessLookupError:
        pass


def _reap(deadline: float) -> None:
    """Kill and wait for every child (orphans are children of pid 1) until none is left or the deadline
    passes. Killing again on every round catches a process forked while the previous kill went by."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            _kill_all()
            time.sleep(0.002)


def _resident_bytes() -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit() and name != "1":
            try:
                with open(f"/proc/{name}/statm", "rb") as f:
                    total += int(f.read().split()[1]) * page
            except (OSError, ValueError, IndexError):
                pass
    return total


def _child(cfg: dict, request: dict, out_w: int, cwd_w: int) -> None:
    """In the forked child: limits, privileges, then exec the shell. Never returns."""
    try:
        os.setsid()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.dup2(cwd_w, 9)
        os.closerange(3, 9)
        os.closerange(10, 65536)
        for sig in range(1, signal.NSIG):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.umask(0o022)
        try:
            os.chdir(request.get("cwd") or "/")
        except OSError:
            os.chdir("/")
        limits = cfg["limits"]
        timeout = float(request.get("timeout", limits["timeout_s"]))
        for res, value in ((resource.RLIMIT_NPROC, limits["processes"]),
                           (resource.RLIMIT_AS, limits["memory_bytes"]),
                           (resource.RLIMIT_FSIZE, limits["file_bytes"]),
                           (resource.RLIMIT_NOFILE, limits["open_files"]),
                           (resource.RLIMIT_CPU, int(timeout) + 2), (resource.RLIMIT_CORE, 0),
                           (resource.RLIMIT_SIGPENDING, 1024), (resource.RLIMIT_MSGQUEUE, 1 << 20),
                           (resource.RLIMIT_MEMLOCK, 1 << 20)):
            hard = resource.getrlimit(res)[1]
            value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
            resource.setrlimit(res, (value, value))  # soft = hard: nothing in the sandbox can raise it
        # Every capability the kernel knows (the first number it refuses with EINVAL is past its last).
        for cap in range(64):
            if cap in KEEP_CAPS:
                continue
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                if ctypes.get_errno() == errno.EINVAL and cap > 31:
                    break
                _check(-1, f"drop capability {cap}")
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        machine = os.uname().machine
        if cfg.get("seccomp", True) and machine in SYSCALLS:
            program = seccomp_program(machine)
            filters = (_SockFilter * len(program))(*[_SockFilter(*ins) for ins in program])
            fprog = _SockFprog(len(program), filters)
            _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp")
        shell = cfg["shell"]
        env = dict(cfg["env"])
        command = request["cmd"]
        if cfg.get("cwd_prefix"):  # shells without BASH_ENV: report the directory from an EXIT trap
            command = cfg["cwd_prefix"] + command
        os.execve(shell, [shell, "-c", command], env)
    except BaseException as exc:  # noqa: BLE001
        try:
            os.write(2, f"sandbox: cannot start the command: {exc}\n".encode())
        except OSError:
            pass
    os._exit(127)


def run(sock: socket.socket, cfg: dict, info: dict, request: dict) -> dict:
    limits = cfg["limits"]
    timeout = max(0.05, min(float(request.get("timeout", limits["timeout_s"])), 3600.0))
    max_output = max(0, int(request.get("max_output", limits["output_bytes"])))
    memory_budget = int(limits["total_memory_bytes"])
    out_r, out_w = os.pipe()
    cwd_r, cwd_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(cwd_r)
        _child(cfg, request, out_w, cwd_w)
    os.close(out_w)
    os.close(cwd_w)
    # A pidfd turns readable when the shell exits, so poll() wakes at once instead of at the next check.
    try:
        exit_fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        exit_fd = -1
    output = bytearray()
    cwd_data = bytearray()
    status: int | None = None
    timed_out = truncated = memory_exceeded = False
    deadline = start + timeout
    next_memory_check = start + 0.05
    open_fds = {out_r, cwd_r}
    try:
        while open_fds or status is None:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            waiting = list(open_fds) + [sock.fileno()] + ([exit_fd] if exit_fd >= 0 and status is None else [])
            for fd in _readable(waiting, min(0.05, deadline - now)):
                if fd == exit_fd:
                    continue  # the waitpid below collects the status
                if fd == sock.fileno():
                    # The server never sends during a command; readable means it went away.
                    if not sock.recv(1, socket.MSG_PEEK):
                        _kill_all()
                        os._exit(0)
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    open_fds.discard(fd)
                elif fd == out_r:
                    output += chunk
                    if len(output) > max_output:
                        del output[max_output:]
                        truncated = True
                elif len(cwd_data) < 8192:
                    cwd_data += chunk[:8192 - len(cwd_data)]
            if truncated:
                break
            if status is None:
                done, wstatus = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = wstatus
                    # The shell has exited: whatever it left behind (background jobs holding the pipe)
                    # is killed, so that reading ends at once.
                    _kill_all()
            if info.get("proc") and time.monotonic() >= next_memory_check:
                next_memory_check = time.monotonic() + 0.05
                if _resident_bytes() > memory_budget:
                    memory_exceeded = True
                    break
    finally:
        _kill_all()
        if status is None:
            try:
                done, wstatus = os.waitpid(pid, 0)
                status = wstatus
            except ChildProcessError:
                pass
        # Read what is left in the pipes (every writer is dead now), still within the limit.
        for fd in (out_r, cwd_r):
            if fd in open_fds:
                try:
                    os.set_blocking(fd, False)
                    while True:
                        chunk = os.read(fd, 65536)
                        if not chunk:
                            break
                        if fd == out_r:
                            room = max_output - len(output)
                            if len(chunk) > room:
                                truncated = True
                            output += chunk[:max(room, 0)]
                        elif len(cwd_data) < 8192:
                            cwd_data += chunk[:8192 - len(cwd_data)]
                except BlockingIOError:
                    pass
                except OSError:
                    pass
        os.close(out_r)
        os.close(cwd_r)
        if exit_fd >= 0:
            os.close(exit_fd)
        _reap(time.monotonic() + 0.4)  # within the server's grace; a straggler is reaped next time
    exit_code = signal_number = None
    if status is not None:
        if os.WIFEXITED(status):
            exit_code = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            signal_number = os.WTERMSIG(status)
    lines = [line for line in bytes(cwd_data).split(b"\n") if line.startswith(b"/")]
    cwd = lines[-1].decode("utf-8", "replace") if lines else None
    if cwd is not None and not os.path.isdir(cwd):
        cwd = None
    return {"output": base64.b64encode(bytes(output)).decode(), "exit_code": exit_code, "signal": signal_number,
            "timed_out": timed_out, "truncated": truncated, "memory_exceeded": memory_exceeded, "cwd": cwd,
            "seconds": round(time.monotonic() - start, 4)}


# --- file-system state ------------------------------------------------------------------------------

def _md5_of_file(path: str, seen: dict | None = None) -> str | None:
    """md5 of a regular file, opened without following a final symlink; None for anything else.

    `seen` (one per request) holds the digests of the files already read, by inode: hard links to one
    file (a command can make thousands in a second) are read once, so a request reads at most the
    bytes the sandbox's file system holds."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if seen is not None and key in seen:
            return seen[key]
        digest = hashlib.md5()
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                if seen is not None:
                    seen[key] = digest.hexdigest()
                return digest.hexdigest()
            digest.update(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)


def snapshot() -> dict:
    """Every regular file and symlink under / that InterCode's .gitignore does not exclude."""
    entries: dict[str, list] = {}
    seen: dict = {}
    truncated = False
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir("/" + rel) as it:
                children = list(it)
        except OSError:
            continue
        for entry in children:
            if entry.name in IGNORED_NAMES:
                continue
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)
                continue
            if len(entries) >= MAX_SNAPSHOT_ENTRIES:
                truncated = True
                continue
            if stat.S_ISLNK(st.st_mode):
                try:
                    entries[path] = ["l", os.readlink("/" + path)]
                except OSError:
                    pass
            elif stat.S_ISREG(st.st_mode):
                digest = _md5_of_file("/" + path, seen)
                if digest is not None:
                    entries[path] = ["f", 1 if st.st_mode & stat.S_IXUSR else 0, digest]
    return {"entries": entries, "truncated": truncated}


def path_hash(path: str) -> str:
    """A token equal for two sandboxes exactly when InterCode's hash command would print the same.

    InterCode runs `md5sum PATH` when the path contains a dot, else `md5deep -r PATH`, from /."""
    if not isinstance(path, str) or "\x00" in path:
        return "invalid"
    full = "/" + path.lstrip("/")
    if "." in path:  # md5sum: follows symlinks; a directory or a missing path is an error message
        try:
            st = os.stat(full)
        except OSError:
            return "missing"
        if stat.S_ISDIR(st.st_mode):
            return "directory"
        real = os.path.realpath(full)
        return "md5:" + str(_md5_of_file(real))
    # md5deep -r: every regular file below the path, by relative name.
    try:
        st = os.lstat(full)
    except OSError:
        return "missing"
    if stat.S_ISREG(st.st_mode):
        return "md5:" + str(_md5_of_file(full))
    if not stat.S_ISDIR(st.st_mode):
        return "other"
    digest = hashlib.md5()
    count = 0
    seen: dict = {}
    for dirpath, dirnames, filenames in os.walk(full):
        dirnames.sort()
        for name in sorted(filenames):
            file_digest = _md5_of_file(os.path.join(dirpath, name), seen)
            if file_digest is not None:
                digest.update(f"{os.path.relpath(os.path.join(dirpath, name), full)}\0{file_digest}\n".encode())
                count += 1
            if count > MAX_SNAPSHOT_ENTRIES:
                return "tree:too-many"
    return f"tree:{count}:{digest.hexdigest()}"


def main() -> None:
    fd = int(sys.argv[1])
    sock = socket.socket(fileno=fd)
    cfg = recv(sock)
    if cfg is None:
        os._exit(2)
    try:
        outer(sock, cfg)
    except BaseException as exc:  # noqa: BLE001 - the server reads the reason from the socket
        try:
            send(sock, {"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        except OSError:
            pass
        os._exit(1)


if __name__ == "__main__":
    main()
