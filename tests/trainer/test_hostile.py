"""The trainer against hostile and careless clients (issue 20), over real gRPC, no model.

- malformed input (deep nesting, huge strings, NUL bytes, lone surrogates, absurd hyper-parameters)
  is INVALID_ARGUMENT with a bounded message naming the field, never INTERNAL;
- paths stay under --runs-dir (absolute paths elsewhere, '..', '~', file://, escaping symlinks), and
  a refusal says nothing about what exists outside it; /etc/passwd and /proc/self/environ are not
  datasets;
- dataset size caps (bytes, rows) and a streaming read (memory does not grow with the file);
- held WatchJob streams do not starve health and control calls.
"""

from __future__ import annotations

import json
import os
import threading
import tracemalloc
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leap.v1 import common_pb2, trainer_pb2
from services.runtime.errors import InvalidArgument
from services.trainer.client import TrainerClient
from services.trainer.datasets import read_dataset
from tests.trainer.helpers import TrainerServer, messages, sft_rows, wait_for, write_jsonl

#: Longest status message a refusal may carry: the client must get the real error, never a
#: RESOURCE_EXHAUSTED about metadata size, and a log line stays readable.
MAX_DETAILS = 1200


class HeldExecutor:
    """A job that runs (reporting progress) until it is cancelled or the trainer shuts down."""

    def __init__(self):
        self.started = threading.Event()

    def __call__(self, context):
        context.report(step=1, total_steps=2, message="training")
        self.started.set()
        while True:  # ends with JobCancelled from check_cancelled
            context.check_cancelled()
            threading.Event().wait(0.02)


@pytest.fixture()
def runs(tmp_path):
    write_jsonl(tmp_path / "runs" / "data" / "sft.jsonl", sft_rows(2))
    (tmp_path / "outside").mkdir()
    write_jsonl(tmp_path / "outside" / "secret.jsonl", sft_rows(2))
    return tmp_path / "runs"


@pytest.fixture()
def server(tmp_path, runs):
    srv = TrainerServer(tmp_path / "state", runs, execute=HeldExecutor())
    yield srv
    srv.stop()


@pytest.fixture()
def client(server):
    with TrainerClient(server.address, timeout=30) as c:
        yield c


