"""orchestrator.platforms.hot_swap on its own: addresses in, one gRPC conversation per replica.

The replicas are tests/deploy/fake_student.py servers on loopback (the adapter lifecycle of the real
StudentService contract, without a model).
"""

from __future__ import annotations

import socket

import pytest

from leap.v1 import common_pb2
from orchestrator.platforms.hot_swap import HotSwapError, swap_adapter_on_replicas
from tests.deploy.fake_student import start_replica


@pytest.fixture()
def replicas():
    started = []

    def start(**knobs):
        host, servicer = start_replica(**knobs)
        started.append(host)
        return f"127.0.0.1:{host.port}", servicer

    yield start
    for host in started:
        host.stop(grace=0)


def ckpt(version="student-iter-2", uri="/runs/r/checkpoints/student/v2"):
    return common_pb2.CheckpointRef(name="student", version=version, uri=uri, base_model="smollm2")


def test_staging_without_switching_keeps_the_current_version(replicas):
    (a, sa), (b, sb) = replicas(), replicas()
    report = swap_adapter_on_replicas([a, b], ckpt(), make_current=False)
    assert report.ok
    for servicer in (sa, sb):
        assert servicer.current == "base" and "student-iter-2" in servicer.adapters
        assert servicer.load_calls[0].keep_current is True


def test_an_unreachable_replica_is_retried_then_reported(replicas):
    good, _ = replicas()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(HotSwapError) as err:
        swap_adapter_on_replicas([good, dead], ckpt(), attempts=2, backoff_s=0.01)
    (failed,) = err.value.report.failed
    assert failed.address == dead and failed.attempts == 2 and failed.error.startswith("UNAVAILABLE")
    report = swap_adapter_on_replicas([good, dead], ckpt(), attempts=1, backoff_s=0.01, require_all=False)
    assert not report.ok and [r.ok for r in report.replicas] == [True, False]


def test_a_replica_that_loads_but_never_switches_is_not_confirmed(replicas):
    stubborn, servicer = replicas(load_without_switch=True)
    with pytest.raises(HotSwapError, match="not confirmed: student-iter-2 is loaded but the current version is base"):
        swap_adapter_on_replicas([stubborn], ckpt(), attempts=2, backoff_s=0.01)
    # Each attempt asks again: loading a staged version with keep_current=False is how it becomes current.
    assert [c.keep_current for c in servicer.load_calls] == [False, False]


def test_a_version_name_reused_for_other_weights_is_refused(replicas):
    addr, servicer = replicas()
    swap_adapter_on_replicas([addr], ckpt(uri="/runs/r/checkpoints/student/v2"), make_current=False)
    with pytest.raises(HotSwapError) as err:
        swap_adapter_on_replicas([addr], ckpt(uri="/runs/r/checkpoints/student/v9"), attempts=1)
    assert "student-iter-2 is loaded from /runs/r/checkpoints/student/v2, not from /runs/r/checkpoints/student/v9" \
        in str(err.value) and "restart the student replicas" in str(err.value)
    assert err.value.report.replicas[0].attempts == 1, "a conflict is definite: no retry"
    assert servicer.adapters["student-iter-2"].checkpoint.uri.endswith("/v2"), "the first weights stay"


def test_a_version_already_current_with_other_weights_is_not_confirmed(replicas):
    # A long-lived replica still serving a previous run's adapter under the same name: before, the
    # name alone "confirmed" it, and the new run would have played the old weights.
    addr, servicer = replicas()
    swap_adapter_on_replicas([addr], ckpt(uri="/runs/old-run/checkpoints/student/v1"))
    with pytest.raises(HotSwapError, match="loaded from /runs/old-run/checkpoints/student/v1, not from"):
        swap_adapter_on_replicas([addr], ckpt(uri="/runs/new-run/checkpoints/student/v1"), attempts=3)
    assert len(servicer.load_calls) == 1, "the conflicting replica was not asked to load again"
    # The same checkpoint (same uri, same sha256) is confirmed without loading anything.
    again = swap_adapter_on_replicas([addr], ckpt(uri="/runs/old-run/checkpoints/student/v1"))
    assert again.ok and again.replicas[0].already_loaded


def test_a_checkpoint_without_version_is_a_caller_error():
    with pytest.raises(ValueError, match="no version"):
        swap_adapter_on_replicas(["127.0.0.1:1"], common_pb2.CheckpointRef(uri="/x"))
