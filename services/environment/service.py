"""Transport-free logic of the environment service: sessions for agents, privileged queries for the teacher.

`EnvironmentSessions` is what EnvironmentService serves: many concurrent sessions (thread-safe), a
session limit (RESOURCE_EXHAUSTED, saying how many are open and that Close frees them), idle sessions
evicted after a TTL by a background reaper thread, validated actions, paged task lists.

`PrivilegedOracle` is what PrivilegedService serves: privileged state, expert advice and
demonstrations, each computed by replaying a list of actions from a task's initial state (so it
holds no session state at all). It is a separate object so that nothing agent-facing can reach it.

Both raise services.runtime.errors; the gRPC layer turns them into status codes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from prometheus_client import Counter, Gauge

from services.environment.backends import (
    Backend,
    Demonstration,
    EnvironmentSpec,
    Episode,
    ExpertAdvice,
    Observation,
    PrivilegedInfo,
    TaskSummary,
)
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, quote
from services.runtime.messages import check_id

log = logging.getLogger("leap.environment")

MAX_ACTION_BYTES = 4096
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_HORIZON = 10_000
MAX_REPLAYED_ACTIONS = 10_000
#: Longest page token accepted (the server's own are under 100 characters).
MAX_PAGE_TOKEN_CHARS = 512
#: Largest offset a page token may hold.
MAX_PAGE_OFFSET = 2**31 - 1

SESSIONS_OPEN = Gauge("leap_env_sessions_open", "Environment sessions currently open")
SESSIONS_EVICTED = Counter("leap_env_sessions_evicted_total", "Idle environment sessions closed by the TTL reaper")
STEPS = Counter("leap_env_steps_total", "Environment steps taken", ["env"])


def validate_action(action: str | bytes, what: str = "action") -> str:
    """The action as text, or InvalidArgument when it is empty, not UTF-8 or over 4096 bytes."""
    if isinstance(action, bytes):
        raw = action
        try:
            action = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"{what} is not valid UTF-8 (bad byte at offset {exc.start})") from None
    else:
        try:
            raw = action.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"{what} is not valid UTF-8 (it contains a lone surrogate)") from None
    if len(raw) > MAX_ACTION_BYTES:
        raise InvalidArgument(f"{what} is {len(raw)} bytes long; the limit is {MAX_ACTION_BYTES} bytes")
    if not action.strip():
        raise InvalidArgument(f"{what} is empty; send one of the observation's candidates")
    return action


def _validate_actions(actions: Sequence[str | bytes]) -> list[str]:
    if len(actions) > MAX_REPLAYED_ACTIONS:
        raise InvalidArgument(f"{len(actions)} actions to replay; the limit is {MAX_REPLAYED_ACTIONS}")
    return [validate_action(a, f"actions[{i}]") for i, a in enumerate(actions)]


def _encode_token(env: str, split: str, offset: int) -> str:
    payload = json.dumps({"e": env, "s": split, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _decode_token(token: str, env: str, split: str) -> int:
    """The offset a page token holds; InvalidArgument for anything this server did not issue.

    The token is client input: its length is bounded before decoding (so no nesting depth can reach the
    JSON parser's recursion limit), and the offset must be a JSON integer in range (not 1e400, not "7",
    not true)."""
    invalid = InvalidArgument("page_token is not one this server issued; start again with an empty token")
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise invalid
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        offset = data["o"]
        same = data["e"] == env and data["s"] == split
    except (ValueError, KeyError, TypeError, UnicodeEncodeError, binascii.Error, RecursionError):
        raise invalid from None
    if type(offset) is not int or not 0 <= offset <= MAX_PAGE_OFFSET:
        raise invalid
    if not same:
        raise InvalidArgument("page_token belongs to another env or split; start again with an empty token")
    return offset


@dataclass(frozen=True)
class TaskPage:
    tasks: list[TaskSummary]
    next_page_token: str
    total: int
    #: Index in the split of the first task of `tasks`.
    offset: int = 0


@dataclass(frozen=True)
class ResetResult:
    session_id: str
    task: TaskSummary
    observation: Observation


@dataclass(frozen=True)
class CloseSummary:
    steps: int
    won: bool
    score: float


class _Session:
    __slots__ = ("id", "env", "episode", "lock", "last_used", "last", "closed")

    def __init__(self, session_id: str, env: str, episode: Episode, now: float):
        self.id = session_id
        self.env = env
        self.episode = episode
        self.lock = threading.Lock()
        self.last_used = now
        self.last: Observation | None = None
        self.closed = False


class _Backends:
    """Name -> backend lookup with NotFound naming the valid names."""

    def __init__(self, backends: Mapping[str, Backend]):
        if not backends:
            raise ValueError("at least one environment backend is needed")
        self._backends = dict(backends)

    def get(self, env: str) -> Backend:
        backend = self._backends.get(env)
        if backend is None:
            raise NotFound(f"unknown environment {quote(env)}; valid names: {', '.join(sorted(self._backends))}")
        return backend

    def all(self) -> list[Backend]:
        return [self._backends[name] for name in sorted(self._backends)]

    def task(self, env: str, task_id: str, split: str = "") -> tuple[Backend, TaskSummary]:
        backend = self.get(env)
        if not task_id:
            raise InvalidArgument("task.task_id is empty; list the tasks with ListTasks")
        check_id(task_id, "task.task_id")
        check_id(split, "task.split")
        task = backend.task(task_id)
        if split and split != task.split:
            raise InvalidArgument(f"task {quote(task_id)} belongs to split {task.split!r}, not {quote(split)}")
        return backend, task


class EnvironmentSessions:
    """Sessions of agents playing tasks (EnvironmentService's logic)."""

    def __init__(self, backends: Mapping[str, Backend], *, max_sessions: int = 1024, idle_ttl_s: float = 900.0,
                 reap_interval_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if idle_ttl_s <= 0:
            raise ValueError("idle_ttl_s must be > 0")
        self.backends = _Backends(backends)
        self.max_sessions = max_sessions
        self.idle_ttl_s = idle_ttl_s
        self.reap_interval_s = reap_interval_s if reap_interval_s is not None else min(30.0, max(0.05, idle_ttl_s / 4))
        self._clock = clock
        self._lock = threading.Lock()
        #: Keys the state digests: a digest means something inside its session only.
        self._digest_key = secrets.token_bytes(32)
        self._sessions: dict[str, _Session] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()  # recently evicted ids, for clear errors
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self._step_counters = {name: STEPS.labels(name) for name in backends}

    # --- lifecycle -----------------------------------------------------------------------------------

    def start_reaper(self) -> None:
        """Start the background thread that closes sessions idle for longer than the TTL."""
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap_loop, name="leap-env-reaper", daemon=True)
            self._reaper.start()

    def _reap_loop(self) -> None:
        while not self._stop.wait(self.reap_interval_s):
            try:
                self.reap()
            except Exception:  # noqa: BLE001 - the reaper must survive anything
                log.exception("session reaper failed")

    def reap(self) -> int:
        """Close the sessions idle for longer than the TTL; returns how many."""
        cutoff = self._clock() - self.idle_ttl_s
        stale: list[_Session] = []
        with self._lock:
            for session in list(self._sessions.values()):
                # A session busy with a call is not idle; taking its lock (without waiting) also means
                # no call can be half-way through it while it is closed.
                if session.last_used >= cutoff or not session.lock.acquire(blocking=False):
                    continue
                try:
                    if session.last_used < cutoff:
                        self._forget(session.id, expired=True)
                        stale.append(session)
                finally:
                    session.lock.release()
        for session in stale:
            self._release(session)
        if stale:
            SESSIONS_EVICTED.inc(len(stale))
            log.info("evicted idle sessions", extra={"count": len(stale), "ttl_s": self.idle_ttl_s})
        return len(stale)

    def stop(self) -> None:
        """Stop the reaper and close every session."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
        with self._lock:
            sessions = list(self._sessions.values())
            for session in sessions:
                self._forget(session.id, expired=False)
        for session in sessions:
            self._release(session)

    def _forget(self, session_id: str, *, expired: bool) -> None:  # caller holds self._lock
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        session.closed = True
        SESSIONS_OPEN.dec()
        if expired:
            self._expired[session_id] = None
            while len(self._expired) > 10_000:
                self._expired.popitem(last=False)

    @staticmethod
    def _release(session: _Session) -> None:
        try:
            session.episode.close()
        except Exception:  # noqa: BLE001 - a backend failing to clean up must not break the caller
            log.exception("closing an episode failed", extra={"session": session.id})

    @property
    def open_sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    # --- queries -------------------------------------------------------------------------------------

    def list_environments(self) -> list[EnvironmentSpec]:
        return [backend.spec() for backend in self.backends.all()]

    def list_tasks(self, env: str, split: str, page_size: int = 0, page_token: str = "",
                   offset: int = 0) -> TaskPage:
        backend = self.backends.get(env)
        check_id(split, "split")
        total = backend.num_tasks(split)
        if page_size < 0:
            raise InvalidArgument(f"page_size must be >= 0 (0 means {DEFAULT_PAGE_SIZE}); got {page_size}")
        if offset < 0:
            raise InvalidArgument(f"offset must be >= 0; got {offset}")
        if offset and page_token:
            raise InvalidArgument("send either an offset (for the first page) or a page_token, not both")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if page_token:
            offset = _decode_token(page_token, env, split)
        if offset >= total:
            return TaskPage([], "", total, offset)
        tasks = backend.list_tasks(split, offset, size)
        end = offset + len(tasks)
        return TaskPage(tasks, _encode_token(env, split, end) if end < total else "", total, offset)

    # --- sessions ------------------------------------------------------------------------------------

    def reset(self, env: str, task_id: str = "", split: str = "", seed: int = 0, horizon: int = 0) -> ResetResult:
        backend = self.backends.get(env)
        if horizon < 0 or horizon > MAX_HORIZON:
            raise InvalidArgument(f"horizon must be between 0 (the default) and {MAX_HORIZON}; got {horizon}")
        check_id(task_id, "task_id")
        check_id(split, "split")
        if task_id:
            task = backend.task(task_id)
            if split and split != task.split:
                raise InvalidArgument(f"task {quote(task_id)} belongs to split {task.split!r}, not {quote(split)}; "
                                      "send either a task_id or a split with a seed")
        elif split:
            task = backend.task_at(split, seed)
        else:
            raise InvalidArgument("send a task_id, or a split with a seed")
        if self._full():
            self.reap()
            if self._full():
                raise self._exhausted()
        episode = backend.start(task.task_id, horizon)
        try:
            observation = episode.reset()
        except BaseException:
            episode.close()
            raise
        session = _Session(secrets.token_hex(16), env, episode, self._clock())
        observation = self._with_digest(session, observation)
        session.last = observation
        with self._lock:
            admitted = len(self._sessions) < self.max_sessions
            if admitted:
                self._sessions[session.id] = session
                SESSIONS_OPEN.inc()
        if not admitted:  # another thread took the last slot meanwhile
            episode.close()
            raise self._exhausted()
        return ResetResult(session.id, episode.task, observation)

    def _full(self) -> bool:
        with self._lock:
            return len(self._sessions) >= self.max_sessions

    def _exhausted(self) -> ResourceExhausted:
        with self._lock:
            count = len(self._sessions)
        return ResourceExhausted(
            f"too many open sessions ({count} open, the limit is {self.max_sessions}); Close finished sessions to "
            f"free them (sessions idle for {self.idle_ttl_s:g}s are closed by the server)")

    def _session(self, session_id: str) -> _Session:
        if not session_id:
            raise InvalidArgument("session_id is empty; Reset returns one")
        with self._lock:
            session = self._sessions.get(session_id)
            expired = session is None and session_id in self._expired
        if session is None:
            if expired:
                raise NotFound(f"session {quote(session_id)} was closed after being idle for more than "
                               f"{self.idle_ttl_s:g}s; Reset a new one")
            raise NotFound(f"unknown session {quote(session_id)} (closed, expired or never opened); Reset a new one")
        return session

    def step(self, session_id: str, action: str | bytes) -> Observation:
        session = self._session(session_id)
        action = validate_action(action)
        with session.lock:
            if session.closed:
                raise NotFound(f"session {quote(session_id)} was closed; Reset a new one")
            if session.episode.done:  # refused: keeps no finished session from expiring
                truncated = session.last is not None and session.last.truncated
                how = "was won" if session.episode.won else "reached its horizon" if truncated else "is over"
                raise FailedPrecondition(f"session {quote(session_id)} is done (the episode {how} after "
                                         f"{session.episode.steps} steps); Close it and Reset a new one")
            observation = self._with_digest(session, session.episode.step(action))
            session.last = observation
            session.last_used = self._clock()
        self._step_counters[session.env].inc()
        return observation

    def _with_digest(self, session: _Session, observation: Observation) -> Observation:
        """The observation with its state digest: HMAC of the episode's state key, keyed per session."""
        if observation.done:
            return observation
        key = session.episode.state_key()
        if key is None:
            return observation
        digest = hmac.new(self._digest_key, session.id.encode() + b"\0" + key, hashlib.sha256).hexdigest()[:32]
        return dataclasses.replace(observation, state_digest=digest)

    def close(self, session_id: str) -> CloseSummary:
        session = self._session(session_id)
        with session.lock:
            with self._lock:
                if session.closed:
                    raise NotFound(f"session {quote(session_id)} was already closed")
                self._forget(session_id, expired=False)
            summary = CloseSummary(session.episode.steps, session.episode.won, session.episode.score)
        self._release(session)
        return summary


class PrivilegedOracle:
    """Privileged state, expert advice and demonstrations (PrivilegedService's logic). Stateless."""

    def __init__(self, backends: Mapping[str, Backend]):
        self.backends = _Backends(backends)

    def experts(self, env: str) -> tuple[str, ...]:
        """The expert kinds a served environment offers (NotFound for an environment not served)."""
        return self.backends.get(env).spec().experts

    def privileged_state(self, env: str, task_id: str, split: str = "",
                         actions: Sequence[str | bytes] = ()) -> PrivilegedInfo:
        backend, task = self.backends.task(env, task_id, split)
        return backend.privileged_state(task.task_id, _validate_actions(actions))

    def expert_advice(self, env: str, task_id: str, split: str = "", actions: Sequence[str | bytes] = (),
                      expert: str = "") -> ExpertAdvice:
        backend, task = self.backends.task(env, task_id, split)
        return backend.expert_advice(task.task_id, _validate_actions(actions), self._expert(backend, expert))

    def demonstration(self, env: str, task_id: str, split: str = "", expert: str = "",
                      horizon: int = 0) -> Demonstration:
        backend, task = self.backends.task(env, task_id, split)
        if horizon < 0 or horizon > MAX_HORIZON:
            raise InvalidArgument(f"horizon must be between 0 (the default) and {MAX_HORIZON}; got {horizon}")
        return backend.demonstration(task.task_id, self._expert(backend, expert), horizon)

    @staticmethod
    def _expert(backend: Backend, expert: str) -> str:
        supported = backend.spec().experts
        if not expert:
            raise InvalidArgument(f"expert is unspecified; {backend.name} offers: {', '.join(supported) or 'none'}")
        if expert not in supported:
            raise InvalidArgument(f"expert {expert!r} is not offered by {backend.name}; it offers: "
                                  f"{', '.join(supported) or 'none'}")
        return expert
