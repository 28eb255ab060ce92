"""TLS and mutual TLS over real gRPC, with certificates made at test time (issue 20, finding 12).

Servers: the environment (both services), the teacher calling it; clients: the project's typed clients,
the process-wide settings (LEAP_TLS_* variables) and the command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from leap.v1 import common_pb2
from services.environment.backends.household import HouseholdBackend
from services.environment.client import EnvironmentClient, PrivilegedClient, task_ref
from services.environment.server import EnvironmentServer
from services.runtime.config import ServerConfig
from services.runtime.tls import ClientTLS, TLSConfigError, configure_client_tls
from services.teacher.backends.oracle import OracleTeacher
from services.teacher.client import TeacherClient
from services.teacher.privileged import GrpcPrivilegedSource
from services.teacher.server import start_in_process
from services.teacher.service import TeacherService
from tests.runtime.certs import make_authority

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tls-test-token"
BACKEND = HouseholdBackend()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = make_authority(directory / "ca")
    other = make_authority(directory / "other", "someone-else-ca")
    return {
        "dir": directory, "ca": ca, "other": other,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client", client=True),
        "stranger": other.issue("stranger", client=True),
    }


@pytest.fixture(autouse=True)
def plaintext_by_default(monkeypatch):
    for name in ("LEAP_TLS_CA", "LEAP_TLS_CLIENT_CERT", "LEAP_TLS_CLIENT_KEY", "LEAP_TLS_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    configure_client_tls(None)
    yield
    configure_client_tls(None)


def environment(pki, *, mutual: bool, **kw) -> EnvironmentServer:
    config = ServerConfig(port=0, tls_cert=pki["server"].cert, tls_key=pki["server"].key,
                          tls_ca=pki["ca"].cert if mutual else "")
    server = EnvironmentServer(config, {"household": BACKEND}, token=TOKEN, **kw)
    server.start()
    return server


def refused(make_client) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        with make_client() as client:
            client.list_environments(timeout_s=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    return err.value


def test_tls_server_answers_tls_clients_only(pki):
    server = environment(pki, mutual=False)
    addr = f"127.0.0.1:{server.port}"
    try:
        with EnvironmentClient(addr, tls=ClientTLS(ca=pki["ca"].cert)) as env:
            assert env.list_environments()[0].name == "household"
        # By name as well as by address: the certificate holds both.
        with EnvironmentClient(f"localhost:{server.port}", tls=ClientTLS(ca=pki["ca"].cert)) as env:
            assert env.list_environments()[0].name == "household"
        refused(lambda: EnvironmentClient(addr, channel=grpc.insecure_channel(addr)))           # plaintext
        refused(lambda: EnvironmentClient(addr, tls=ClientTLS(ca=pki["other"].cert)))            # wrong CA
        # A name the certificate does not hold is refused, unless the client says which name to expect.
        refused(lambda: EnvironmentClient(addr, tls=ClientTLS(ca=pki["ca"].cert, server_name="elsewhere")))
    finally:
        server.stop(grace=0)


def test_mutual_tls_refuses_clients_without_a_certificate_of_the_ca(pki):
    server = environment(pki, mutual=True, privileged_port=0)
    addr, priv_addr = f"127.0.0.1:{server.port}", f"127.0.0.1:{server.privileged_port}"
    good = ClientTLS(ca=pki["ca"].cert, cert=pki["client"].cert, key=pki["client"].key)
    try:
        refused(lambda: EnvironmentClient(addr, tls=ClientTLS(ca=pki["ca"].cert)))               # no certificate
        stranger = ClientTLS(ca=pki["ca"].cert, cert=pki["stranger"].cert, key=pki["stranger"].key)
        refused(lambda: EnvironmentClient(addr, tls=stranger))                                   # another CA's
        refused(lambda: EnvironmentClient(addr, channel=grpc.insecure_channel(addr)))           # plaintext
        with EnvironmentClient(addr, tls=good) as env:
            assert env.list_environments()[0].name == "household"
            with env.session("household", task_id="train-00004") as session:
                assert session.observation.candidates
        # The privileged port speaks mutual TLS too, and still demands the token on top of it.
        with pytest.raises(grpc.RpcError) as err:
            with PrivilegedClient(priv_addr, "wrong-token", tls=good) as oracle:
                oracle.privileged_state(task_ref("household", "train-00004"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with PrivilegedClient(priv_addr, TOKEN + "\n", tls=good) as oracle:
            assert oracle.privileged_state(task_ref("household", "train-00004")).optimal_actions
    finally:
        server.stop(grace=0)


def test_process_settings_from_the_environment_reach_every_client(pki, monkeypatch):
    """The teacher's own client of the environment picks up LEAP_TLS_* (no parameter threaded through)."""
    env_server = environment(pki, mutual=True)
    monkeypatch.setenv("LEAP_TLS_CA", pki["ca"].cert)
    monkeypatch.setenv("LEAP_TLS_CLIENT_CERT", pki["client"].cert)
    monkeypatch.setenv("LEAP_TLS_CLIENT_KEY", pki["client"].key)
    service = TeacherService(OracleTeacher(), GrpcPrivilegedSource(f"127.0.0.1:{env_server.port}", TOKEN, timeout_s=10))
    teacher = start_in_process(service, ServerConfig(port=0, tls_cert=pki["server"].cert, tls_key=pki["server"].key,
                                                     tls_ca=pki["ca"].cert))
    try:
        with TeacherClient(f"localhost:{teacher.port}") as client:  # TLS from the environment variables
            demo = client.demonstrate(common_pb2.TaskRef(env="household", task_id="train-00006"), expert="searcher")
        assert demo.won and demo.steps
        monkeypatch.delenv("LEAP_TLS_CLIENT_CERT")
        monkeypatch.delenv("LEAP_TLS_CLIENT_KEY")
        with pytest.raises(grpc.RpcError) as err:
            with TeacherClient(f"localhost:{teacher.port}") as client:
                client.info(timeout_s=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        teacher.stop(grace=0)
        env_server.stop(grace=0)


def test_a_rotated_certificate_is_served_without_a_restart(pki, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    config = ServerConfig(port=0, tls_cert=str(cert), tls_key=str(key))
    server = EnvironmentServer(config, {"household": BACKEND})
    server.start()
    addr = f"127.0.0.1:{server.port}"
    try:
        with EnvironmentClient(addr, tls=ClientTLS(ca=pki["ca"].cert)) as env:
            assert env.list_environments()
        # cert-manager renews the Secret: a certificate of another CA now (a stronger change than a renewal).
        renewed = pki["other"].issue("renewed", server=True)
        shutil.copy(renewed.key, key)
        shutil.copy(renewed.cert, cert)
        with EnvironmentClient(addr, tls=ClientTLS(ca=pki["other"].cert)) as env:
            assert env.list_environments()
        refused(lambda: EnvironmentClient(addr, tls=ClientTLS(ca=pki["ca"].cert)))
        # A half-written file keeps the current certificate in service.
        cert.write_text("-----BEGIN CERTIFICATE-----\ntruncated")
        with EnvironmentClient(addr, tls=ClientTLS(ca=pki["other"].cert)) as env:
            assert env.list_environments()
    finally:
        server.stop(grace=0)


def test_bad_tls_settings_are_clear_errors(pki, tmp_path):
    with pytest.raises(TLSConfigError, match="cannot read TLS certificate"):
        ServerConfig(tls_cert=str(tmp_path / "missing.crt"), tls_key=pki["server"].key).server_tls()
    with pytest.raises(TLSConfigError, match="needs both"):
        ServerConfig(tls_cert=pki["server"].cert).server_tls()
    with pytest.raises(TLSConfigError, match="--tls-ca on a server needs"):
        ServerConfig(tls_ca=pki["ca"].cert).server_tls()
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(TLSConfigError, match="not a PEM file"):
        ClientTLS(ca=str(not_pem)).credentials()
    with pytest.raises(TLSConfigError, match="needs its key"):
        ClientTLS(ca=pki["ca"].cert, cert=pki["client"].cert)


def _leap(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200", **(env or {}))
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_command_line_speaks_tls(pki, tmp_path):
    bad = _leap("env", "serve", "--port", "0", "--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", pki["server"].key)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "cannot read TLS certificate" in bad.stderr and "Traceback" not in bad.stderr
    server = environment(pki, mutual=True)
    try:
        listing = _leap("env", "tasks", "--addr", f"127.0.0.1:{server.port}", "--split", "valid_seen", "--limit", "2",
                        "--tls-ca", pki["ca"].cert, "--tls-client-cert", pki["client"].cert,
                        "--tls-client-key", pki["client"].key)
        assert listing.returncode == 0, listing.stderr
        assert "valid_seen-00001" in listing.stdout
        # The same through LEAP_TLS_* variables; and without a client certificate: one line, exit 1.
        via_env = _leap("env", "tasks", "--addr", f"127.0.0.1:{server.port}", "--limit", "1",
                        env={"LEAP_TLS_CA": pki["ca"].cert, "LEAP_TLS_CLIENT_CERT": pki["client"].cert,
                             "LEAP_TLS_CLIENT_KEY": pki["client"].key})
        assert via_env.returncode == 0, via_env.stderr
        no_cert = _leap("env", "tasks", "--addr", f"127.0.0.1:{server.port}", "--tls-ca", pki["ca"].cert)
        assert no_cert.returncode == 1 and "UNAVAILABLE" in no_cert.stderr and "Traceback" not in no_cert.stderr
    finally:
        server.stop(grace=0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_plaintext_health_port_for_probes_that_cannot_speak_tls(pki):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from leap.v1 import environment_pb2, environment_pb2_grpc

    config = ServerConfig(port=0, tls_cert=pki["server"].cert, tls_key=pki["server"].key, tls_ca=pki["ca"].cert,
                          health_port=_free_port())
    server = EnvironmentServer(config, {"household": BACKEND}, token=TOKEN, privileged_port=0)
    server.start()
    try:
        health_port = server.host.health_port
        assert health_port == config.health_port
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", "leap.v1.EnvironmentService"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # Health only: nothing else is served in plaintext.
            with pytest.raises(grpc.RpcError) as err:
                environment_pb2_grpc.EnvironmentServiceStub(channel).ListEnvironments(
                    environment_pb2.ListEnvironmentsRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        server.host.set_serving("leap.v1.EnvironmentService", False)
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.stop(grace=0)
