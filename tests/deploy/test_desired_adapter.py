"""Declarative adapters: student replicas serve the desired adapter the orchestrator recorded.

What runs for real: the student's gRPC server, health, service logic, adapter registry, checkpoint
verification and the desired-adapter follower (services.student.desired_adapter); the orchestrator's
Kubernetes platform with the real `kubernetes` client against tests/deploy/fake_kube_api.py; the
household EnvironmentService; the orchestrator's own episode loop and student channel. Played by the
test: the kubelet (projecting the ConfigMap into a replica's mounted folder), and the model (the
scripted backend of tests/deploy/student_backend.py answers without a neural network).
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leap.v1 import common_pb2, student_pb2, student_pb2_grpc
from orchestrator.platforms.kubernetes import (
    DESIRED_CONFIGMAP,
    KubernetesPlatform,
    PlatformSettings,
    use_health_checked_student_channel,
)
from services.runtime.config import ServerConfig
from services.runtime.errors import InvalidArgument
from services.runtime.server import ServiceHost
from services.student.desired_adapter import (
    MAX_RECORD_BYTES,
    DesiredAdapterFollower,
    encode_record,
    parse_record,
    read_record,
)
from services.student.server import SERVICE_NAME, start_in_background
from services.student.service import StudentService
from tests.deploy.fake_kube_api import FakeKube, project_configmap
from tests.deploy.student_backend import ScriptedBackend, write_checkpoint

NS = "leap"
V1, V2 = "student-iter-1", "student-iter-2"


# ---------------------------------------------------------------------------------- helpers
def checkpoint(runs: Path, version: str, *, seed: float = 0.0, write: bool = True) -> dict:
    path = runs / "r1" / "checkpoints" / "student" / version
    sha = write_checkpoint(path, version=version, seed=seed) if write else ""
    return {"name": "student", "uri": str(path), "sha256": sha, "base_model": "smollm2"}


def write_record(folder: Path, text: str | bytes) -> None:
    """Replace the record atomically (a new file renamed over the old one)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".desired.tmp"
    tmp.write_bytes(text if isinstance(text, bytes) else text.encode())
    os.replace(tmp, folder / "desired.json")


class Replica:
    """One student replica: the real server, service and follower on the scripted backend."""

    def __init__(self, mount: Path, runs: Path, *, port: int = 0, gate: threading.Event | None = None,
                 step_delay_s: float = 0.0):
        self.backend = ScriptedBackend(checkpoint_root=str(runs), start_gate=gate, step_delay_s=step_delay_s)
        self.service = StudentService(self.backend)
        self.follower = DesiredAdapterFollower(self.service, mount / "desired.json", poll_seconds=0.05,
                                               retry_max_seconds=0.2)
        self.host, self.state = start_in_background(
            self.service, ServerConfig(host="127.0.0.1", port=port, grace_seconds=5.0), self.follower)
        self.port = self.host.port
        self.address = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.address)

    def health(self) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status

    def serving(self) -> bool:
        return self.health() == health_pb2.HealthCheckResponse.SERVING

    def listed(self) -> student_pb2.ListAdaptersResponse:
        return student_pb2_grpc.StudentServiceStub(self.channel).ListAdapters(student_pb2.ListAdaptersRequest(),
                                                                              timeout=5)

    def act(self, version: str = "") -> student_pb2.ActResult:
        item = student_pb2.ActItem(request_id="r", env="household", goal="put a mug on the desk.",
                                   observation="You are in the middle of a room.", candidates=["look", "go to desk 1"],
                                   adapter_version=version)
        stub = student_pb2_grpc.StudentServiceStub(self.channel)
        return stub.Act(student_pb2.ActRequest(items=[item]), timeout=5).results[0]

    def stop(self, grace: float = 0) -> None:
        self.channel.close()
        self.host.stop(grace=grace)


def count_turned_away(replica: Replica):
    """A counter of the Act calls the replica refused because it was not yet serving its adapter."""
    servicer = replica.host.registrations[0].servicer
    gate = servicer.accepting
    refused = [0]

    class Counting:
        def is_set(self) -> bool:
            if not gate.is_set():
                refused[0] += 1
            return gate.is_set()

    servicer.accepting = Counting()
    return lambda: refused[0]


def wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture()
def runs(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture()
def replicas():
    started: list[Replica] = []

    def start(*args, **kwargs) -> Replica:
        replica = Replica(*args, **kwargs)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.stop()


@pytest.fixture()
def kube():
    fake = FakeKube().start()
    fake.put("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": DESIRED_CONFIGMAP, "namespace": NS}})
    yield fake
    fake.stop()


def platform_for(kube: FakeKube) -> KubernetesPlatform:
    return KubernetesPlatform(kube.api_client(), PlatformSettings(namespace=NS, poll_seconds=0.05,
                                                                  settle_timeout_s=5.0, swap_backoff_s=0.05))


def ref(version: str, ckpt: dict) -> common_pb2.CheckpointRef:
    return common_pb2.CheckpointRef(version=version, **ckpt)


# ---------------------------------------------------------------------------------- the record
def test_a_record_round_trips_and_names_base_or_a_checkpoint(runs):
    ckpt = checkpoint(runs, V1)
    record = parse_record(encode_record(V1, ckpt, run="k8s-household-0a1b").encode())
    assert record.version == V1 and not record.is_base
    assert (record.checkpoint.uri, record.checkpoint.sha256, record.checkpoint.version) == (ckpt["uri"], ckpt["sha256"], V1)
    base = parse_record(encode_record("base").encode())
    assert base.is_base and base.checkpoint is None
    assert parse_record(b'{"version": "base", "checkpoint": {}}').is_base


@pytest.mark.parametrize("data,message", [
    (b"x" * (MAX_RECORD_BYTES + 1), "larger than"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2]", "must be a JSON object"),
    (b"{not json", "not valid JSON"),
    (b"[" * 30000 + b"]" * 30000, "not valid JSON"),  # nested deeper than the parser recurses
    (b"{}", "version is empty"),
    (b'{"version": 7}', "version must be a string"),
    (b'{"version": "v\\u0000"}', "NUL byte"),
    (b'{"version": "../../etc"}', "not a valid version name"),
    (json.dumps({"version": "v" * 129, "checkpoint": {"uri": "/runs/x"}}).encode(), "not a valid version name"),
    (b'{"version": "base", "checkpoint": {"uri": "/runs/x"}}', "takes no checkpoint"),
    (b'{"version": "v1"}', "needs a checkpoint object"),
    (b'{"version": "v1", "checkpoint": "/runs/x"}', "needs a checkpoint object"),
    (b'{"version": "v1", "checkpoint": {"uri": ""}}', "checkpoint.uri is empty"),
    (b'{"version": "v1", "checkpoint": {"uri": "/runs/x\\u0000/y"}}', "NUL byte"),
    (json.dumps({"version": "v1", "checkpoint": {"uri": "/" + "a" * 5000}}).encode(), "longer than"),
    (b'{"version": "v1", "checkpoint": {"uri": "/runs/x", "sha256": "abc"}}', "64 hex digits"),
    (b'{"version": "v1", "checkpoint": {"uri": "/runs/x", "version": "v2"}}', "differs from version"),
    (b'{"version": "v1", "checkpoint": {"uri": "/runs/x", "command": "rm -rf /"}}', "unknown checkpoint fields"),
])
def test_hostile_records_are_refused_with_the_reason(data, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_record(data)


def test_reading_follows_the_kubelets_symlinks_and_refuses_what_is_not_a_file(tmp_path, kube):
    folder = tmp_path / "mount"
    with pytest.raises(InvalidArgument, match="is the ConfigMap mounted"):
        read_record(folder / "desired.json")
    folder.mkdir()
    assert read_record(folder / "desired.json") is None, "no record yet: the base model"
    kube.objects[("configmaps", NS, DESIRED_CONFIGMAP)]["data"] = {"desired.json": encode_record("base")}
    project_configmap(kube, NS, DESIRED_CONFIGMAP, folder)
    assert (folder / "desired.json").is_symlink() and read_record(folder / "desired.json").is_base
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidArgument, match="not a regular file"):
        read_record(fifo)  # opened without blocking: no writer needed
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "desired.json").mkdir()
    with pytest.raises(InvalidArgument, match="not a regular file"):
        read_record(tmp_path / "dir" / "desired.json")
    big = tmp_path / "big" / "desired.json"
    big.parent.mkdir()
    big.write_bytes(b" " * (10 * MAX_RECORD_BYTES))
    with pytest.raises(InvalidArgument, match="larger than"):
        read_record(big)


