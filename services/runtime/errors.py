"""Errors that service logic raises; the server interceptor turns them into gRPC status codes.

Service logic is transport-free: it raises these and never touches a grpc context. Messages are
written for a person: say what was wrong and what to do about it.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An error with a gRPC status code and a message a person can act on."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL


def require(condition: bool, message: str) -> None:
    """Raise InvalidArgument(message) unless condition holds."""
    if not condition:
        raise InvalidArgument(message)


#: Characters of a client's value shown in an error message; the rest is elided with a marker.
QUOTE_LIMIT = 100


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """A client-sent value as an error message shows it: repr() of at most `limit` characters.

    Every echo of client input in an error goes through here, so a 17 kB session id or a path of
    5,000 characters cannot blow the status past gRPC's metadata limit (the client would get
    RESOURCE_EXHAUSTED about metadata instead of the real error). Longer values keep their head
    and say how long they were: 'aaaa'... (+16900 more characters).
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    elif not isinstance(value, str):
        value = str(value)
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... (+{len(value) - limit} more characters)"


#: Largest status details string a server sends, counted as it travels (percent-encoded UTF-8 in the
#: grpc-message trailer). Clients refuse trailers over 8 KiB by default; leave room for the rest.
MAX_DETAILS_WIRE_BYTES = 2048
_DETAILS_MARKER = " ... (message truncated)"


def _wire_cost(ch: str) -> int:
    # grpc-message keeps printable ASCII except '%' and percent-encodes every other byte (3 bytes each).
    return 1 if " " <= ch <= "~" and ch != "%" else 3 * len(ch.encode("utf-8", "surrogatepass"))


def cap_details(details: str, max_wire_bytes: int = MAX_DETAILS_WIRE_BYTES) -> str:
    """`details` cut so that it fits `max_wire_bytes` on the wire (the last line of defence behind quote())."""
    details = details.encode("utf-8", "replace").decode("utf-8")  # lone surrogates cannot be sent at all
    if sum(map(_wire_cost, details)) <= max_wire_bytes:
        return details
    budget = max_wire_bytes - len(_DETAILS_MARKER)
    used = 0
    for end, ch in enumerate(details):
        used += _wire_cost(ch)
        if used > budget:
            return details[:end] + _DETAILS_MARKER
    return details
