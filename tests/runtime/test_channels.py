"""Client channels: which failures a channel retries on its own, against a real loopback server."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest

from services.runtime.channels import PLAINTEXT, make_channel

METHOD = "/leap.test.Flaky/Call"


class FlakyServer:
    """Answers b"ok", after failing the first `failures` calls with `code` before any response."""

    def __init__(self, code: grpc.StatusCode, failures: int = 1):
        self.code, self.failures, self.calls = code, failures, 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(self._call)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("leap.test.Flaky",
                                                                                   {"Call": handler}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _call(self, request: bytes, context) -> bytes:
        with self._lock:
            self.calls += 1
            failing = self.calls <= self.failures
        if failing:
            context.abort(self.code, "the server gave up on this call before answering")
        return b"ok"

    def call(self, **channel_options) -> bytes:
        with make_channel(f"127.0.0.1:{self.port}", tls=PLAINTEXT, **channel_options) as channel:
            stub = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            return stub(b"x", timeout=10)


@pytest.fixture
def flaky():
    servers = []

    def start(code: grpc.StatusCode, failures: int = 1) -> FlakyServer:
        servers.append(FlakyServer(code, failures))
        return servers[-1]

    yield start
    for server in servers:
        server.server.stop(0)


def test_unavailable_is_retried_on_every_channel(flaky):
    server = flaky(grpc.StatusCode.UNAVAILABLE)
    assert server.call() == b"ok" and server.calls == 2


def test_cancelled_by_the_server_is_retried_only_where_calls_have_no_side_effects(flaky):
    # gRPC core answers CANCELLED to calls that reach a server after its shutdown began (grpc/grpc#41785).
    retried = flaky(grpc.StatusCode.CANCELLED)
    assert retried.call(side_effect_free=True) == b"ok" and retried.calls == 2
    once = flaky(grpc.StatusCode.CANCELLED)
    with pytest.raises(grpc.RpcError) as err:
        once.call()
    assert err.value.code() == grpc.StatusCode.CANCELLED and once.calls == 1


def test_retries_are_bounded(flaky):
    server = flaky(grpc.StatusCode.CANCELLED, failures=100)
    with pytest.raises(grpc.RpcError) as err:
        server.call(side_effect_free=True)
    assert err.value.code() == grpc.StatusCode.CANCELLED and server.calls == 4


def test_a_channel_that_does_not_retry_fails_at_once(flaky):
    server = flaky(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(grpc.RpcError) as err:
        server.call(retry_unavailable=False, side_effect_free=True)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and server.calls == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.DEADLINE_EXCEEDED])
def test_other_failures_are_never_retried(flaky, code):
    server = flaky(code)
    with pytest.raises(grpc.RpcError) as err:
        server.call(side_effect_free=True)
    assert err.value.code() == code and server.calls == 1
