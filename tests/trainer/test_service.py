"""The job service over real gRPC with a scripted executor (no model): persistence, queue, cancel,
watch, restart recovery, validation. The real training runs in test_training.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from leap.v1 import common_pb2, trainer_pb2
from services.runtime.errors import FailedPrecondition
from services.trainer import checkpoints
from services.trainer.client import TrainerClient
from services.trainer.executor import load_examples
from services.trainer.jobs import DatasetRef, JobRecord, JobRequest, JobState
from services.trainer.service import SHUTDOWN_MESSAGE, JobOutcome
from services.trainer.store import RESTARTED_MESSAGE, JobStore, StateDirInUse
from tests.trainer.helpers import TrainerServer, dpo_rows, sft_rows, wait_for, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
S = trainer_pb2


class ScriptedExecutor:
    """Each job reports step 1, waits for the test to release it (stopping if cancelled), then
    reports step 2 and writes a small checkpoint."""

    def __init__(self):
        self.started: list[str] = []
        self._gates: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def gate(self, job_id: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(job_id, threading.Event())

    def release(self, job_id: str) -> None:
        self.gate(job_id).set()

    def __call__(self, context):
        self.started.append(context.job_id)
        if context.spec.output_name == "explode":
            raise RuntimeError("the GPU caught fire")
        context.report(step=1, total_steps=2, loss=0.5, message="training")
        gate = self.gate(context.job_id)
        while not gate.wait(0.02):
            context.check_cancelled()
        context.check_cancelled()
        context.report(step=2, total_steps=2, loss=0.25, metrics={"rewards/margins": 0.5})

        def save(directory):
            (directory / "adapter_config.json").write_text("{}")

        ref = checkpoints.write_checkpoint(context.spec.run_dir, context.spec.output_name, save=save,
                                           manifest={"base_model": context.spec.base_model})
        return JobOutcome(ref, {"loss_last": 0.25})


@pytest.fixture()
def runs(tmp_path):
    write_jsonl(tmp_path / "runs" / "data" / "sft.jsonl", sft_rows(2))
    write_jsonl(tmp_path / "runs" / "data" / "dpo.jsonl", dpo_rows(2))
    return tmp_path / "runs"


@pytest.fixture()
def executor():
    return ScriptedExecutor()


@pytest.fixture()
def server(tmp_path, runs, executor):
    srv = TrainerServer(tmp_path / "state", runs, execute=executor)
    yield srv
    for job_id in list(executor.started):
        executor.release(job_id)
    srv.stop()


@pytest.fixture()
def client(server):
    with TrainerClient(server.address, timeout=30) as c:
        yield c


def state_of(client, job_id):
    return client.get(job_id).state


def test_start_persists_and_second_job_waits_for_the_first(server, client, executor, tmp_path):
    first = client.start_job("sft", ["data/sft.jsonl"], run_dir="r1", job_id="first")
    on_disk = json.loads((tmp_path / "state" / "jobs" / "first.json").read_text())
    assert on_disk["state"] in ("QUEUED", "RUNNING") and on_disk["spec"]["method"] == "sft"
    assert first.spec.hyper_parameters.lora_r == 128 and first.spec.output_name == "student"
    assert Path(first.spec.datasets[0].uri).is_absolute() and len(first.spec.datasets[0].sha256) == 64

    second = client.start_job("dpo", ["data/dpo.jsonl"], run_dir="r1", job_id="second")
    assert second.state == S.JOB_STATE_QUEUED
    wait_for(lambda: state_of(client, "first") == S.JOB_STATE_RUNNING, what="first job running")
    assert state_of(client, "second") == S.JOB_STATE_QUEUED
    assert executor.started == ["first"]

    executor.release("first")
    done = client.wait("first", timeout=30)
    assert done.state == S.JOB_STATE_SUCCEEDED and done.checkpoint.version == "v1"
    assert done.progress.metrics["loss_last"] == pytest.approx(0.25)
    wait_for(lambda: state_of(client, "second") == S.JOB_STATE_RUNNING, what="second job running")
    executor.release("second")
    second = client.wait("second", timeout=30)
    assert second.state == S.JOB_STATE_SUCCEEDED and second.checkpoint.version == "v2"
    assert second.started_at >= done.finished_at
    assert [j.job_id for j in client.list()] == ["second", "first"]
    assert [j.job_id for j in client.list(limit=1)] == ["second"]


def test_job_id_is_an_idempotency_key(server, client, executor):
    job = client.start_job("sft", ["data/sft.jsonl"], job_id="retry-me", hyper_parameters={"lora_r": 8})
    again = client.start_job("sft", ["data/sft.jsonl"], job_id="retry-me", hyper_parameters={"lora_r": 8})
    assert again.job_id == job.job_id and again.created_at == job.created_at
    with pytest.raises(grpc.RpcError) as err:
        client.start_job("sft", ["data/sft.jsonl"], job_id="retry-me", hyper_parameters={"lora_r": 16})
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert len(client.list()) == 1


def test_cancel_queued_running_and_finished(server, client, executor, runs):
    client.start_job("sft", ["data/sft.jsonl"], job_id="running")
    client.start_job("sft", ["data/sft.jsonl"], job_id="waiting")
    wait_for(lambda: state_of(client, "running") == S.JOB_STATE_RUNNING, what="job running")

    waiting = client.cancel("waiting")
    assert waiting.state == S.JOB_STATE_CANCELLED and "before it started" in waiting.progress.message

    client.cancel("running")
    stopped = client.wait("running", timeout=30)
    assert stopped.state == S.JOB_STATE_CANCELLED and not stopped.HasField("checkpoint")
    assert not (runs / "checkpoints" / "student").exists()
    assert executor.started == ["running"]  # the cancelled queued job never ran

    with pytest.raises(grpc.RpcError) as err:
        client.cancel("running")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_failing_job_reports_its_error_and_the_worker_goes_on(server, client, executor):
    client.start_job("sft", ["data/sft.jsonl"], job_id="boom", output_name="explode")
    client.start_job("sft", ["data/sft.jsonl"], job_id="after")
    failed = client.wait("boom", timeout=30)
    assert failed.state == S.JOB_STATE_FAILED and failed.error == "RuntimeError: the GPU caught fire"
    executor.release("after")
    assert client.wait("after", timeout=30).state == S.JOB_STATE_SUCCEEDED


def test_watch_streams_progress_and_a_disconnect_does_not_touch_the_job(server, executor):
    with TrainerClient(server.address) as first:
        job = first.start_job("dpo", ["data/dpo.jsonl"], job_id="watched")
        stream = first.watch(job.job_id)
        seen = next(stream)
        while seen.step < 1:
            seen = next(stream)
        assert seen.state == S.JOB_STATE_RUNNING and seen.total_steps == 2 and seen.loss == pytest.approx(0.5)
        stream.close()
    # The first client is gone; the job goes on, and a new connection watches it to the end.
    assert state_of(TrainerClient(server.address), job.job_id) == S.JOB_STATE_RUNNING
    executor.release(job.job_id)
    with TrainerClient(server.address) as second:
        updates = list(second.watch(job.job_id, timeout=30))
    assert updates[-1].state == S.JOB_STATE_SUCCEEDED
    assert "succeeded: checkpoint student v1" in updates[-1].message
    assert updates[-1].metrics["rewards/margins"] == pytest.approx(0.5)


def test_unknown_job_is_not_found(client):
    for call in (client.get, client.cancel, lambda j: list(client.watch(j))):
        with pytest.raises(grpc.RpcError) as err:
            call("nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_requests_fail_at_start_job(server, client, runs, tmp_path):
    def code_of(**kwargs):
        request = dict(method="sft", datasets=["data/sft.jsonl"])
        request.update(kwargs)
        with pytest.raises(grpc.RpcError) as err:
            client.start_job(request.pop("method"), request.pop("datasets"), **request)
        return err.value.code(), err.value.details()

    bad = write_jsonl(runs / "data" / "bad.jsonl", sft_rows(2) + [{"messages": sft_rows(1)[0]["messages"]}])
    code, details = code_of(datasets=["data/bad.jsonl"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and f"{bad}:3: 'completion'" in details

    assert code_of(datasets=["data/missing.jsonl"])[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(datasets=[])[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(datasets=["s3://bucket/x.jsonl"])[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(datasets=["data/dpo.jsonl"])[0] == grpc.StatusCode.INVALID_ARGUMENT  # DPO rows for SFT
    assert code_of(datasets=[common_pb2.ArtifactRef(uri="data/sft.jsonl", sha256="0" * 64)])[0] == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(hyper_parameters={"lora_dropout": 2.0})[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(output_name="../escape")[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(job_id="a/b")[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(base_model=str(tmp_path))[0] == grpc.StatusCode.INVALID_ARGUMENT  # a folder, not a model
    assert code_of(parent=common_pb2.CheckpointRef(uri=str(runs / "no-adapter")))[0] == grpc.StatusCode.NOT_FOUND
    # Outside the runs directory: refused before the file system is asked (tests/trainer/test_hostile.py).
    assert code_of(parent=common_pb2.CheckpointRef(uri=str(tmp_path / "no-adapter")))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(grpc.RpcError) as err:
        client.stub.StartJob(S.StartJobRequest(datasets=[common_pb2.ArtifactRef(uri="data/sft.jsonl")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "UNSPECIFIED" in err.value.details()
    assert client.list() == []


def test_parent_must_match_base_model(server, client, runs):
    def save(directory):
        (directory / "adapter_config.json").write_text("{}")

    parent = checkpoints.write_checkpoint(str(runs), "student", save=save, manifest={"base_model": "smollm2"})
    ref = common_pb2.CheckpointRef(name=parent.name, version=parent.version, uri=parent.uri, sha256=parent.sha256)
    with pytest.raises(grpc.RpcError) as err:
        client.start_job("sft", ["data/sft.jsonl"], parent=ref, base_model="some/other-model")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "differs from the parent" in err.value.details()
    job = client.start_job("sft", ["data/sft.jsonl"], parent=ref, job_id="child")
    assert job.spec.base_model == "smollm2" and job.spec.parent.sha256 == parent.sha256


def test_restart_fails_running_jobs_requeues_queued_ones_and_cleans_partials(tmp_path, runs, executor):
    state = tmp_path / "state"
    first = TrainerServer(state, runs, execute=executor)
    first.service.start_job(JobRequest(method="sft", datasets=[DatasetRef("data/sft.jsonl")], job_id="interrupted"))
    first.service.start_job(JobRequest(method="sft", datasets=[DatasetRef("data/sft.jsonl")], job_id="queued"))
    wait_for(lambda: first.service.get_job("interrupted").state == JobState.RUNNING, what="job running")
    # Simulate a crash: the process dies with the job RUNNING on disk and a half-written checkpoint.
    first.host.stop(grace=0)
    first.service.store.update = lambda *args, **kwargs: None  # a dead process writes nothing more
    first.service.store.close()
    partial = runs / "checkpoints" / "student" / ".v1.x7k2.partial"
    partial.mkdir(parents=True)
    (partial / "adapter_model.safetensors").write_bytes(b"half")
    executor.release("queued")

    second = TrainerServer(state, runs, execute=executor)
    try:
        with TrainerClient(second.address) as client:
            job = client.get("interrupted")
            assert job.state == S.JOB_STATE_FAILED and job.error == RESTARTED_MESSAGE
            assert job.finished_at > 0
            assert not partial.exists()
            requeued = client.wait("queued", timeout=30)
            assert requeued.state == S.JOB_STATE_SUCCEEDED and requeued.checkpoint.version == "v1"
    finally:
        first.service.runner.shutdown(timeout=10)
        second.stop()


def test_a_checkpoint_written_just_before_a_crash_is_adopted_after_the_restart(tmp_path, runs, executor):
    """The process dies after the job's checkpoint was renamed into place but before its record said
    SUCCEEDED: the restart finds the checkpoint by the job id in its manifest (files verified) and the
    job succeeds with it, rather than failing and leaving a finished v1 for a retry to duplicate as v2.
    Another job's checkpoint, or one whose files changed, is not adopted."""
    from services.trainer import checkpoints

    def save(folder):
        (folder / "adapter_config.json").write_text("{}")
        (folder / "adapter_model.safetensors").write_bytes(b"weights")

    state = tmp_path / "state"
    first = TrainerServer(state, runs, execute=executor)
    for job_id in ("finished", "other", "tampered"):
        first.service.start_job(JobRequest(method="sft", datasets=[DatasetRef("data/sft.jsonl")], job_id=job_id,
                                           output_name=job_id))
    wait_for(lambda: first.service.get_job("finished").state == JobState.RUNNING, what="job running")
    run_dir = first.service.get_job("finished").spec.run_dir
    first.host.stop(grace=0)
    first.service.store.update = lambda *args, **kwargs: None  # a dead process writes nothing more
    first.service.store.close()
    # Simulate the other two as RUNNING too, each with a checkpoint that must not be adopted.
    with JobStore(state) as store:
        for job_id in ("other", "tampered"):
            store.update(job_id, lambda r: setattr(r, "state", JobState.RUNNING))
    written = checkpoints.write_checkpoint(run_dir, "finished", save=save, manifest={"job_id": "finished"})
    checkpoints.write_checkpoint(run_dir, "other", save=save, manifest={"job_id": "someone-else"})
    tampered = checkpoints.write_checkpoint(run_dir, "tampered", save=save, manifest={"job_id": "tampered"})
    (Path(tampered.uri) / "adapter_model.safetensors").write_bytes(b"changed")

    second = TrainerServer(state, runs, execute=executor)
    try:
        with TrainerClient(second.address) as client:
            job = client.get("finished")
            assert job.state == S.JOB_STATE_SUCCEEDED and job.checkpoint.uri == written.uri
            assert job.checkpoint.sha256 == written.sha256 and job.checkpoint.version == "v1"
            for job_id in ("other", "tampered"):
                job = client.get(job_id)
                assert job.state == S.JOB_STATE_FAILED and job.error == RESTARTED_MESSAGE, job_id
    finally:
        first.service.runner.shutdown(timeout=10)
        second.stop()


