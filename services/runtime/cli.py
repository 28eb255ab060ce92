"""How every `leap ...` command ends on an error: one line on stderr and an exit code, never a traceback.

    exit 2   the input was wrong: a bad flag or option, an unknown name, an unreadable file, a port in
             use, a request the service refused (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ...)
    exit 1   the command could not finish for another reason: a service unreachable or overloaded, a
             deadline, an internal error (LEAP_DEBUG=1 shows the traceback of those)
    exit 130 interrupted (Ctrl-C)

argparse's own errors keep argparse's format (usage line + message) and its exit code 2.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import grpc

from services.runtime.errors import ServiceError, cap_details

#: Status codes that mean "the caller asked for something wrong": exit code 2.
_BAD_INPUT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED,
}


class UsageError(Exception):
    """A command-line mistake the user can fix (exit code 2); the message says what to change."""


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return cap_details(text, 1000)


def describe(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for an exception a command let through; None to re-raise it."""
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(exc, SystemExit):
        # `raise SystemExit("message")` (exit 1 by Python's rule) is a usage error here; numeric codes
        # (argparse, a command's own return) pass through.
        if isinstance(exc.code, str):
            return 2, _one_line(exc.code.removeprefix("error: "))
        return None
    if isinstance(exc, UsageError):
        return 2, _one_line(str(exc))
    if isinstance(exc, ServiceError):
        code = 2 if exc.code in _BAD_INPUT_CODES else 1
        return code, _one_line(f"{exc.message} ({exc.code.name})")
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        status = exc.code()
        details = exc.details() if hasattr(exc, "details") else str(exc)
        code = 2 if status in _BAD_INPUT_CODES else 1
        name = status.name if status is not None else "UNKNOWN"
        return code, _one_line(f"{name}: {details}")
    if isinstance(exc, OSError):
        if exc.strerror and getattr(exc, "filename", None):
            return 2, _one_line(f"{exc.strerror}: {exc.filename}")
        return 2, _one_line(exc.strerror or str(exc))
    if isinstance(exc, ValueError) and not os.environ.get("LEAP_DEBUG"):
        # Configuration checks raise ValueError ("max_sessions must be >= 1", TLS files, tokens).
        return 2, _one_line(str(exc) or type(exc).__name__)
    if isinstance(exc, Exception) and not os.environ.get("LEAP_DEBUG"):
        return 1, _one_line(f"{type(exc).__name__}: {exc} (set LEAP_DEBUG=1 to see the traceback)")
    return None


def run_command(func: Callable[[], int | None]) -> int:
    """Run a command's function and turn what it raises into an exit code and one line on stderr."""
    try:
        return int(func() or 0)
    except BaseException as exc:  # noqa: BLE001 - every error ends as one line (or re-raised, see describe)
        described = describe(exc)
        if described is None:
            raise
        code, message = described
        print(f"error: {message}", file=sys.stderr)
        return code