# ---------------------------------------------------------------------------------- one replica
def test_a_replica_is_not_serving_until_the_desired_checkpoint_can_be_loaded(runs, tmp_path, replicas):
    mount = tmp_path / "mount"
    ckpt = checkpoint(runs, V1, write=False)  # recorded before the files reached this node
    write_record(mount, encode_record(V1, dict(ckpt, sha256="")))
    replica = replicas(mount, runs)
    wait_for(lambda: replica.follower.last_error, what="the first failed attempt")
    assert "does not exist" in replica.follower.last_error
    assert not replica.serving()
    with pytest.raises(grpc.RpcError) as err:
        replica.act(V1)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, "retryable: the caller's channel tries another replica"
    assert replica.listed().current_version == "base"
    write_checkpoint(Path(ckpt["uri"]), version=V1)
    wait_for(replica.serving, what="SERVING once the files are there")
    assert replica.listed().current_version == V1
    assert replica.act(V1).adapter_version == V1 and replica.act().adapter_version == V1


@pytest.mark.parametrize("problem", ["corrupt weights", "path outside the runs volume", "no folder mounted"])
def test_a_replica_never_falls_back_to_the_base_model(runs, tmp_path, replicas, problem):
    mount = tmp_path / "mount"
    ckpt = checkpoint(runs, V1)
    if problem == "corrupt weights":
        weights = Path(ckpt["uri"]) / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-4] + b"evil")
        write_record(mount, encode_record(V1, ckpt))
        expected = "was modified after it was written"
    elif problem == "path outside the runs volume":
        write_record(mount, encode_record(V1, {"uri": "../../../../etc"}))
        expected = "outside the adapters root"
    else:
        expected = "is the ConfigMap mounted"
    replica = replicas(mount, runs)
    wait_for(lambda: replica.follower.last_error, what="a failed attempt")
    assert expected in replica.follower.last_error
    time.sleep(0.3)  # several retries later
    assert not replica.serving() and replica.listed().current_version == "base"
    assert not replica.backend.generated, "nothing was generated"


def test_a_running_replica_follows_the_record_and_keeps_serving_through_bad_ones(runs, tmp_path, replicas):
    mount = tmp_path / "mount"
    mount.mkdir()
    replica = replicas(mount, runs)
    wait_for(replica.serving, what="SERVING on the base model (no record)")
    assert replica.listed().current_version == "base"
    write_record(mount, encode_record(V1, checkpoint(runs, V1)))
    wait_for(lambda: replica.listed().current_version == V1, what="v1 current")
    write_record(mount, b"\x00garbage")
    wait_for(lambda: "not" in replica.follower.last_error, what="the bad record noticed")
    write_record(mount, encode_record(V2, checkpoint(runs, V2, write=False)))
    wait_for(lambda: "does not exist" in replica.follower.last_error, what="the missing checkpoint noticed")
    assert replica.serving() and replica.listed().current_version == V1, "the current version keeps serving"
    assert replica.act(V1).adapter_version == V1
    write_checkpoint(runs / "r1" / "checkpoints" / "student" / V2, version=V2, seed=2.0)
    wait_for(lambda: replica.listed().current_version == V2, what="v2 current once its files arrive")
    assert replica.follower.last_error == ""
    write_record(mount, encode_record("base"))
    wait_for(lambda: replica.listed().current_version == "base", what="back to the base model")
    assert {a.version for a in replica.listed().adapters} >= {"base", V2}, "the previous version stays loaded"