def test_shutdown_stops_the_running_job_with_a_message(tmp_path, runs, executor):
    srv = TrainerServer(tmp_path / "state", runs, execute=executor)
    srv.service.start_job(JobRequest(method="sft", datasets=[DatasetRef("data/sft.jsonl")], job_id="long"))
    wait_for(lambda: srv.service.get_job("long").state == JobState.RUNNING, what="job running")
    srv.stop()
    with JobStore(tmp_path / "state") as store:
        record = store.get("long")
    assert record.state == JobState.FAILED and record.error == SHUTDOWN_MESSAGE


def test_state_dir_is_owned_by_one_trainer_and_corrupt_records_are_set_aside(tmp_path, runs):
    state = tmp_path / "state"
    with JobStore(state):
        with pytest.raises(StateDirInUse, match="another trainer process"):
            JobStore(state, lock_wait_s=0)
    (state / "jobs" / "broken.json").write_text("{half a record")
    with JobStore(state) as store:
        assert store.list() == []
    assert (state / "jobs" / "broken.json.corrupt").exists()


def test_a_dataset_changed_after_submission_fails_the_job(tmp_path, runs):
    with JobStore(tmp_path / "state") as store:
        from services.trainer.service import JobRunner, TrainerService

        service = TrainerService(store, JobRunner(store), runs)
        spec = service.resolve(JobRequest(method="sft", datasets=[DatasetRef("data/sft.jsonl")]))
        assert len(load_examples(spec)) == 2
        write_jsonl(runs / "data" / "sft.jsonl", sft_rows(3))
        with pytest.raises(FailedPrecondition, match="changed after the job was submitted"):
            load_examples(spec)


def test_record_round_trip(tmp_path, runs):
    with JobStore(tmp_path / "state") as store:
        from services.trainer.service import JobRunner, TrainerService

        service = TrainerService(store, JobRunner(store), runs)
        spec = service.resolve(JobRequest(method="kto", datasets=[DatasetRef("data/dpo.jsonl")]))
    record = JobRecord(job_id="x", spec=spec)
    assert JobRecord.from_dict(json.loads(json.dumps(record.to_dict()))).to_dict() == record.to_dict()


def test_cli_serve_flags_without_torch():
    code = (
        "import sys, argparse\n"
        "from orchestrator.cli import build_parser\n"
        "args = build_parser(['trainer']).parse_args(['trainer', 'serve', '--port', '0', '--device', 'cpu'])\n"
        "assert args.func.__name__ == 'run_serve' and args.port == 0 and args.state_dir == ''\n"
        "assert build_parser(['trainer']).parse_args(['trainer', 'serve']).port == 50081\n"
        "import services.trainer.client, services.trainer.server\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