def refusal(client, method="sft", datasets=("data/sft.jsonl",), **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        client.start_job(method, list(datasets), **kwargs)
    code, details = err.value.code(), err.value.details() or ""
    assert len(details) <= MAX_DETAILS, f"unbounded message ({len(details)} characters)"
    return code, details


# -- finding 1: malformed input is INVALID_ARGUMENT, bounded ---------------------------------------

def test_a_line_of_100000_nested_brackets_is_invalid_argument(client, runs):
    path = runs / "data" / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    code, details = refusal(client, datasets=["data/deep.jsonl"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{path}:1" in details and "nest" in details

    # Nested objects inside an otherwise valid row: refused too (by depth, not by Python's stack).
    row = sft_rows(1)[0]
    deep: dict = {}
    node = deep
    for _ in range(200):
        node["x"] = {}
        node = node["x"]
    row["meta"] = deep
    write_jsonl(path, [row])
    code, details = refusal(client, datasets=["data/deep.jsonl"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "nest" in details


def test_huge_strings_and_nul_bytes_are_invalid_argument_naming_the_field(client):
    cases = {
        "run_dir": dict(run_dir="r" * 5000),
        "base_model": dict(base_model="b" * 5000),
        "output_name": dict(output_name="o" * 5000),
        "job_id": dict(job_id="j" * 5000),
        "datasets[0].uri": dict(datasets=["d" * 5000 + ".jsonl"]),
    }
    for field, kwargs in cases.items():
        code, details = refusal(client, **kwargs)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, code, details)
        assert field in details, (field, details)
    nul_cases = {
        "run_dir": dict(run_dir="r1\x00/x"),
        "datasets[0].uri": dict(datasets=["data/sft.jsonl\x00.txt"]),
        "parent.uri": dict(parent=common_pb2.CheckpointRef(uri="checkpoints/\x00/v1")),
        "base_model": dict(base_model="smollm2\x00"),
    }
    for field, kwargs in nul_cases.items():
        code, details = refusal(client, **kwargs)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, code, details)
        assert field in details and "NUL" in details, (field, details)
    assert client.list() == []


def test_an_unknown_job_id_of_5000_characters_is_not_found_with_a_bounded_message(client):
    for call in (client.get, client.cancel):
        with pytest.raises(grpc.RpcError) as err:
            call("x" * 5000)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and len(err.value.details()) <= MAX_DETAILS


# -- finding 5: paths confined to --runs-dir ------------------------------------------------------

def test_run_dir_outside_the_runs_dir_is_refused_and_nothing_is_written(client, runs, tmp_path):
    (runs / "escape").symlink_to(tmp_path / "outside")
    home = Path(os.path.expanduser("~"))
    for run_dir in ["/some/where", str(tmp_path / "outside"), "../..", "../outside", "~", "~/leap-run",
                    f"file://{tmp_path / 'outside'}", "escape", "escape/deeper", "s3://bucket/run"]:
        code, details = refusal(client, run_dir=run_dir)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (run_dir, code, details)
        assert "run_dir" in details and str(tmp_path / "outside") not in details.replace(run_dir, "")
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["secret.jsonl"]
    assert not (home / "leap-run").exists() and not Path("/some/where").exists()
    # Inside the root (relative, absolute or file://) is fine.
    for run_dir in ["r1", str(runs / "r2"), f"file://{runs / 'r3'}"]:
        job = client.start_job("sft", ["data/sft.jsonl"], run_dir=run_dir)
        assert Path(job.spec.run_dir).parent == runs.resolve()
        client.cancel(job.job_id)


def test_system_files_and_paths_outside_are_not_datasets_and_errors_reveal_nothing(client, runs, tmp_path):
    (runs / "data" / "leak.jsonl").symlink_to(tmp_path / "outside" / "secret.jsonl")
    (runs / "data" / "passwd.jsonl").symlink_to("/etc/passwd")
    refused = ["/etc/passwd", "/proc/self/environ", "file:///etc/passwd", "../outside/secret.jsonl",
               str(tmp_path / "outside" / "secret.jsonl"), "data/leak.jsonl", "data/passwd.jsonl",
               "data/../../outside/secret.jsonl"]
    messages_seen = []
    for uri in refused:
        code, details = refusal(client, datasets=[uri])
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (uri, code, details)
        assert "root:" not in details and "lines" not in details and "rows" not in details, details
        messages_seen.append(details.replace(repr(uri), "<uri>"))
    # One message shape whatever is outside: an existing file and a missing one read the same.
    code, missing = refusal(client, datasets=[str(tmp_path / "outside" / "nope.jsonl")])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert missing.replace(repr(str(tmp_path / "outside" / "nope.jsonl")), "<uri>") == messages_seen[4]
    code, missing_dir = refusal(client, datasets=["/no/such/dir/x.jsonl"])
    assert missing_dir.replace(repr("/no/such/dir/x.jsonl"), "<uri>") == messages_seen[0]
    # A parent adapter outside the root is refused the same way.
    code, details = refusal(client, parent=common_pb2.CheckpointRef(uri=str(tmp_path / "outside")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "parent.uri" in details
    # Inside the root, a missing dataset is NOT_FOUND.
    assert refusal(client, datasets=["data/missing.jsonl"])[0] == grpc.StatusCode.NOT_FOUND


def test_datasets_are_capped_in_bytes_and_rows(tmp_path):
    from services.trainer.datasets import DatasetLimits

    runs = tmp_path / "runs"
    write_jsonl(runs / "data" / "ten.jsonl", sft_rows(10))
    size = (runs / "data" / "ten.jsonl").stat().st_size
    srv = TrainerServer(tmp_path / "state", runs, execute=HeldExecutor(),
                        dataset_limits=DatasetLimits(max_bytes=size - 1, max_rows=100))
    try:
        with TrainerClient(srv.address, timeout=30) as client:
            code, details = refusal(client, datasets=["data/ten.jsonl"])
            assert code == grpc.StatusCode.INVALID_ARGUMENT and f"{size - 1} bytes" in details
    finally:
        srv.stop()
    srv = TrainerServer(tmp_path / "state", runs, execute=HeldExecutor(),
                        dataset_limits=DatasetLimits(max_bytes=size, max_rows=9))
    try:
        with TrainerClient(srv.address, timeout=30) as client:
            code, details = refusal(client, datasets=["data/ten.jsonl"])
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "9 rows" in details
            (runs / "data" / "line.jsonl").write_text(json.dumps(sft_rows(1)[0]) + "x" * 5000 + "\n")
    finally:
        srv.stop()
    with pytest.raises(InvalidArgument, match="longer than 1000 bytes"):
        read_dataset(runs / "data" / "line.jsonl", "sft", limits=DatasetLimits(max_line_bytes=1000))


def test_a_job_names_each_file_once_and_its_files_together_are_capped(tmp_path):
    """The per-file caps held, but one file named 64 times (a job loads every file it names) made a job
    64 times as big: each file counts once, and all of a job's files together at most four files' cap."""
    from services.trainer.datasets import DatasetLimits

    runs = tmp_path / "runs"
    for name in "abcde":
        write_jsonl(runs / "data" / f"{name}.jsonl", sft_rows(10))
    size = (runs / "data" / "a.jsonl").stat().st_size
    srv = TrainerServer(tmp_path / "state", runs, execute=HeldExecutor(), dataset_limits=DatasetLimits(max_bytes=size))
    try:
        with TrainerClient(srv.address, timeout=30) as client:
            code, details = refusal(client, datasets=["data/a.jsonl", "data/b.jsonl", "data/../data/a.jsonl"])
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "datasets[2] names" in details and "datasets[0]" in details
            code, details = refusal(client, datasets=[f"data/{n}.jsonl" for n in "abcde"])
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and f"4 x {size} bytes" in details
            assert client.start_job("sft", [f"data/{n}.jsonl" for n in "abcd"]).job_id
    finally:
        srv.stop()


def test_checking_a_dataset_streams_it_instead_of_loading_it(tmp_path):
    row = json.dumps(sft_rows(1)[0])
    path = tmp_path / "big.jsonl"
    with path.open("w") as f:
        for _ in range(12_000):
            f.write(row + "\n")
    size = path.stat().st_size
    assert size > 5_000_000
    tracemalloc.start()
    try:
        checked = read_dataset(path, "sft", keep_examples=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert checked.rows == 12_000 and checked.size_bytes == size and checked.examples == []
    assert peak < size / 10, f"checking a {size}-byte file allocated {peak} bytes at peak"


# -- finding 8: text that is not Unicode, absurd hyper-parameters ---------------------------------

def test_a_row_with_a_lone_surrogate_is_refused_at_start_job(client, runs):
    good = json.dumps(sft_rows(1)[0])
    bad = json.dumps({"messages": messages(0), "completion": "REASON: x\nACTION: go to \ud800"})
    assert "\\ud800" in bad
    path = runs / "data" / "surrogate.jsonl"
    path.write_text(good + "\n" + bad + "\n")
    code, details = refusal(client, datasets=["data/surrogate.jsonl"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{path}:2" in details and "surrogate" in details


@pytest.mark.parametrize("field,value,range_text", [
    ("lora_r", 2**31 - 1, "[1, 1024]"),
    ("lora_alpha", 2**31 - 1, "[1, 4096]"),
    ("batch_size", 2**31 - 1, "[1, 1024]"),
    ("gradient_accumulation", 2**31 - 1, "[1, 1024]"),
    ("max_length", 2**31 - 1, "[16, 131072]"),
    ("max_steps", 2**31 - 1, "[0, 10000000]"),
    ("epochs", 1e30, "(0, 1000]"),
    ("epochs", float("inf"), "(0, 1000]"),
    ("learning_rate", float("nan"), "(0, 1]"),
    ("learning_rate", float("inf"), "(0, 1]"),
    ("learning_rate", 2.0, "(0, 1]"),
    ("beta", float("nan"), "(0, 100]"),
    ("lora_dropout", float("nan"), "[0, 1)"),
    ("warmup_ratio", float("inf"), "[0, 1)"),
    ("seed", 2**63 - 1, "[0, 4294967295]"),
    ("lora_last_layers", 2**31 - 1, "[0, 4096]"),
    ("lora_last_layers", -1, "[0, 4096]"),
])
def test_hyper_parameters_out_of_range_name_the_field_and_its_range(client, field, value, range_text):
    code, details = refusal(client, hyper_parameters={field: value})
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details and range_text in details, details


def test_absurd_target_modules_and_scheduler_names_are_bounded(client):
    code, details = refusal(client, hyper_parameters={"target_modules": ["m" * 5000] * 100})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "target_modules" in details
    code, details = refusal(client, hyper_parameters={"lr_scheduler": "s" * 5000})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "lr_scheduler" in details


# -- finding 4: held WatchJob streams do not starve health and control calls ----------------------

def test_health_and_control_calls_answer_while_32_watch_streams_are_held(server, client):
    executor = server.service.runner.execute
    job = client.start_job("sft", ["data/sft.jsonl"], job_id="held")
    assert executor.started.wait(30)

    channel = grpc.insecure_channel(server.address)
    streams = [client.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.job_id), timeout=120)
               for _ in range(32)]
    first_seen = []
    lock = threading.Lock()

    def read_first(stream):
        next(stream)
        with lock:
            first_seen.append(stream)

    readers = [threading.Thread(target=read_first, args=(s,), daemon=True) for s in streams]
    for reader in readers:
        reader.start()
    try:
        # Every stream is open and served (each has received the job's state) ...
        wait_for(lambda: len(first_seen) == 32, timeout=60, what="32 watch streams served")
        # ... and health and control calls still answer (a liveness check, not a speed claim).
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        fast = TrainerClient(channel=channel, timeout=5)
        assert fast.get(job.job_id).state == trainer_pb2.JOB_STATE_RUNNING
        assert [j.job_id for j in fast.list()] == ["held"]
        assert fast.cancel(job.job_id).state == trainer_pb2.JOB_STATE_RUNNING  # cancellation requested
        # The watchers see the job end.
        finals = [list(stream)[-1].state for stream in streams[:2]]
        assert finals == [trainer_pb2.JOB_STATE_CANCELLED] * 2
    finally:
        for s in streams:
            s.cancel()
        channel.close()


def test_a_run_dir_replaced_by_a_symlink_while_its_job_waits_gets_no_checkpoint(tmp_path):
    """StartJob confines run_dir to the runs directory; a symlink put in its place while the job is queued
    (by someone who can write there) must not send the checkpoint outside: the job fails, nothing is written."""
    from services.trainer import checkpoints
    from services.trainer.service import JobOutcome

    release = threading.Event()

    def execute(context):
        if context.job_id == "first":
            release.wait(30)

        def save(folder):
            (folder / "adapter_config.json").write_text("{}")
        return JobOutcome(checkpoint=checkpoints.write_checkpoint(context.spec.run_dir, context.spec.output_name,
                                                                  save=save, manifest={"job_id": context.job_id}))

    runs = tmp_path / "runs"
    write_jsonl(runs / "data" / "sft.jsonl", sft_rows(2))
    outside = tmp_path / "outside"
    outside.mkdir()
    srv = TrainerServer(tmp_path / "state", runs, execute=execute)
    try:
        with TrainerClient(srv.address, timeout=30) as client:
            client.start_job("sft", ["data/sft.jsonl"], job_id="first")
            client.start_job("sft", ["data/sft.jsonl"], job_id="victim", run_dir="r1")
            (runs / "r1").symlink_to(outside)  # after StartJob's check, while the job waits in the queue
            release.set()
            victim = client.wait("victim", timeout=30)
            assert victim.state == trainer_pb2.JOB_STATE_FAILED and "run_dir" in victim.error, victim.error
            assert list(outside.rglob("*")) == []
            assert client.wait("first", timeout=30).state == trainer_pb2.JOB_STATE_SUCCEEDED
    finally:
        srv.stop()
