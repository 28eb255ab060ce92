"""The one place where exceptions become gRPC status codes, and where calls are logged and counted.

- ServiceError subclasses carry their own status code and message.
- A grpc.RpcError from a downstream call keeps its code (an unreachable environment behind the
  teacher is UNAVAILABLE for the teacher's caller too) with the downstream's message.
- Anything else is INTERNAL with a short message (exception type and text, never a traceback);
  the traceback goes to the server log under the same request id.
- A call whose deadline has already passed is refused with DEADLINE_EXCEEDED before any work.
- Requests are parsed here, from raw bytes (services.runtime.messages): garbage bytes, strings that
  are not UTF-8 and undefined enum numbers are INVALID_ARGUMENT for every service, never grpc's
  generic INTERNAL "Exception deserializing request!".
- A call the client cancelled or abandoned (a stream left open when the client went away) ends as
  CANCELLED, logged at debug level without a traceback: it is not a server error.
- Status details are capped (services.runtime.errors.cap_details), so that no echo of a client's
  input can push the status past gRPC's metadata limit.
"""

from __future__ import annotations

import logging
import time
import uuid

import grpc

from services.runtime.deadline import Deadline, serving_until
from services.runtime.errors import ServiceError, cap_details
from services.runtime.messages import parse_stream, request_parser
from services.runtime.metrics import RPC_IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS

log = logging.getLogger("leap.rpc")


def _client_went_away(exc: BaseException, context: grpc.ServicerContext) -> bool:
    """True when `exc` only says that the call is over from the client's side (cancelled, disconnected)."""
    # grpc's request iterator raises a bare grpc.RpcError (no code) once the client has cancelled.
    if isinstance(exc, grpc.RpcError) and not hasattr(exc, "code"):
        return True
    try:
        return not context.is_active()
    except Exception:  # noqa: BLE001 - a context without is_active() (tests, fakes)
        return False


def _status_of(exc: BaseException, method: str, request_id: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ServiceError):
        return exc.code, exc.message
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        code = exc.code()
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK, None):
            code = grpc.StatusCode.UNAVAILABLE
        return code, f"a downstream service failed: {details}"
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return grpc.StatusCode.INTERNAL, (
        f"internal error in {method}: {type(exc).__name__}"
        + (f": {text}" if text else "")
        + f" (request id {request_id}; the server log has the details)"
    )


class _Call:
    """Bookkeeping around one call: deadline check, metrics, access log, error translation."""

    def __init__(self, method: str, context: grpc.ServicerContext):
        self.method = method
        self.context = context
        self.request_id = uuid.uuid4().hex[:12]
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self._finished = False
        RPC_IN_FLIGHT.labels(method).inc()

    def check_deadline(self) -> None:
        remaining = self.context.time_remaining()
        if remaining is not None and remaining <= 0:
            self.code = grpc.StatusCode.DEADLINE_EXCEEDED
            self.finish()
            self.context.abort(self.code, f"deadline already exceeded before {self.method} started")

    def fail(self, exc: BaseException) -> None:
        # The handler already chose a status (context.abort(), or set_code() then an exception, as
        # generated base servicers do for a method they do not implement): end the call with it, without
        # the ERROR and traceback grpc would log for the exception.
        state_code = self.context.code() if hasattr(self.context, "code") else None
        if state_code not in (None, grpc.StatusCode.OK):
            self.code = state_code
            details = self.context.details() if hasattr(self.context, "details") else b""
            if isinstance(details, bytes):
                details = details.decode("utf-8", "replace")
            self.context.abort(state_code, cap_details(details or ""))
        if not isinstance(exc, ServiceError) and _client_went_away(exc, self.context):
            self.code = grpc.StatusCode.CANCELLED
            log.debug("call cancelled by the client", extra={"method": self.method, "request_id": self.request_id,
                                                            "error": type(exc).__name__})
            self.context.abort(self.code, "the client cancelled the call")
        code, message = _status_of(exc, self.method, self.request_id)
        self.code = code
        if code == grpc.StatusCode.INTERNAL:
            log.error("unhandled error", exc_info=exc, extra={"method": self.method, "request_id": self.request_id})
        self.context.abort(code, cap_details(message))

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.code == grpc.StatusCode.OK and _client_went_away(Exception(), self.context):
            # The handler ended normally because the client went away (a stream whose requests ran out
            # when the connection dropped, a health Watch ended by its cancel callback): nobody got an OK.
            self.code = grpc.StatusCode.CANCELLED
        elapsed = time.perf_counter() - self.start
        RPC_IN_FLIGHT.labels(self.method).dec()
        RPC_LATENCY.labels(self.method).observe(elapsed)
        RPC_REQUESTS.labels(self.method, self.code.name).inc()
        log.debug(
            "rpc",
            extra={"method": self.method, "code": self.code.name, "ms": round(elapsed * 1000, 2),
                   "request_id": self.request_id, "peer": self.context.peer()},
        )


class ErrorAndMetricsInterceptor(grpc.ServerInterceptor):
    """Wraps every handler of the server (unary and streaming) with `_Call`."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED
        method = handler_call_details.method
        # The handler gets raw bytes (request_deserializer=None below) and the request is parsed inside
        # the call's bookkeeping, so a malformed request is INVALID_ARGUMENT like any other bad input.
        parse = request_parser(handler.request_deserializer)
        streaming_request = bool(handler.stream_unary or handler.stream_stream)

        def parsed(request_or_iterator):
            if parse is None:
                return request_or_iterator
            if streaming_request:
                return parse_stream(parse, request_or_iterator)
            return parse(request_or_iterator)

        def wrap_unary(behavior):
            def wrapper(request_or_iterator, context):
                call = _Call(method, context)
                call.check_deadline()
                try:
                    with serving_until(Deadline.from_context(context)):
                        return behavior(parsed(request_or_iterator), context)
                except BaseException as exc:  # noqa: BLE001 - translated into a status
                    call.fail(exc)
                finally:
                    call.finish()

            return wrapper

        def wrap_stream(behavior):
            def wrapper(request_or_iterator, context):
                call = _Call(method, context)
                call.check_deadline()
                try:
                    with serving_until(Deadline.from_context(context)):
                        yield from behavior(parsed(request_or_iterator), context)
                except BaseException as exc:  # noqa: BLE001
                    if isinstance(exc, GeneratorExit):  # grpc closed the stream: the client cancelled it
                        call.code = grpc.StatusCode.CANCELLED
                        raise
                    call.fail(exc)
                finally:
                    call.finish()

            return wrapper

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary(handler.unary_unary), None, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream(handler.unary_stream), None, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary(handler.stream_unary), None, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream(handler.stream_stream), None, handler.response_serializer
        )
