"""Root file systems for the sandbox: one read-only template per InterCode file system.

InterCode builds a Docker image per file system: Ubuntu (Alpine for the fifth) with a set of tools,
the setup script run once (`RUN /setup_nl2b_fs_N.sh`), the script itself left at /, ENV lines, and a
git commit of / (minus the directories its .gitignore lists) to diff against. The template here is
the same thing without Docker:

- a skeleton: the host's merged-/usr symlinks (bin -> usr/bin ...), empty mount points for /usr,
  /proc, /dev and /sys, /tmp, /root with the skeleton dot files, /var with an empty log folder;
- /etc: a copy of the host's (the image's) /etc, keeping only what every user may read and leaving
  out password hashes, private keys and host identity (shadow, gshadow, sudoers, ssh host keys,
  ssl/private, machine-id); hostname, hosts and resolv.conf are the sandbox's own;
- the setup script, run once as root inside a sandbox whose root is the template itself (so a
  script can only touch the template), always with bash (Alpine's busybox sh understands `echo -e`,
  Debian's dash does not, and fs 5's script relies on it);
- InterCode's .gitignore at /, as in the images.

/usr (and /var/lib/dpkg, /var/lib/apt where they exist) are not copied: every sandbox binds the
host's read-only. The baseline, InterCode's initial commit, is the snapshot of a fresh sandbox of
the template, taken once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass, replace

from services.environment.backends.intercode_bash.data import Family
from services.environment.backends.intercode_bash.sandbox import Sandbox, SandboxError, SandboxLimits, SandboxSpec
from services.runtime.errors import FailedPrecondition

log = logging.getLogger("leap.environment.intercode_bash")

HOSTNAME = "intercode"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASH_ENV_FILE = "/etc/leap/bash_env"
# Reports the shell's final working directory on fd 9 (stderr first, so that a closed fd 9 prints
# nothing). bash reads it through BASH_ENV before the command; it unsets BASH_ENV so that scripts the
# command starts do not read it again.
BASH_ENV_TEXT = "unset BASH_ENV\ntrap 'builtin pwd 2>/dev/null >&9' EXIT\n"
SH_CWD_PREFIX = "trap 'pwd 2>/dev/null >&9' EXIT; "
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
EXTRA_RO_BINDS = ("/var/lib/dpkg", "/var/lib/apt")
# Files of the host's /etc that are never copied, whatever their permissions.
ETC_SKIP = frozenset({
    "shadow", "shadow-", "gshadow", "gshadow-", "passwd-", "group-", "subuid", "subuid-", "subgid", "subgid-",
    "sudoers", "sudoers.d", "ssl/private", "security/opasswd", "machine-id", "hostname", "hosts", "resolv.conf",
    "mtab", ".pwd.lock", "credstore", "credstore.encrypted", "kubernetes", "leap",
})
ETC_MAX_FILE = 4 << 20
ETC_MAX_TOTAL = 64 << 20
SETUP_TIMEOUT_S = 120.0
WORK_PREFIX = "leap-intercode-"
LOCK_NAME = "owner.lock"


@dataclass(frozen=True)
class Template:
    """A built file system: its sandbox spec (lower = the template) and its baseline state."""

    family: int
    spec: SandboxSpec
    baseline: dict[str, tuple]
    setup_output: str


def _world_readable(st: os.stat_result, directory: bool) -> bool:
    need = stat.S_IROTH | (stat.S_IXOTH if directory else 0)
    return st.st_mode & need == need


def copy_etc(source: str, target: str) -> int:
    """Copy the world-readable part of `source` (the host's /etc) to `target`; returns bytes copied."""
    total = 0
    os.makedirs(target, mode=0o755, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(source):
        rel_dir = os.path.relpath(dirpath, source)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep_dirs = []
        for name in sorted(dirnames):
            rel = os.path.join(rel_dir, name)
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if rel in ETC_SKIP:
                continue
            if stat.S_ISLNK(st.st_mode):  # os.walk lists symlinks to directories as directories
                os.symlink(os.readlink(path), os.path.join(target, rel))
            elif _world_readable(st, directory=True):
                os.mkdir(os.path.join(target, rel), 0o755)
                keep_dirs.append(name)
        dirnames[:] = keep_dirs
        for name in sorted(filenames):
            rel = os.path.join(rel_dir, name)
            path = os.path.join(dirpath, name)
            if rel in ETC_SKIP or name.startswith("ssh_host_"):
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(path), os.path.join(target, rel))
            elif stat.S_ISREG(st.st_mode) and _world_readable(st, directory=False) and st.st_size <= ETC_MAX_FILE \
                    and total + st.st_size <= ETC_MAX_TOTAL:
                try:
                    shutil.copyfile(path, os.path.join(target, rel), follow_symlinks=False)
                except OSError:
                    continue
                os.chmod(os.path.join(target, rel), stat.S_IMODE(st.st_mode) & 0o755)
                total += st.st_size
    files = {
        "hostname": f"{HOSTNAME}\n",
        "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{HOSTNAME}\n",
        "resolv.conf": "# The sandbox has no network: nothing answers here.\nnameserver 127.0.0.1\n",
        "machine-id": "6c65617020696e746572636f64652031\n",
        "leap/bash_env": BASH_ENV_TEXT,
    }
    os.makedirs(os.path.join(target, "leap"), mode=0o755, exist_ok=True)
    for rel, text in files.items():
        with open(os.path.join(target, rel), "w") as f:
            f.write(text)
        os.chmod(os.path.join(target, rel), 0o644)
    os.symlink("../proc/self/mounts", os.path.join(target, "mtab"))
    return total


def _chown_tree(path: str, uid: int, gid: int) -> None:
    os.lchown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def _rmtree(path: str) -> None:
    """Remove the work directory; a directory inside it without write permission (a setup script's
    `chmod`) is made writable first. Nothing outside `path` is ever touched."""
    root = os.path.realpath(path)

    def retry(function, failed, exc_info):
        parent = os.path.realpath(os.path.dirname(failed))
        if parent != root and not parent.startswith(root + os.sep):
            log.warning("could not remove %s: %s", failed, exc_info[1])
            return
        try:
            os.chmod(parent, 0o700)
            function(failed)
        except OSError as exc:
            log.warning("could not remove %s: %s", failed, exc)

    shutil.rmtree(root, onerror=retry)


def remove_stale_work_dirs(parent: str, keep: str) -> list[str]:
    """Remove the work directories in `parent` left by servers that are gone (their lock is free).
    Only directories of this user, named like ours and holding our lock file, are considered."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(parent, name)
        if not name.startswith(WORK_PREFIX) or path == keep:
            continue
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live server's
            os.close(fd)
            continue
        try:
            _rmtree(path)
            removed.append(path)
        finally:
            os.close(fd)
    if removed:
        log.info("removed work directories of servers that are gone", extra={"count": len(removed)})
    return removed


class Templates:
    """The five templates, built lazily (once each) in a private work directory."""

    def __init__(self, families: dict[int, Family], *, work_dir: str | None, limits: SandboxLimits,
                 uid: int, gid: int, overlay: str = "auto", seccomp: bool = True, proc: bool = True,
                 sys: bool = False):
        self.families = families
        self.limits = limits
        self.running_as_root = os.geteuid() == 0
        if self.running_as_root and uid == 0:
            raise FailedPrecondition("sandbox_uid must not be 0: sandboxes never run as the host's root")
        self.uid, self.gid = (uid, gid) if self.running_as_root else (os.geteuid(), os.getegid())
        if work_dir:
            os.makedirs(work_dir, exist_ok=True)
        self.root = tempfile.mkdtemp(prefix=WORK_PREFIX, dir=work_dir or None)
        # Held while this process lives: a work directory whose lock can be taken belongs to a server
        # that died without cleaning up (SIGKILL, OOM), and is removed by the next one.
        self._lock_fd = os.open(os.path.join(self.root, LOCK_NAME), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        remove_stale_work_dirs(os.path.dirname(self.root), keep=self.root)
        if any(c in self.root for c in ",:\\\n"):
            raise FailedPrecondition(f"the sandbox work directory {self.root!r} may not contain , : or \\ "
                                     "(overlay options); pass -o work_dir=A_PLAIN_PATH")
        # The sandbox user must be able to walk into the templates; nothing else is readable by others.
        os.chmod(self.root, 0o711)
        self.stage = os.path.join(self.root, "stage")
        os.mkdir(self.stage, 0o700)
        os.chown(self.stage, self.uid, self.gid)
        self.base = dict(overlay=overlay, seccomp=seccomp, proc=proc, sys=sys, uid=self.uid, gid=self.gid,
                         hostname=HOSTNAME, limits=limits)
        self._built: dict[int, Template] = {}
        self._locks = {n: threading.Lock() for n in families}
        self._closed = False

    def spec_for(self, family: Family, lower: str, ro_binds: tuple[tuple[str, str], ...]) -> SandboxSpec:
        env = [("PATH", PATH), ("HOME", "/root"), ("HOSTNAME", HOSTNAME), *family.env]
        prefix = ""
        if family.shell.endswith("bash"):
            env.append(("BASH_ENV", BASH_ENV_FILE))
        else:
            prefix = SH_CWD_PREFIX
        return SandboxSpec(lower=lower, stage=self.stage, shell=family.shell, env=tuple(env), cwd_prefix=prefix,
                           ro_binds=ro_binds, **self.base)

    def get(self, number: int) -> Template:
        template = self._built.get(number)
        if template is not None:
            return template
        with self._locks[number]:
            if number not in self._built:
                if self._closed:
                    raise FailedPrecondition("the intercode_bash backend is closed")
                self._built[number] = self._build(self.families[number])
            return self._built[number]

    def _skeleton(self, family: Family, lower: str) -> tuple[tuple[str, str], ...]:
        binds: list[tuple[str, str]] = [("/usr", "/usr")]
        os.makedirs(lower, mode=0o755)
        for name in MERGED_USR:
            host = "/" + name
            if os.path.islink(host):
                os.symlink(os.readlink(host), os.path.join(lower, name))
            elif os.path.isdir(host):
                os.mkdir(os.path.join(lower, name), 0o755)
                binds.append((host, host))
        for name, mode in (("usr", 0o755), ("proc", 0o555), ("dev", 0o755), ("sys", 0o555), ("tmp", 0o1777),
                           ("root", 0o700), ("home", 0o755), ("mnt", 0o755), ("opt", 0o755), ("srv", 0o755),
                           ("media", 0o755), ("run", 0o755), ("boot", 0o755), ("var", 0o755),
                           ("var/log", 0o755), ("var/tmp", 0o1777), ("var/lib", 0o755), ("var/cache", 0o755),
                           ("var/spool", 0o755), ("var/spool/cron", 0o755), ("var/spool/cron/crontabs", 0o1730)):
            os.makedirs(os.path.join(lower, name), exist_ok=True)
            os.chmod(os.path.join(lower, name), mode)
        os.makedirs(os.path.join(lower, "run/leap/probe"), mode=0o755)  # supervisor.PROBE_DIR
        for host in EXTRA_RO_BINDS:
            if os.path.isdir(host) and os.access(host, os.R_OK | os.X_OK):
                os.makedirs(lower + host, mode=0o755, exist_ok=True)
                binds.append((host, host))
        copy_etc("/etc", os.path.join(lower, "etc"))
        for name in (".bashrc", ".profile"):
            if os.path.isfile(f"/etc/skel/{name}"):
                shutil.copyfile(f"/etc/skel/{name}", os.path.join(lower, "root", name))
        with open(os.path.join(lower, family.setup_name), "w") as f:
            f.write(family.setup_script)
        os.chmod(os.path.join(lower, family.setup_name), 0o755)
        with open(os.path.join(lower, ".gitignore"), "w") as f:
            f.write(family.gitignore)
        return tuple(binds)

    def _build(self, family: Family) -> Template:
        lower = os.path.join(self.root, f"fs{family.number}")
        ro_binds = self._skeleton(family, lower)
        if self.running_as_root:
            _chown_tree(lower, self.uid, self.gid)
        spec = self.spec_for(family, lower, ro_binds)
        # The setup script: as the Dockerfile's RUN, as root in /, but always with bash (see above).
        build_spec = replace(spec, shell="/bin/bash", cwd_prefix="", env=(("PATH", PATH), ("HOME", "/root")),
                             limits=replace(self.limits, timeout_s=SETUP_TIMEOUT_S))
        try:
            with Sandbox(build_spec, build_root=lower).start() as builder:
                result = builder.run(f"/bin/bash /{family.setup_name}", "/", SETUP_TIMEOUT_S)
            with Sandbox(spec).start() as fresh:
                baseline, truncated = fresh.snapshot()
        except SandboxError as exc:
            raise FailedPrecondition(f"cannot build InterCode's file system {family.number}: {exc}. The sandbox needs "
                                     "unprivileged user namespaces (see the intercode_bash README)") from None
        if truncated:
            raise FailedPrecondition(f"InterCode's file system {family.number} has too many files")
        log.info("built an InterCode file system", extra={"family": family.number, "files": len(baseline),
                                                           "setup_exit": result.exit_code})
        return Template(family.number, spec, baseline, result.text)

    def close(self) -> None:
        """Remove the work directory (once: the server and its owner may both close the backend)."""
        if self._closed:
            return
        self._closed = True
        if os.path.isdir(self.root):
            _rmtree(self.root)
        os.close(self._lock_fd)
