"""Declarative adapters: a student replica serves the adapter version that a record file names.

The orchestrator records the fleet's desired adapter (orchestrator.platforms.kubernetes writes it
into the `leap-student-desired-adapter` ConfigMap, which every student pod mounts; any shared file
works the same way). A replica reads the record at start-up, loads that adapter before it reports
SERVING, and then follows the file: when the record changes, it loads the new version and makes it
current. `LoadAdapter` keeps working as before (local runs use it alone; on Kubernetes the
orchestrator still calls it on every ready replica, so a swap does not wait for the kubelet to
refresh the mounted file).

The record is one JSON object (at most MAX_RECORD_BYTES):

    {"version": "student-iter-2",
     "checkpoint": {"name": "student", "uri": "/runs/r/checkpoints/student/v2", "sha256": "...",
                    "base_model": "smollm2"},
     "run": "k8s-household-0a1b2c3d"}            # extra top-level keys are informational

`{"version": "base"}` (or no file, in a folder that exists) means the base model. The checkpoint is
loaded through StudentService.load_adapter, so every check of a LoadAdapter call applies to it too
(version names, path confinement, manifest and weight verification).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from services.runtime.errors import InvalidArgument, ServiceError
from services.student.types import BASE_VERSION, CheckpointSpec

log = logging.getLogger("leap.student.desired")

#: The key of the ConfigMap (and so the file name in its mounted folder).
RECORD_KEY = "desired.json"
MAX_RECORD_BYTES = 64 * 1024
_MAX_FIELD = 4096
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+\-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CHECKPOINT_FIELDS = ("name", "uri", "sha256", "base_model", "version")


@dataclass(frozen=True)
class DesiredAdapter:
    """A parsed record: the version to serve and its checkpoint (None for the base model)."""

    version: str
    checkpoint: CheckpointSpec | None
    #: sha256 of the record's bytes: a changed file is a new record.
    digest: str

    @property
    def is_base(self) -> bool:
        return self.checkpoint is None


def _text(value, what: str, *, required: bool) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidArgument(f"desired adapter record: {what} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidArgument(f"desired adapter record: {what} contains a NUL byte")
    if len(value) > _MAX_FIELD:
        raise InvalidArgument(f"desired adapter record: {what} is longer than {_MAX_FIELD} characters")
    if required and not value.strip():
        raise InvalidArgument(f"desired adapter record: {what} is empty")
    return value


def parse_record(data: bytes) -> DesiredAdapter:
    """The record in `data`; InvalidArgument naming the problem for anything malformed."""
    if len(data) > MAX_RECORD_BYTES:
        raise InvalidArgument(f"desired adapter record is larger than {MAX_RECORD_BYTES} bytes")
    digest = hashlib.sha256(data).hexdigest()
    try:
        record = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"desired adapter record is not UTF-8 text: {exc}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidArgument(f"desired adapter record is not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise InvalidArgument("desired adapter record must be a JSON object")
    version = _text(record.get("version"), "version", required=True)
    if not _VERSION.match(version):
        raise InvalidArgument(f"desired adapter record: version {version[:80]!r} is not a valid version name "
                              "(letters, digits and ._:@+- , at most 128 characters)")
    raw = record.get("checkpoint")
    if version == BASE_VERSION:
        if raw not in (None, {}):
            raise InvalidArgument("desired adapter record: the base version takes no checkpoint")
        return DesiredAdapter(BASE_VERSION, None, digest)
    if not isinstance(raw, dict):
        raise InvalidArgument(f"desired adapter record: version {version!r} needs a checkpoint object")
    unknown = sorted(str(k)[:40] for k in raw if k not in _CHECKPOINT_FIELDS)
    if unknown:
        raise InvalidArgument(f"desired adapter record: unknown checkpoint fields {unknown}; "
                              f"known: {', '.join(_CHECKPOINT_FIELDS)}")
    fields = {k: _text(raw.get(k), f"checkpoint.{k}", required=k == "uri") for k in _CHECKPOINT_FIELDS}
    if fields["version"] and fields["version"] != version:
        raise InvalidArgument(f"desired adapter record: checkpoint.version {fields['version'][:80]!r} differs "
                              f"from version {version!r}")
    if fields["sha256"] and not _SHA256.match(fields["sha256"]):
        raise InvalidArgument("desired adapter record: checkpoint.sha256 must be 64 hex digits")
    spec = CheckpointSpec(name=fields["name"], version=version, uri=fields["uri"], sha256=fields["sha256"].lower(),
                          base_model=fields["base_model"])
    return DesiredAdapter(version, spec, digest)


def encode_record(version: str, checkpoint: dict | None = None, **extra: str) -> str:
    """The record text for `version` (the writer's side; parse_record accepts exactly what this writes)."""
    record: dict = {"version": version}
    if version != BASE_VERSION:
        ckpt = {k: str(v) for k, v in (checkpoint or {}).items() if k in _CHECKPOINT_FIELDS and v}
        ckpt["version"] = version
        record["checkpoint"] = ckpt
    record.update({k: str(v) for k, v in extra.items() if k not in ("version", "checkpoint")})
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    parse_record(text.encode())  # refuse to write what a replica would refuse to read
    return text


def read_record(path: str | os.PathLike) -> DesiredAdapter | None:
    """The record at `path`; None when the file does not exist (nothing recorded yet: the base model).

    The folder must exist (a mount that is missing is a misconfiguration, not "no adapter"). Only a
    regular file is read (opened without blocking, so a FIFO cannot stall the follower), at most
    MAX_RECORD_BYTES + 1 bytes.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InvalidArgument(f"the desired adapter folder {path.parent} does not exist: is the ConfigMap mounted?")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidArgument(f"cannot open the desired adapter record {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"the desired adapter record {path} is not a regular file")
        chunks, size = [], 0
        while size <= MAX_RECORD_BYTES:
            chunk = os.read(fd, MAX_RECORD_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return parse_record(b"".join(chunks))


class DesiredAdapterFollower:
    """Keeps one StudentService on the adapter its record file names.

    `wait_until_synced` is the start-up step (the server reports SERVING only after it returns);
    `start` then follows the file on a thread, every `poll_seconds`. A record that cannot be read or
    loaded is retried with backoff (up to `retry_max_seconds` apart): a checkpoint written on a
    network volume can appear on this node a little after the record does.
    """

    def __init__(self, service, path: str | os.PathLike, *, poll_seconds: float = 2.0,
                 retry_max_seconds: float = 30.0):
        if poll_seconds <= 0:
            raise ValueError("poll_seconds must be positive")
        self.service = service
        self.path = Path(path)
        self.poll_seconds = poll_seconds
        self.retry_max_seconds = max(retry_max_seconds, poll_seconds)
        self.applied: DesiredAdapter | None = None
        self.synced = threading.Event()
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._next_try = 0.0

    # ------------------------------------------------------------------ one step
    def sync(self) -> bool:
        """Read the record and apply it if it changed; True when the replica serves what it names."""
        try:
            desired = read_record(self.path) or DesiredAdapter(BASE_VERSION, None, "")
            if self.applied is None or desired.digest != self.applied.digest:
                self._apply(desired)
                self.applied = desired
                log.info("desired adapter applied", extra={"version": desired.version, "file": str(self.path)})
        except ServiceError as exc:
            self._failed(exc.message)
            return False
        if self._failures or not self.synced.is_set():
            self._failures, self.last_error = 0, ""
        self.synced.set()
        return True

    def _apply(self, desired: DesiredAdapter) -> None:
        if desired.is_base:
            self.service.adapters.make_current(BASE_VERSION)
        else:
            self.service.load_adapter(desired.checkpoint, keep_current=False)

    def _failed(self, message: str) -> None:
        self._failures += 1
        delay = min(self.retry_max_seconds, self.poll_seconds * (2 ** min(self._failures - 1, 10)))
        self._next_try = time.monotonic() + delay
        if message != self.last_error:
            log.warning("desired adapter not applied", extra={"file": str(self.path), "reason": message,
                                                              "retry_seconds": round(delay, 1)})
        self.last_error = message

    # ------------------------------------------------------------------ start-up and following
    def wait_until_synced(self, stop: threading.Event | None = None, timeout: float | None = None) -> bool:
        """Retry `sync` (with backoff) until it succeeds; False when stopped or timed out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        stop = stop or self._stop
        while not self.sync():
            wait = max(0.0, self._next_try - time.monotonic())
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return False
            if stop.wait(wait) or self._stop.is_set():
                return False
        return True

    def start(self) -> None:
        """Follow the file on a daemon thread until `stop`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._follow, name="desired-adapter", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            if time.monotonic() < self._next_try:
                continue
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - the follower must outlive one bad load
                log.exception("desired adapter follower step failed")
                self._failed("internal error (see the log)")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


__all__ = ["DesiredAdapter", "DesiredAdapterFollower", "MAX_RECORD_BYTES", "RECORD_KEY", "encode_record",
           "parse_record", "read_record"]
