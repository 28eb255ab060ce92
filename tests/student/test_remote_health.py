"""A remote student (--backend tgi) is only SERVING while its inference server can generate (issue 20).

Against tests/student/tgi_server.py (TGI cannot run here; see test_remote.py):
- start-up makes a real one-token generation before the service reports SERVING;
- while serving, health follows the endpoint: NOT_SERVING while it is down, SERVING once it is back;
- under HF_HUB_OFFLINE=1 (huggingface_hub then refuses every HTTP request, also to a local endpoint)
  the student does not start "ready" only to fail every Act as INTERNAL: the start fails, saying why.
"""

from __future__ import annotations

import time

import grpc
import huggingface_hub.constants
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.config import ServerConfig
from services.runtime.errors import FailedPrecondition
from services.student.backends.remote import RemoteOptions, create_remote_backend
from services.student.client import StudentClient, act_item
from services.student.server import SERVICE_NAME, start_in_background
from services.student.service import StudentLimits, StudentService
from tests.student.helpers import STATES
from tests.student.tgi_server import TGITestServer

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def tgi(smollm2):
    with smollm2.borrow() as loaded:
        server = TGITestServer("smollm2", loaded=loaded).start()
        yield server
        server.stop()


def status_of(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status


def wait_status(address: str, status: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while status_of(address) != status:
        if time.monotonic() > end:
            raise AssertionError(f"health did not become {health_pb2.HealthCheckResponse.ServingStatus.Name(status)} "
                                 f"within {timeout:.0f}s")
        time.sleep(0.1)


def test_health_follows_the_remote_endpoint(tgi):
    seen = len(tgi.requests)
    options = RemoteOptions(flavor="tgi", endpoint=tgi.url, retries=0, timeout=30, health_interval=0.2,
                            probe_timeout=5)
    service = StudentService(create_remote_backend(options), StudentLimits(default_max_new_tokens=2))
    host, startup = start_in_background(service, ServerConfig(port=0, log_format="text"))
    address = f"127.0.0.1:{host.port}"
    try:
        client = StudentClient(address, timeout=60)
        client.wait_ready(timeout=120)
        assert startup.error is None
        # A real generation happened before SERVING: the start-up probe.
        probes = [r for r in tgi.requests[seen:] if r.get("parameters", {}).get("max_new_tokens") == 1]
        assert probes, "no generation probe reached the server at start"

        tgi.pause()
        try:
            wait_status(address, health_pb2.HealthCheckResponse.NOT_SERVING, 60)
            with pytest.raises(grpc.RpcError) as err:
                client.act([act_item(**STATES[0], max_new_tokens=2)], timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            tgi.resume()
        wait_status(address, health_pb2.HealthCheckResponse.SERVING, 60)
        [result] = client.act([act_item(**STATES[0], max_new_tokens=2)])
        assert result.completion_token_ids
        client.close()
    finally:
        host.stop(grace=0)


def test_offline_mode_fails_the_start_with_a_clear_error_instead_of_serving(tgi, monkeypatch):
    # What HF_HUB_OFFLINE=1 in the environment sets when huggingface_hub is imported.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    options = RemoteOptions(flavor="tgi", endpoint=tgi.url, retries=0, timeout=30)
    service = StudentService(create_remote_backend(options), StudentLimits(default_max_new_tokens=2))
    host, startup = start_in_background(service, ServerConfig(port=0, log_format="text"))
    address = f"127.0.0.1:{host.port}"
    statuses = set()
    try:
        while not startup.done.wait(0.05):
            try:
                statuses.add(status_of(address))
            except grpc.RpcError:
                pass
        assert isinstance(startup.error, FailedPrecondition), repr(startup.error)
        assert "HF_HUB_OFFLINE" in startup.error.message and tgi.url in startup.error.message
        assert health_pb2.HealthCheckResponse.SERVING not in statuses
        assert not service.ready
    finally:
        host.stop(grace=0)
