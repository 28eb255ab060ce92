"""The one place where exceptions become gRPC status codes, and where calls are logged and counted.

- ServiceError subclasses carry their own status code and message.
- A grpc.RpcError from a downstream call keeps its code (an unreachable environment behind the
  teacher is UNAVAILABLE for the teacher's caller too) with the downstream's message.
- Anything else is INTERNAL with a short message (exception type and text, never a traceback);
  the traceback goes to the server log under the same request id.
- A call whose deadline has already passed is refused with DEADLINE_EXCEEDED before any work.
"""

from __future__ import annotations

import logging
import time
import uuid

import grpc

from services.runtime.errors import ServiceError
from services.runtime.metrics import RPC_IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS

log = logging.getLogger("leap.rpc")


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
        # An explicit context.abort() inside a handler already set the status: keep it.
        state_code = self.context.code() if hasattr(self.context, "code") else None
        if state_code not in (None, grpc.StatusCode.OK):
            self.code = state_code
            raise exc
        code, message = _status_of(exc, self.method, self.request_id)
        self.code = code
        if code == grpc.StatusCode.INTERNAL:
            log.error("unhandled error", exc_info=exc, extra={"method": self.method, "request_id": self.request_id})
        self.context.abort(code, message)

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
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

        def wrap_unary(behavior):
            def wrapper(request_or_iterator, context):
                call = _Call(method, context)
                call.check_deadline()
                try:
                    return behavior(request_or_iterator, context)
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
                    yield from behavior(request_or_iterator, context)
                except BaseException as exc:  # noqa: BLE001
                    if isinstance(exc, GeneratorExit):
                        raise
                    call.fail(exc)
                finally:
                    call.finish()

            return wrapper

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer
        )
