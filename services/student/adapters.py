"""Adapter versions: which are loaded, which is current, who is using which (torch-free).

Rules (as vLLM and TRL users learned them):
- A version name is bound to one content digest forever: loading the same name with other weights
  is ALREADY_EXISTS, even after the version was unloaded. Loading the same name with the same
  content again is a no-op (and makes it current unless asked not to).
- A request is admitted on a version (the pinned one, or the current one at admission time) and
  finishes on it, whatever is loaded meanwhile. The switch of the current version is atomic under
  one lock: every request admitted after it sees the new version.
- Retained: base, the current version, the previous current one (so an episode that started on it
  finishes on it) and versions staged with keep_current, up to `max_adapters`. Anything else retires:
  it takes no new requests and is unloaded by the backend once its last request has finished.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from services.runtime.errors import AlreadyExists, FailedPrecondition, NotFound, quote
from services.student.types import BASE_VERSION, AdapterStatus, CheckpointSpec


@dataclass(eq=False)  # compared by identity: one record per load
class AdapterVersion:
    version: str
    handle: str | None  # None for the base model
    digest: str
    checkpoint: CheckpointSpec | None
    load_seconds: float = 0.0
    loaded_at: float = field(default_factory=time.time)
    in_flight: int = 0
    #: last time this version became current (0: never current, i.e. staged)
    current_since: float = 0.0


class AdapterRegistry:
    """Thread-safe bookkeeping of adapter versions. Unloading is delegated to `unload(handle)`.

    `unload` is called without the registry lock held, once per retired version, when no admitted
    request uses it any more. It may be called from any thread (including the one that finishes a
    request), so it must not block on work that thread would have to do.
    """

    def __init__(self, unload: Callable[[str], None], *, max_adapters: int = 3):
        if max_adapters < 2:
            raise ValueError("max_adapters must be at least 2 (current + previous)")
        self._unload = unload
        self.max_adapters = max_adapters
        self._lock = threading.Lock()
        self._versions: dict[str, AdapterVersion] = {
            BASE_VERSION: AdapterVersion(BASE_VERSION, None, "", None, current_since=time.time())
        }
        self._draining: list[AdapterVersion] = []  # retired, still running requests
        self._digests: dict[str, str] = {}  # every version ever loaded -> content digest
        self._current = BASE_VERSION
        self._previous: str | None = None

    # -- admission ---------------------------------------------------------------------------

    @property
    def current(self) -> str:
        with self._lock:
            return self._current

    def admit(self, pinned: str = "") -> AdapterVersion:
        """Reserve a version for one request (the pinned one, else the current one).

        The returned record must be given back with `release(record)` when the request is done.
        """
        with self._lock:
            name = pinned or self._current
            record = self._versions.get(name)
            if record is None:
                draining = any(r.version == name for r in self._draining)
                state = "is being unloaded" if draining else "is not loaded"
                raise NotFound(f"adapter version {quote(name, 60)} {state}; loaded versions: {', '.join(sorted(self._versions))}")
            record.in_flight += 1
            return record

    def release(self, record: AdapterVersion) -> None:
        """A request admitted on `record` has finished; unload it if it retired meanwhile."""
        handle = None
        with self._lock:
            record.in_flight = max(0, record.in_flight - 1)
            if record.in_flight == 0 and any(r is record for r in self._draining):
                self._draining = [r for r in self._draining if r is not record]
                handle = record.handle
        if handle:
            self._unload(handle)

    # -- loading -----------------------------------------------------------------------------

    def check_new(self, version: str, digest: str) -> AdapterVersion | None:
        """The live record when `version` is already loaded with this content; None when it must be
        loaded; AlreadyExists when the name was ever bound to other content."""
        with self._lock:
            bound = self._digests.get(version)
            if bound is not None and bound != digest:
                raise AlreadyExists(
                    f"adapter version {version!r} was already loaded with different weights; versions are "
                    "never reused for other weights: give the new checkpoint a new version name"
                )
            return self._versions.get(version)

    def add(self, record: AdapterVersion, make_current: bool) -> None:
        """Register a freshly loaded version (and make it current atomically when asked)."""
        with self._lock:
            bound = self._digests.get(record.version)
            if bound is not None and bound != record.digest:
                raise AlreadyExists(f"adapter version {record.version!r} was loaded concurrently with other weights")
            if record.version in self._versions:
                raise AlreadyExists(f"adapter version {record.version!r} was loaded concurrently")
            self._digests[record.version] = record.digest
            self._versions[record.version] = record
            if make_current:
                self._switch(record.version)
            to_unload = self._enforce_limits()
        self._unload_all(to_unload)

    def make_current(self, version: str) -> None:
        with self._lock:
            if version not in self._versions:
                raise NotFound(f"adapter version {quote(version, 60)} is not loaded")
            self._switch(version)
            to_unload = self._enforce_limits()
        self._unload_all(to_unload)

    def retire(self, version: str) -> AdapterStatus:
        """Explicit unload: no new requests; unloaded once the last admitted one finishes."""
        with self._lock:
            if version == BASE_VERSION:
                raise FailedPrecondition("the base model cannot be unloaded")
            record = self._versions.get(version)
            if record is None:
                raise NotFound(f"adapter version {quote(version, 60)} is not loaded")
            if version == self._current:
                raise FailedPrecondition(
                    f"{version!r} is the current version; load or select another version before unloading it"
                )
            if self._previous == version:
                self._previous = None
            status = self._status(record)
            to_unload = self._retire(record)
        self._unload_all(to_unload)
        return status

    # -- views -------------------------------------------------------------------------------

    def snapshot(self) -> tuple[str, list[AdapterStatus]]:
        """(current version, statuses of live versions then of draining ones)."""
        with self._lock:
            live = sorted(self._versions.values(), key=lambda r: (r.version != BASE_VERSION, r.loaded_at))
            return self._current, [self._status(r) for r in live + self._draining]

    def status(self, version: str) -> AdapterStatus:
        with self._lock:
            record = self._versions.get(version)
            if record is None:
                raise NotFound(f"adapter version {quote(version, 60)} is not loaded")
            return self._status(record)

    def loaded_handles(self) -> int:
        """Adapters held in memory (live and draining), base excluded."""
        with self._lock:
            return len(self._versions) - 1 + len(self._draining)

    # -- internals (lock held) ---------------------------------------------------------------

    def _status(self, record: AdapterVersion) -> AdapterStatus:
        return AdapterStatus(version=record.version, checkpoint=record.checkpoint,
                             current=record.version == self._current and self._versions.get(record.version) is record,
                             in_flight=record.in_flight, load_seconds=record.load_seconds)

    def _switch(self, version: str) -> None:
        if version != self._current:
            self._previous = self._current
            self._current = version
        self._versions[version].current_since = time.time()

    def _retire(self, record: AdapterVersion) -> list[str]:
        self._versions.pop(record.version, None)
        if record.in_flight == 0:
            return [record.handle] if record.handle else []
        self._draining.append(record)
        return []

    def _enforce_limits(self) -> list[str]:
        """Retire versions that were current before the previous one, then staged ones over the cap."""
        protected = {BASE_VERSION, self._current, self._previous}
        retired: list[AdapterVersion] = [
            r for n, r in self._versions.items() if n not in protected and r.current_since
        ]
        live = [r for n, r in self._versions.items() if n != BASE_VERSION and r not in retired]
        excess = len(live) - self.max_adapters
        if excess > 0:
            staged = sorted((r for r in live if r.version not in protected), key=lambda r: r.loaded_at)
            retired.extend(staged[:excess])
        to_unload: list[str] = []
        for record in retired:
            to_unload.extend(self._retire(record))
        return to_unload

    def _unload_all(self, handles: list[str]) -> None:
        for handle in handles:
            self._unload(handle)