# ---------------------------------------------------------------------------------- with the orchestrator
def test_a_student_started_after_a_swap_serves_the_desired_version_and_is_not_serving_before(
        runs, tmp_path, replicas, kube):
    first = replicas(tmp_path / "pod-a", runs)
    (tmp_path / "pod-a").mkdir(exist_ok=True)
    wait_for(first.serving, what="the first replica")
    kube.set_student_endpoints([("127.0.0.1", first.port, True)], namespace=NS)
    ckpt = checkpoint(runs, V1)
    report = platform_for(kube).hot_swap(ref(V1, ckpt), run="k8s-household-0a1b")
    assert report.ok and first.listed().current_version == V1
    # The swap was recorded, as a merge patch of the one ConfigMap the students mount.
    (patch,) = kube.calls("PATCH", rf"/configmaps/{DESIRED_CONFIGMAP}$")
    record = parse_record(patch.body["data"]["desired.json"].encode())
    assert (record.version, record.checkpoint.uri, record.checkpoint.sha256) == (V1, ckpt["uri"], ckpt["sha256"])

    # A replica added now (a new pod: the kubelet mounts the ConfigMap as it is) loads its model...
    project_configmap(kube, NS, DESIRED_CONFIGMAP, tmp_path / "pod-b")
    model_loaded = threading.Event()
    second = replicas(tmp_path / "pod-b", runs, gate=model_loaded)
    assert second.health() == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as err:
        second.act(V1)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    time.sleep(0.2)
    assert second.health() == health_pb2.HealthCheckResponse.NOT_SERVING
    model_loaded.set()
    # ...and reports SERVING only with the recorded version current.
    wait_for(second.serving, what="the added replica SERVING")
    assert second.listed().current_version == V1
    assert second.act(V1).adapter_version == V1 and second.act().adapter_version == V1


def test_a_failed_swap_puts_the_previous_record_back(runs, tmp_path, replicas, kube):
    mount = tmp_path / "pod"
    mount.mkdir()
    replica = replicas(mount, runs)
    wait_for(replica.serving, what="SERVING")
    kube.set_student_endpoints([("127.0.0.1", replica.port, True)], namespace=NS)
    platform = platform_for(kube)
    platform.hot_swap(ref(V1, checkpoint(runs, V1)))
    before = kube.get("configmaps", NS, DESIRED_CONFIGMAP)["data"]["desired.json"]
    broken = checkpoint(runs, V2)
    (Path(broken["uri"]) / "adapter_config.json").write_text('{"peft_type": "PREFIX"}')
    with pytest.raises(Exception, match="FAILED_PRECONDITION"):
        platform.hot_swap(ref(V2, broken))
    assert kube.get("configmaps", NS, DESIRED_CONFIGMAP)["data"]["desired.json"] == before, \
        "a replica that starts now must serve what the others still serve"


