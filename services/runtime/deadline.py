"""Deadlines for transport-free service logic.

A servicer turns the caller's gRPC deadline into a `Deadline`; long-running logic checks it between
units of work and stops with DEADLINE_EXCEEDED instead of computing answers nobody waits for.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from services.runtime.errors import DeadlineExceeded


@dataclass(frozen=True)
class Deadline:
    """An absolute point in time.monotonic() by which work must be done (None: no deadline)."""

    at: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> "Deadline":
        return cls(None if seconds is None else time.monotonic() + seconds)

    @classmethod
    def from_context(cls, context) -> "Deadline":
        """The deadline of a grpc.ServicerContext (None when the caller set none)."""
        remaining = context.time_remaining() if context is not None else None
        return cls.after(remaining)

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def check(self, what: str = "the request") -> None:
        """Raise DeadlineExceeded when the deadline has passed."""
        if self.expired():
            raise DeadlineExceeded(f"deadline exceeded while processing {what}; retry with a longer deadline")


NO_DEADLINE = Deadline(None)


#: The deadline of the RPC the current thread serves (the servers' interceptor sets it for every call),
#: for long loops deep in a backend that no Deadline argument reaches (replays, game generation).
_CURRENT: ContextVar[Deadline] = ContextVar("leap_current_deadline", default=NO_DEADLINE)


def current_deadline() -> Deadline:
    """The deadline of the call being served here (NO_DEADLINE outside any call, or without one)."""
    return _CURRENT.get()


@contextmanager
def serving_until(deadline: Deadline):
    """Make `deadline` the current one while the block runs (the interceptor wraps each handler)."""
    token = _CURRENT.set(deadline)
    try:
        yield deadline
    finally:
        _CURRENT.reset(token)
