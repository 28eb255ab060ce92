"""The shared runtime over real gRPC on loopback: status codes, limits, health, reflection, drain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from leap.v1 import environment_pb2 as pb
from leap.v1 import environment_pb2_grpc as pb_grpc
from tests.runtime import demo_service

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def host():
    h = demo_service.start_in_process(max_message_bytes=64 * 1024)
    yield h
    h.stop(grace=0)


@pytest.fixture()
def channel(host):
    with grpc.insecure_channel(f"127.0.0.1:{host.port}") as ch:
        yield ch


def test_unknown_method_is_unimplemented(channel):
    call = channel.unary_unary("/leap.v1.EnvironmentService/NoSuchMethod",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as err:
        call(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_oversized_request_is_resource_exhausted(channel):
    stub = pb_grpc.EnvironmentServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Step(pb.StepRequest(session_id="s", action="x" * (128 * 1024)), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_handler_exception_is_internal_with_message_and_server_survives(channel):
    stub = pb_grpc.EnvironmentServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.ListEnvironments(pb.ListEnvironmentsRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError: boom" in err.value.details()
    assert "Traceback" not in err.value.details()
    # Still serving afterwards.
    assert stub.Step(pb.StepRequest(session_id="s", action="0"), timeout=5).observation.text == "slept 0"


def test_service_error_maps_to_its_code(channel):
    stub = pb_grpc.EnvironmentServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.ListTasks(pb.ListTasksRequest(env="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "valid names: demo" in err.value.details()


def test_deadline_is_honoured(channel):
    stub = pb_grpc.EnvironmentServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Step(pb.StepRequest(session_id="s", action="1.0"), timeout=0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_health_serving_and_per_service_status(host, channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", demo_service.NAME):
        assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    host.set_serving(demo_service.NAME, False)
    assert health.Check(health_pb2.HealthCheckRequest(service=demo_service.NAME), timeout=5).status == \
        health_pb2.HealthCheckResponse.NOT_SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
        health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {demo_service.NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_sigterm_drains_in_flight_call(tmp_path):
    port_file = tmp_path / "port"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tests.runtime.demo_service", str(port_file)],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while not port_file.exists() and time.time() < deadline:
            time.sleep(0.05)
        port = int(port_file.read_text())
        result: dict = {}
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.EnvironmentServiceStub(ch)
            stub.Step(pb.StepRequest(session_id="s", action="0"), timeout=10)  # connected

            def slow_call():
                try:
                    result["text"] = stub.Step(pb.StepRequest(session_id="s", action="1.5"), timeout=20).observation.text
                except grpc.RpcError as exc:  # pragma: no cover - reported by the assert below
                    result["error"] = exc.code()

            t = threading.Thread(target=slow_call)
            t.start()
            time.sleep(0.4)
            proc.send_signal(signal.SIGTERM)
            t.join(20)
        assert result == {"text": "slept 1.5"}
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_sigterm_received_by_a_worker_thread_still_stops_the_server(tmp_path):
    """CPython runs a signal's handler on the main thread only; when the kernel hands SIGTERM to another
    thread, a main thread blocked in an untimed wait never runs it (CI saw `leap student serve` ignore
    SIGTERM this way). The demo process signals itself from a worker thread once it serves."""
    port_file = tmp_path / "port"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tests.runtime.demo_service", str(port_file),
                             "sigterm-from-a-worker-thread"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.wait(timeout=30) == 0
        assert port_file.exists()
        log = proc.stderr.read()
        assert "shutting down" in log and "stopped" in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_idle_watch_streams_cannot_fill_the_server_or_starve_its_probes(tmp_path):
    """A health Watch stream needs no credentials and stays open while its client wants. Each method
    holds at most twice its pool's threads in calls (running or waiting); beyond, a stream is refused
    with RESOURCE_EXHAUSTED at once, so idle streams never fill --max-concurrent-rpcs, and Check (the
    kubelet's probe) answers on the main port and on the plaintext --health-port."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        health_port = probe.getsockname()[1]
    host = demo_service.start_in_process(max_concurrent_rpcs=40, health_port=health_port)
    try:
        for port, limit in ((host.port, 16), (host.health_port, 4)):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                watches = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(limit + 8)]
                refused = []
                deadline = time.time() + 20
                while len(refused) < 8 and time.time() < deadline:
                    refused = [w for w in watches if w.done() and w.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
                    time.sleep(0.05)
                assert len(refused) == 8, (port, len(refused))
                for _ in range(3):
                    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                        health_pb2.HealthCheckResponse.SERVING
                for w in watches:
                    w.cancel()
    finally:
        host.stop(grace=0)


def test_a_server_whose_start_up_fails_stops_with_a_logged_error(tmp_path):
    """on_start (loading a model) raising must not leave a process that answers NOT_SERVING forever:
    the error is logged and the server stops with exit status 1."""
    port_file = tmp_path / "port"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "tests.runtime.demo_service", str(port_file), "failing-start-up"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "start-up failed; the server stops" in proc.stderr and "model weights not found" in proc.stderr