def test_a_restarted_replica_mid_rollout_loses_no_episode(runs, tmp_path, replicas, kube):
    from orchestrator.episodes import EpisodeSettings, ServiceStubs, list_task_refs, play_student_episode
    from services.environment.server import EnvironmentServer, make_backends

    env = EnvironmentServer(ServerConfig(host="127.0.0.1", port=0, grace_seconds=1.0), make_backends(["household"]))
    env_port = env.start()
    mounts = [tmp_path / "pod-a", tmp_path / "pod-b"]
    for mount in mounts:
        mount.mkdir()
    a = replicas(mounts[0], runs, step_delay_s=0.01)
    b = replicas(mounts[1], runs, step_delay_s=0.01)
    wait_for(lambda: a.serving() and b.serving(), what="two replicas")
    kube.set_student_endpoints([("127.0.0.1", a.port, True), ("127.0.0.1", b.port, True)], namespace=NS)
    platform_for(kube).hot_swap(ref(V1, checkpoint(runs, V1)))
    for mount in mounts:
        project_configmap(kube, NS, DESIRED_CONFIGMAP, mount)

    stubs = ServiceStubs({"environment": f"127.0.0.1:{env_port}", "teacher": "127.0.0.1:9",
                          "student": f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"})
    use_health_checked_student_channel(SimpleNamespace(stubs=stubs))  # what `leap run --platform kubernetes` gives the run
    settings = EpisodeSettings(env="household", horizon=10, temperature=0.0, max_new_tokens=32, history_window=4,
                               seed=1, adapter_version=V1)
    tasks = list_task_refs(stubs, "household", "train", 0, 18)
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        play = lambda refs: [pool.submit(play_student_episode, stubs, t.task_id, settings) for t in refs]  # noqa: E731
        first_wave = play(tasks[:8])
        wait_for(lambda: b.backend.generated[V1] >= 2, what="replica b serving the rollout")
        # The container restarts (same pod IP and port): SIGTERM drains it, then the new process
        # loads its model (held here) and the desired adapter before it reports SERVING.
        # The deployment gives a student 75 s to drain (terminationGracePeriodSeconds); 30 s here, so a
        # loaded CI machine finishes the in-flight Acts too (stop returns as soon as they are done).
        b.stop(grace=30.0)
        model_loaded = threading.Event()
        b2 = replicas(mounts[1], runs, port=b.port, gate=model_loaded, step_delay_s=0.01)
        turned_away = count_turned_away(b2)
        done = [f.result(timeout=60) for f in first_wave]
        # Episodes go on while it loads, long enough for the clients to reconnect to its port.
        loading_until = time.monotonic() + 3.0
        while time.monotonic() < loading_until:
            done += [f.result(timeout=60) for f in play(tasks[8:12])]
        # Client-side health checking: no call even reached the replica while it was NOT_SERVING
        # (without it, calls land there, are refused UNAVAILABLE and depend on retries).
        assert turned_away() == 0 and b2.backend.generated[V1] == 0
        model_loaded.set()
        wait_for(b2.serving, what="the restarted replica SERVING")
        assert b2.listed().current_version == V1
        deadline = time.monotonic() + 20
        while b2.backend.generated[V1] == 0 and time.monotonic() < deadline:  # clients see it again
            done += [f.result(timeout=60) for f in play(tasks[12:18])]
        assert b2.backend.generated[V1] > 0, "the restarted replica takes traffic again once SERVING"
    finally:
        pool.shutdown(wait=True)
        stubs.close()
        env.stop(grace=0)
    assert len(done) >= 18
    for trajectory in done:
        assert trajectory.steps, "every episode played"
        assert {s.adapter_version for s in trajectory.steps} == {V1}, "every step on the rollout's version"


# ---------------------------------------------------------------------------------- connection age
def test_a_maximum_connection_age_makes_clients_reconnect(monkeypatch):
    import argparse

    from services.runtime.config import add_server_arguments
    from tests.runtime import demo_service

    monkeypatch.setenv("LEAP_MAX_CONNECTION_AGE_SECONDS", "0.3")  # as the ConfigMap sets it
    parser = argparse.ArgumentParser()
    add_server_arguments(parser, 50061)
    config = ServerConfig.from_args(parser.parse_args(["--max-connection-age-grace-seconds", "1"]))
    assert (config.max_connection_age_s, config.max_connection_age_grace_s) == (0.3, 1.0)

    def states_seen(age: float) -> list:
        host = ServiceHost(ServerConfig(host="127.0.0.1", port=0, max_connection_age_s=age), demo_service.registrations())
        host.start()
        seen: list = []
        channel = grpc.insecure_channel(f"127.0.0.1:{host.port}")
        channel.subscribe(seen.append, try_to_connect=True)
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            time.sleep(1.2)
            return list(seen)
        finally:
            channel.close()
            host.stop(grace=0)

    ready = grpc.ChannelConnectivity.READY
    aged = states_seen(0.3)
    assert ready in aged and aged.index(ready) < len(aged) - 1, f"the server closed the connection: {aged}"
    assert states_seen(0)[-1] == ready, "without an age the connection stays"


def test_the_student_cli_follows_the_record_its_configmap_names(monkeypatch, tmp_path):
    """`leap student serve` with LEAP_DESIRED_ADAPTER_FILE (as the student ConfigMap sets it) serves
    with a follower of that file; without it, with none (local runs: LoadAdapter only)."""
    import argparse

    import services.student.server as server_module
    from services.student import cli

    served = []
    monkeypatch.setattr(cli, "build_service", lambda args: StudentService(ScriptedBackend()))
    monkeypatch.setattr(server_module, "serve", lambda service, config, follower=None: served.append(follower) or 0)

    def run(*argv: str) -> None:
        parser = argparse.ArgumentParser()
        cli.configure(parser)
        args = parser.parse_args(["serve", *argv])
        assert args.func(args) == 0

    monkeypatch.setenv("LEAP_DESIRED_ADAPTER_FILE", str(tmp_path / "adapter" / "desired.json"))
    monkeypatch.setenv("LEAP_DESIRED_ADAPTER_POLL_SECONDS", "0.5")
    run()
    assert served[-1].path == tmp_path / "adapter" / "desired.json" and served[-1].poll_seconds == 0.5
    with pytest.raises(SystemExit, match="must be positive"):
        run("--desired-adapter-poll-seconds", "0")
    monkeypatch.delenv("LEAP_DESIRED_ADAPTER_FILE")
    run()
    assert served[-1] is None
