"""`leap run --preset smoke` on every benchmark engine besides the embedded household world.

Each run goes through the real CLI, real services and the real model, with the oracle teacher, on an
environment whose name picks nothing household-specific: the teacher's profile, templates and levels,
the orchestrator's experts and the student's prompt all follow what the environment declares. The
student's every input is audited against the environment's privileged state after the same actions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
LEAP = [sys.executable, "-m", "orchestrator.cli"]

#: name -> smoke overrides (horizons long enough for the experts to finish a task; rollout tasks inside
#: the train split, which is smaller than household's).
ENVIRONMENTS = {
    "alfworld": {"horizon": 10, "demo_horizon": 50, "rollout_offset": 100},
    "intercode_bash": {"horizon": 3, "demo_horizon": 5, "rollout_offset": 100},
    "textworld": {"horizon": 10, "demo_horizon": 60, "rollout_offset": 50},
    "webshop": {"horizon": 6, "demo_horizon": 15},
}


def _smoke(env: str, tmp: Path) -> tuple[Path, Path, subprocess.CompletedProcess]:
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump({"environment": {"name": env, **ENVIRONMENTS[env]}}))
    run_dir, audit = tmp / "run", tmp / "student-inputs.jsonl"
    environ = dict(os.environ)
    environ.pop("LEAP_PRIVILEGED_TOKEN", None)
    proc = subprocess.run(LEAP + ["run", "--preset", "smoke", "--config", str(config), "--run-dir", str(run_dir),
                                  "--quiet", "--audit-student-inputs", str(audit)],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return run_dir, audit, proc


@pytest.fixture(scope="module", params=sorted(ENVIRONMENTS))
def smoke_run(request, tmp_path_factory):
    env = request.param
    return env, *_smoke(env, tmp_path_factory.mktemp(env))


@pytest.fixture(scope="module")
def privileged():
    """A privileged client per environment, on a server of our own (the run's servers are gone)."""
    from services.environment.backends import create
    from services.environment.client import PrivilegedClient
    from services.environment.server import EnvironmentServer
    from services.runtime.config import ServerConfig

    servers, clients = {}, {}

    def client(env: str) -> PrivilegedClient:
        if env not in clients:
            servers[env] = EnvironmentServer(ServerConfig(port=0), {env: create(env)}, token="audit-token")
            clients[env] = PrivilegedClient(f"127.0.0.1:{servers[env].start()}", "audit-token")
        return clients[env]

    yield client
    for env in clients:
        clients[env].close()
        servers[env].host.stop(grace=0)


@pytest.mark.timeout(1800)
def test_smoke_run_on_the_environment_completes(smoke_run):
    env, run_dir, _audit, proc = smoke_run
    state = json.loads((run_dir / "state.json").read_text())
    assert all(p["status"] == "done" for p in state["phases"]), state["phases"]
    results = json.loads((run_dir / "results.json").read_text())
    labels = [r["label"] for r in results["rows"]]
    assert labels[:3] == ["untrained student", "BC (iter 0)", "LEAP iter 1"]
    assert "privileged planner" in labels
    for row in results["rows"]:
        overall = row["splits"]["valid_unseen"]["overall"]
        assert overall["episodes"] == 2, (row["label"], overall)
    planner = next(r for r in results["rows"] if r["label"] == "privileged planner")
    assert planner["splits"]["valid_unseen"]["overall"]["success"] == 100.0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["environments"][env]
    demos = [json.loads(line) for line in (run_dir / "trajectories" / "iter0-demos.jsonl").read_text().splitlines()]
    assert demos and all(d["won"] for d in demos)
    corrections = state_outputs(state, "iter1.correct")
    assert corrections["failed"] == 0 or corrections["corrected_ok"] >= 1, corrections
    assert (run_dir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "LEAP results" in proc.stdout


def state_outputs(state: dict, phase: str) -> dict:
    return next(p["outputs"] for p in state["phases"] if p["name"] == phase)


def _contains_word(text: str, needle: str) -> bool:
    import re

    return re.search(r"(?<![\w])" + re.escape(needle.lower()) + r"(?![\w])", text.lower()) is not None


@pytest.mark.timeout(1800)
def test_no_privileged_string_reaches_the_student(smoke_run, privileged):
    """Every student request is checked against the environment's secrets after the same actions: a
    secret that is not a mere place name (places are public until paired with what they hide) must
    not be in the prompt."""
    from google.protobuf import json_format

    from leap.v1 import student_pb2
    from orchestrator.datasets import read_trajectories
    from services.student.prompts import render_messages
    from services.teacher.leak import SecretIndex

    env, run_dir, audit, _proc = smoke_run
    index = {}
    for path in (run_dir / "trajectories").glob("*.jsonl"):
        if "corrections" in path.name:
            continue
        for trajectory in read_trajectories(path):
            actions = [s.action for s in trajectory.steps]
            for step in trajectory.steps:
                index[(trajectory.task.task_id, step.adapter_version or trajectory.agent, step.index)] = \
                    (trajectory.task, actions[: step.index])
    items = [json_format.ParseDict(json.loads(line), student_pb2.ActItem()) for line in audit.read_text().splitlines()]
    assert len(items) >= 8
    for item in items:
        task_id, t = item.request_id.rsplit("/", 1)
        task, actions = index[(task_id, item.adapter_version, int(t))]
        state = privileged(env).privileged_state(task, actions)
        secrets = SecretIndex.build(state)
        prompt = "\n".join(m["content"] for m in render_messages(item.env, item.goal, item.history, item.observation,
                                                                  item.candidates, history_window=-1))
        for secret in secrets.secrets:
            if not secrets.is_place(secret):
                assert not _contains_word(prompt, secret), f"{secret!r} reached the student in {item.request_id}"
        for field in ("gold_command", "gold_output", "goal_record_json"):
            value = getattr(state, field).strip()
            if len(value) > 3 and value not in item.goal:
                assert value not in prompt, f"the {field} reached the student in {item.request_id}"
