"""End to end: `leap run --preset smoke` through the real CLI, real services, real model.

One uninterrupted run is the reference. A second run is killed with SIGKILL while its trainer job
runs, resumed, and must end with the same datasets and checkpoint versions: the real processes,
the trainer's persisted job and the restarted services. Resuming from every other phase is tested
in process, against fakes (tests/orchestrator/test_leap_run.py). The reference run's audit log of
every student request and its training data are checked against the environment's privileged
state: nothing privileged reaches the student.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
LEAP = [sys.executable, "-m", "orchestrator.cli"]


def _run(args: list[str], env_extra: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    env.pop("LEAP_PRIVILEGED_TOKEN", None)
    return subprocess.run(LEAP + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("leap")
    run_dir = base / "reference"
    audit = base / "student-inputs.jsonl"
    proc = _run(["run", "--preset", "smoke", "--run-dir", str(run_dir), "--quiet",
                 "--audit-student-inputs", str(audit)])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return run_dir, audit, proc


def _state(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


def _fingerprint(run_dir: Path) -> dict:
    """What must not depend on interruptions: dataset contents and checkpoint versions."""
    from services.runtime.files import sha256_file

    datasets = {p.name: sha256_file(p) for p in sorted((run_dir / "datasets").glob("*.jsonl"))}
    checkpoints = sorted(str(p.relative_to(run_dir)) for p in (run_dir / "checkpoints").glob("*/v*")
                         if not p.name.startswith("."))
    return {"datasets": datasets, "checkpoints": checkpoints}


@pytest.mark.timeout(1800)
def test_smoke_run_completes_with_results(reference_run):
    run_dir, _audit, proc = reference_run
    state = _state(run_dir)
    assert all(p["status"] == "done" for p in state["phases"])
    results = json.loads((run_dir / "results.json").read_text())
    labels = [r["label"] for r in results["rows"]]
    assert labels == ["untrained student", "BC (iter 0)", "LEAP iter 1", "searching expert", "privileged planner"]
    planner = results["rows"][-1]["splits"]["valid_unseen"]["overall"]
    assert planner["episodes"] == 2
    assert (run_dir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "LEAP results" in proc.stdout and "BC (iter 0)" in proc.stdout
    for version in ("v1", "v2"):
        folder = run_dir / "checkpoints" / "student" / version
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["method"] in ("sft", "TRAINING_METHOD_SFT")
        # The preset's lora_last_layers: LoRA on SmolLM2's last 15 of 30 layers (v2 keeps its parent's),
        # and the student served both (the iterations' evaluations above ran on them).
        assert manifest["hyper_parameters"]["lora_last_layers"] == 15
        assert json.loads((folder / "adapter_config.json").read_text())["layers_to_transform"] == list(range(15, 30))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["environments"]["household"] and manifest["seed"] == 0
    # BC's evaluation and iteration 1's rollouts ran side by side on the real student, each phase
    # with its own work record.
    phases = {p["name"]: p for p in state["phases"]}
    assert phases["iter1.rollout"]["started_at"] < phases["iter0.eval"]["finished_at"]
    assert phases["iter0.eval"]["outputs"]["work"]["student_steps"] > 0
    assert phases["iter1.rollout"]["outputs"]["work"]["student_steps"] > 0
    assert "| iter1.rollout ∥ |" in (run_dir / "results.md").read_text()
    assert not list(run_dir.rglob("*.partial")) and not list(run_dir.rglob("*.tmp"))


def test_report_prints_the_table_again(reference_run):
    run_dir, _audit, _proc = reference_run
    proc = _run(["report", str(run_dir)])
    assert proc.returncode == 0 and "LEAP iter 1" in proc.stdout and "privileged planner" in proc.stdout


@pytest.mark.timeout(1800)
def test_resume_after_kill_9_during_training_matches_uninterrupted(reference_run, tmp_path):
    reference_dir, _audit, _proc = reference_run
    run_dir = tmp_path / "killed"
    # Killed just after the trainer accepted iteration 1's job: the resumed run adopts that job.
    first = _run(["run", "--preset", "smoke", "--run-dir", str(run_dir), "--quiet"],
                 {"LEAP_FAULT_KILL": "iter1: train (sft):submitted"})
    assert first.returncode == -9, first.stderr[-3000:]
    final = _run(["run", "--resume", str(run_dir), "--quiet"])
    assert final.returncode == 0, final.stderr[-3000:]
    assert _fingerprint(run_dir) == _fingerprint(reference_dir)
    state = _state(run_dir)
    assert all(p["status"] == "done" for p in state["phases"])
    # The interrupted phase was redone; the finished ones were not.
    attempts = {p["name"]: p["attempts"] for p in state["phases"]}
    assert attempts["iter1.train"] == 2
    assert all(n == 1 for name, n in attempts.items() if name != "iter1.train")
    assert not list(run_dir.rglob("*.partial"))


# ---------------------------------------------------------------------------------------------
# Privileged state never reaches the student.

@pytest.fixture(scope="module")
def privileged_client():
    from services.environment.backends import create
    from services.environment.client import PrivilegedClient
    from services.environment.server import EnvironmentServer
    from services.runtime.config import ServerConfig

    token = "audit-token"
    server = EnvironmentServer(ServerConfig(port=0), {"household": create("household")}, token=token)
    port = server.start()
    client = PrivilegedClient(f"127.0.0.1:{port}", token)
    yield client
    client.close()
    server.host.stop(grace=0)


def _forbidden(state) -> list[str]:
    """Privileged strings never to be shown to the student at this point of its episode.

    The environment's secrets for what the student has not observed yet: unseen objects' names and
    the hidden facts. A receptacle's name alone is public (every receptacle is in the candidate
    list), so hiding places are checked through the facts and object names that pair with them.
    """
    import re

    places = {re.split(r" is (?:in|on) ", f)[-1] for f in state.facts if re.search(r" is (?:in|on) ", f)}
    return [s for s in state.secrets if s not in places]


def _contains_word(text: str, needle: str) -> bool:
    import re

    return re.search(r"(?<![\w])" + re.escape(needle.lower()) + r"(?![\w])", text.lower()) is not None


def _index_trajectories(run_dir: Path) -> dict:
    from orchestrator.datasets import read_trajectories

    index = {}
    for path in (run_dir / "trajectories").glob("*.jsonl"):
        if "corrections" in path.name:
            continue
        for trajectory in read_trajectories(path):
            actions = [s.action for s in trajectory.steps]
            for step in trajectory.steps:
                key = (trajectory.task.task_id, step.adapter_version or trajectory.agent, step.index)
                index[key] = (trajectory.task, actions[: step.index])
    return index


@pytest.mark.timeout(1800)
def test_no_privileged_fact_in_any_student_input_or_training_example(reference_run, privileged_client):
    from google.protobuf import json_format

    from leap.v1 import student_pb2
    from orchestrator.datasets import read_rows
    from services.student.prompts import render_messages

    run_dir, audit, _proc = reference_run
    index = _index_trajectories(run_dir)
    items = [json_format.ParseDict(json.loads(line), student_pb2.ActItem()) for line in audit.read_text().splitlines()]
    assert len(items) >= 8, "the audit log should hold every request of the smoke run"
    checked = 0
    for item in items:
        task_id, t = item.request_id.rsplit("/", 1)
        task, actions = index[(task_id, item.adapter_version, int(t))]
        state = privileged_client.privileged_state(task, actions)
        prompt = "\n".join(m["content"] for m in render_messages(item.env, item.goal, item.history, item.observation,
                                                                  item.candidates, history_window=-1))
        for secret in _forbidden(state):
            assert not _contains_word(prompt, secret), f"{secret!r} reached the student in {item.request_id}"
        checked += 1
    assert checked == len(items)

    # Training examples: the prompt holds nothing privileged; the teacher's reasons pass its leak check.
    from leap.v1 import common_pb2

    rows = [r for p in sorted((run_dir / "datasets").glob("iter*.jsonl")) for r in read_rows(p)]
    assert rows
    for row in rows:
        meta = row["meta"]
        task = common_pb2.TaskRef(env="household", task_id=meta["task_id"])
        task.split = task.task_id.rsplit("-", 1)[0]
        history_actions = _actions_for_row(run_dir, meta)
        state = privileged_client.privileged_state(task, history_actions)
        prompt = "\n".join(m["content"] for m in row["messages"])
        for secret in _forbidden(state):
            assert not _contains_word(prompt, secret), f"{secret!r} in the training prompt of {meta}"
        reason = row["completion"].split("\nACTION:")[0]
        for secret in _forbidden(state):
            assert not _contains_word(reason, secret), f"{secret!r} in the training reason of {meta}"


def _actions_for_row(run_dir: Path, meta: dict) -> list[str]:
    from orchestrator.datasets import read_corrections, read_trajectories

    if meta["source"] == "demonstration":
        trajectories = read_trajectories(run_dir / "trajectories" / "iter0-demos.jsonl")
    else:
        trajectories = [t for p in sorted((run_dir / "trajectories").glob("iter*-corrections.jsonl"))
                        for t, _c in read_corrections(p)]
    for trajectory in trajectories:
        if trajectory.task.task_id == meta["task_id"]:
            return [s.action for s in trajectory.steps[: meta["t"]]]
    raise AssertionError(f"no trajectory for {meta}")
