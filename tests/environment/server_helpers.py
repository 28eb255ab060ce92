"""Shared fixtures of the tests that serve one backend over loopback gRPC: the server and its two clients.

    server, env, oracle = served("alfworld", TOKEN, max_sessions=32, timeout_s=60, oracle_timeout_s=120)

defines the module's `server` fixture (module scope, over the module's `backend` fixture unless a
backend is given), and the `env` (EnvironmentClient) and `oracle` (PrivilegedClient) fixtures.
"""

from __future__ import annotations

import grpc
import pytest

from services.environment.backends.base import Backend
from services.environment.client import EnvironmentClient, PrivilegedClient
from services.environment.server import EnvironmentServer
from services.runtime.config import ServerConfig


def served(name: str, token: str, *, max_sessions: int, timeout_s: float, oracle_timeout_s: float | None = None,
           backend: Backend | None = None, max_message_bytes: int = 4 * 1024 * 1024, **server_config):
    """The `server`, `env` and `oracle` fixtures of a module serving one backend under `name` (more
    ServerConfig fields in `server_config`)."""

    @pytest.fixture(scope="module")
    def server(request):
        served_backend = backend if backend is not None else request.getfixturevalue("backend")
        config = ServerConfig(port=0, max_message_bytes=max_message_bytes, **server_config)
        srv = EnvironmentServer(config, {name: served_backend}, token=token, max_sessions=max_sessions)
        srv.start()
        yield srv
        srv.stop(grace=0)

    @pytest.fixture()
    def env(server):
        with EnvironmentClient(f"127.0.0.1:{server.port}", timeout_s=timeout_s) as client:
            yield client

    @pytest.fixture()
    def oracle(server):
        with PrivilegedClient(f"127.0.0.1:{server.privileged_port}", token,
                              timeout_s=oracle_timeout_s or timeout_s) as client:
            yield client

    return server, env, oracle


def code_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    """The status code and details of the RpcError a call raises (it must raise one)."""
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    return err.value.code(), err.value.details()
