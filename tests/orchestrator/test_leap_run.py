"""LeapRun in process, against in-process fakes of the four services' stubs.

The fakes answer the stub calls LeapRun makes (same messages, grpc.RpcError with real status codes
for refusals), in milliseconds, so every resume point can be tried: a run interrupted in any phase
and resumed redoes that phase only and ends with the datasets, checkpoints and results of a run that
was never interrupted. The real services and a real kill -9 are tests/test_e2e_leap.py's.

The toy world: a task is won by the action "win". The base student never plays it; an adapter
trained at iteration i wins the tasks whose number is even (the odd ones fail, are corrected by
the teacher, and feed the next iteration).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import grpc
import pytest

from leap.v1 import common_pb2, environment_pb2, student_pb2, teacher_pb2, trainer_pb2
from orchestrator.config import load_config
from orchestrator.loop import LeapRun, phase_names, plays_student
from orchestrator.progress import ProgressReporter
from services.runtime.files import sha256_file

ENV = "household"
TRAIN_TASKS = 40
EVAL_TASKS = 4


class RpcFailure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def task_number(task_id: str) -> int:
    return int(task_id.rsplit("-", 1)[1])


class FakeEnvironment:
    def __init__(self):
        self.sessions: dict[str, dict] = {}
        self.lock = threading.Lock()

    def ListEnvironments(self, request, timeout=None):
        return environment_pb2.ListEnvironmentsResponse(environments=[environment_pb2.EnvironmentInfo(
            name=ENV, version="toy 1", experts=[environment_pb2.EXPERT_KIND_SEARCHER,
                                                environment_pb2.EXPERT_KIND_PLANNER])])

    def ListTasks(self, request, timeout=None):
        size = TRAIN_TASKS if request.split == "train" else EVAL_TASKS
        # One page: every task from the offset on.
        return environment_pb2.ListTasksResponse(total=size, offset=request.offset, tasks=[
            environment_pb2.TaskInfo(task=task_ref(request.split, k), goal=f"win task {k}", task_type="toy")
            for k in range(request.offset, size)])

    def Reset(self, request, timeout=None):
        split = request.task_id.rsplit("-", 1)[0]
        with self.lock:
            session = f"s{len(self.sessions)}"
            self.sessions[session] = {"steps": 0, "horizon": request.horizon}
        return environment_pb2.ResetResponse(
            session_id=session,
            task=environment_pb2.TaskInfo(task=task_ref(split, task_number(request.task_id)),
                                          goal=f"win task {task_number(request.task_id)}", task_type="toy"),
            observation=environment_pb2.Observation(text="You are in a room.", candidates=["win", "look"]))

    def Step(self, request, timeout=None):
        with self.lock:
            session = self.sessions[request.session_id]
            session["steps"] += 1
            won = request.action == "win"
            done = won or session["steps"] >= session["horizon"]
        return environment_pb2.StepResponse(observation=environment_pb2.Observation(
            text="You won." if won else "Nothing happens.", candidates=["win", "look"], reward=float(won),
            score=float(won), done=done, won=won, truncated=done and not won, last_action_valid=True))

    def Close(self, request, timeout=None):
        return environment_pb2.CloseResponse()


def task_ref(split: str, k: int) -> common_pb2.TaskRef:
    return common_pb2.TaskRef(env=ENV, split=split, task_id=f"{split}-{k}")


#: What the fake student says each answer cost.
PROMPT_TOKENS, CACHED_TOKENS = 100, 30
#: What the fake trainer says each job trained on.
TRAINED_TOKENS = 4321.0


class FakeStudent:
    def __init__(self):
        self.adapters: dict[str, student_pb2.AdapterInfo] = {"base": student_pb2.AdapterInfo(version="base")}
        self.loads: list[str] = []
        self.lock = threading.Lock()

    def GetModelInfo(self, request, timeout=None):
        return student_pb2.ModelInfo(base_model="toy", backend="fake", device="cpu", supports_action_constraint=True)

    def Act(self, request, timeout=None):
        item = request.items[0]
        if item.adapter_version not in self.adapters:
            raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"adapter {item.adapter_version} is not loaded")
        wins = item.adapter_version != "base" and task_number(item.request_id.split("/")[0]) % 2 == 0
        action = "win" if wins else "look"
        return student_pb2.ActResponse(results=[student_pb2.ActResult(
            request_id=item.request_id, reason="I think so.", action=action, raw_output=action, action_valid=True,
            adapter_version=item.adapter_version, prompt_tokens=PROMPT_TOKENS, cached_prompt_tokens=CACHED_TOKENS,
            completion_token_ids=[7] * len(action))])

    def LoadAdapter(self, request, timeout=None):
        version = request.checkpoint.version
        with self.lock:
            if version in self.adapters:
                raise RpcFailure(grpc.StatusCode.ALREADY_EXISTS, f"version {version} is loaded already")
            self.loads.append(version)
            self.adapters[version] = student_pb2.AdapterInfo(version=version, checkpoint=request.checkpoint,
                                                             current=True, load_seconds=0.01)
            return self.adapters[version]

    def ListAdapters(self, request, timeout=None):
        with self.lock:
            return student_pb2.ListAdaptersResponse(adapters=list(self.adapters.values()))


class FakeTeacher:
    def Demonstrate(self, request, timeout=None):
        return common_pb2.Trajectory(
            task=request.task, goal=f"win task {task_number(request.task.task_id)}", task_type="toy", agent="expert",
            done=True, won=True, score=1.0,
            steps=[common_pb2.Step(index=0, observation="You are in a room.", candidates=["win", "look"],
                                   reason="Winning ends the task.", action="win", reward=1.0, action_valid=True)])

    def Correct(self, request, timeout=None):
        return teacher_pb2.Correction(ok=True, steps=[
            teacher_pb2.CorrectedStep(index=s.index, reason="Winning ends the task.", action="win",
                                      is_corrected=s.action != "win", original_action=s.action,
                                      original_reason=s.reason) for s in request.trajectory.steps])


class Stream:
    """A server stream as a gRPC stub returns it: iterated for its messages, cancelled by the caller."""

    def __init__(self, messages):
        self.messages = messages

    def __iter__(self):
        return self.messages

    def cancel(self) -> None:
        self.messages.close()


class FakeTrainer:
    """Jobs are idempotent by id (the same spec again returns the job; another spec is ALREADY_EXISTS)
    and train while watched: two progress updates, then a checkpoint <run_dir>/checkpoints/student/v<n>."""

    def __init__(self):
        self.jobs: dict[str, trainer_pb2.Job] = {}
        self.versions = 0
        self.fail_ids: set[str] = set()       # these jobs end FAILED
        self.broken_watches = 0               # the next N WatchJob calls break with UNAVAILABLE
        self.interrupt_watch = False          # the next WatchJob is interrupted by Ctrl-C
        self.lock = threading.Lock()

    def StartJob(self, request, timeout=None):
        with self.lock:
            job = self.jobs.get(request.job_id)
            if job is not None:
                if job.spec != request:
                    raise RpcFailure(grpc.StatusCode.ALREADY_EXISTS, f"job {request.job_id} exists with another spec")
                return job
            job = trainer_pb2.Job(job_id=request.job_id, spec=request, state=trainer_pb2.JOB_STATE_RUNNING)
            self.jobs[request.job_id] = job
            return job

    def GetJob(self, request, timeout=None):
        with self.lock:
            if request.job_id not in self.jobs:
                raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"unknown job {request.job_id}")
            return self.jobs[request.job_id]

    def CancelJob(self, request, timeout=None):
        with self.lock:
            self.jobs[request.job_id].state = trainer_pb2.JOB_STATE_CANCELLED
            return self.jobs[request.job_id]

    def WatchJob(self, request, timeout=None):
        return Stream(self._train(request.job_id))

    def _train(self, job_id: str):
        if self.broken_watches:
            self.broken_watches -= 1
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "the trainer is restarting")
        job = self.jobs[job_id]
        if self.interrupt_watch:
            self.interrupt_watch = False
            raise KeyboardInterrupt
        if job.state == trainer_pb2.JOB_STATE_RUNNING:
            for step in (1, 2):
                yield trainer_pb2.JobProgress(job_id=job_id, state=job.state, step=step, total_steps=2, loss=1 / step)
            with self.lock:
                if job_id in self.fail_ids:
                    job.state, job.error = trainer_pb2.JOB_STATE_FAILED, "loss is NaN"
                else:
                    self.versions += 1
                    version = f"v{self.versions}"
                    job.state = trainer_pb2.JOB_STATE_SUCCEEDED
                    job.progress.metrics.update({"train_tokens": TRAINED_TOKENS, "train_seconds": 0.5})
                    job.checkpoint.CopyFrom(common_pb2.CheckpointRef(
                        name="student", version=version, base_model="toy",
                        uri=f"{job.spec.run_dir}/checkpoints/student/{version}"))
        yield trainer_pb2.JobProgress(job_id=job_id, state=job.state, step=2, total_steps=2)


class FakeStubs:
    def __init__(self, trainer: FakeTrainer, student: FakeStudent | None = None):
        self.env = FakeEnvironment()
        self.student = student or FakeStudent()
        self.teacher = FakeTeacher()
        self.trainer = trainer
        self.addresses = {"environment": "fake", "student": "fake", "teacher": "fake", "trainer": "fake"}


class Interrupted(Exception):
    """The run stopped in a phase: its outputs may be written, but it is not marked done."""


def config(**overrides):
    values = {"concurrency": 2, "environment": {"eval_tasks": EVAL_TASKS, "demo_tasks": 4, "rollout_tasks": 4,
                                                 "rollout_offset": 10},
              "retry": {"watch_backoff_s": 0.01}}
    for key, value in overrides.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return load_config(preset="smoke", overrides=values)


def make_run(run_dir: Path, stubs: FakeStubs, cfg=None, *, interrupt_in: str = "") -> LeapRun:
    cfg = cfg or config()
    LeapRun.prepare_run_dir(run_dir, cfg, resume=run_dir.exists())
    leap = LeapRun(cfg, run_dir, stubs, ProgressReporter(enabled=False))
    if interrupt_in:
        finish = leap.state.finish

        def finish_or_stop(name, outputs=None):
            if name == interrupt_in:
                raise Interrupted(name)
            finish(name, outputs)

        leap.state.finish = finish_or_stop
    return leap


def fingerprint(run_dir: Path) -> dict:
    """What must not depend on interruptions: datasets, checkpoints and every metric."""
    import json

    leap_state = json.loads((run_dir / "state.json").read_text())
    metrics = {}
    for path in sorted((run_dir / "metrics").glob("*.json")):
        data = json.loads(path.read_text())
        metrics[path.name] = {split: {k: v for k, v in m.items() if k != "trajectories"}
                              for split, m in data["splits"].items()}
    return {
        "datasets": {p.name: sha256_file(p) for p in sorted((run_dir / "datasets").glob("*.jsonl"))},
        "checkpoints": {k: c and c["version"] for k, c in leap_state["values"]["checkpoints"].items()},
        "metrics": metrics,
        # The report less its work table, whose wall times differ from run to run.
        "report": (run_dir / "results.md").read_text().split("## Work per phase")[0],
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    trainer = FakeTrainer()
    results = make_run(run_dir, FakeStubs(trainer)).run()
    return run_dir, results, trainer


def test_an_uninterrupted_run_does_every_phase_once(reference):
    run_dir, results, trainer = reference
    labels = [r["label"] for r in results["rows"]]
    assert labels == ["untrained student", "BC (iter 0)", "LEAP iter 1", "searching expert", "privileged planner"]
    success = [r["splits"]["valid_unseen"]["overall"]["success"] for r in results["rows"]]
    assert success[0] == 0 and success[1] > 0, "the trained adapter wins what the base model cannot"
    assert sorted(trainer.jobs) == sorted(f"{make_run_id(run_dir)}-iter{i}-a1" for i in (0, 1))
    assert fingerprint(run_dir)["checkpoints"] == {"0": "v1", "1": "v2"}


def test_every_phase_records_the_work_it_asked_for(reference):
    import json

    run_dir, results, _trainer = reference
    phases = {p["name"]: p["outputs"].get("work", {}) for p in json.loads((run_dir / "state.json").read_text())["phases"]}
    for name, work in phases.items():
        if plays_student(name):
            # one answer per step: every step's prompt, less what the cache held, and its action's tokens
            steps = sum(len(t.steps) for t in trajectories_of(run_dir, name))
            assert steps > 0 and work["student_steps"] == steps, (name, work)
            assert work["prompt_tokens"] == PROMPT_TOKENS * steps
            assert work["prefilled_tokens"] == (PROMPT_TOKENS - CACHED_TOKENS) * steps
            assert work["decoded_tokens"] == sum(len(s.action) for t in trajectories_of(run_dir, name) for s in t.steps)
        elif name.endswith(".train"):
            assert work == {"trained_tokens": TRAINED_TOKENS, "train_seconds": 0.5}, (name, work)
        else:
            assert work == {}, (name, work)
    profile = {entry["phase"]: entry for entry in results["profile"]}
    assert list(profile) == list(phases), "every finished phase, in order"
    assert profile["iter0.train"]["trained_tokens"] == TRAINED_TOKENS
    report = (run_dir / "results.md").read_text()
    assert "## Work per phase" in report and "| total |" in report


def trajectories_of(run_dir: Path, phase: str) -> list:
    from orchestrator.datasets import read_trajectories

    names = {"baseline.eval": "baseline-eval-*", "iter0.eval": "iter0-eval-*", "iter1.eval": "iter1-eval-*",
             "iter1.rollout": "iter1-rollout*"}
    return [t for path in sorted((run_dir / "trajectories").glob(names[phase] + ".jsonl"))
            for t in read_trajectories(path)]


def make_run_id(run_dir: Path) -> str:
    import json

    return json.loads((run_dir / "state.json").read_text())["values"]["run_id"]


@pytest.mark.parametrize("phase", phase_names(1))
def test_a_run_interrupted_in_any_phase_resumes_there_and_ends_as_an_uninterrupted_one(reference, tmp_path, phase):
    reference_dir, _results, reference_trainer = reference
    run_dir = tmp_path / "run"
    trainer = FakeTrainer()  # keeps its jobs across the restart, as the trainer's state directory does
    with pytest.raises(Interrupted):
        make_run(run_dir, FakeStubs(trainer), interrupt_in=phase).run()
    # The orchestrator restarts, and with it the student (no adapter loaded any more).
    student = FakeStudent()
    make_run(run_dir, FakeStubs(trainer, student)).run()

    assert fingerprint(run_dir) == fingerprint(reference_dir)
    import json

    attempts = {p["name"]: p["attempts"] for p in json.loads((run_dir / "state.json").read_text())["phases"]}
    # iter0.eval and iter1.rollout run side by side: when one is stopped, the other may be too.
    beside = {"iter0.eval": "iter1.rollout", "iter1.rollout": "iter0.eval"}.get(phase)
    assert {name: n for name, n in attempts.items() if name != beside} == \
        {name: 2 if name == phase else 1 for name in phase_names(1) if name != beside}
    if beside:
        assert attempts[beside] in (1, 2)
    assert len(trainer.jobs) == len(reference_trainer.jobs), "an interrupted training is adopted, not redone"
    assert all(job.state == trainer_pb2.JOB_STATE_SUCCEEDED for job in trainer.jobs.values())
    if phase in ("iter0.eval", "iter1.rollout"):  # resumed where the student plays with iteration 0's adapter
        assert student.loads[0] == "student-iter-0", "the restarted student gets the latest adapter back"


def test_no_training_data_skips_the_training_and_keeps_the_previous_adapter(tmp_path):
    import json

    # Every even task is won: with rollouts on even tasks only there is nothing to correct, and DPO
    # data is not mixed with the BC demonstrations.
    cfg = config(trainer={"method": "dpo"}, environment={"rollout_tasks": 1, "rollout_offset": 10})
    trainer = FakeTrainer()
    results = make_run(tmp_path / "run", FakeStubs(trainer), cfg).run()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    train = next(p for p in state["phases"] if p["name"] == "iter1.train")
    assert train["outputs"]["skipped"] == "no training rows"
    assert state["values"]["checkpoints"]["1"] == state["values"]["checkpoints"]["0"]
    assert len(trainer.jobs) == 1
    assert [r["label"] for r in results["rows"]][:3] == ["untrained student", "BC (iter 0)", "LEAP iter 1"]


def test_a_job_the_trainer_holds_with_another_spec_is_adopted_not_failed(tmp_path):
    run_dir = tmp_path / "run"
    trainer = FakeTrainer()
    leap = make_run(run_dir, FakeStubs(trainer))
    job_id = f"{leap.state.values['run_id']}-iter0-a1"
    # Submitted before the orchestrator restarted, by a release that wrote the request differently.
    trainer.StartJob(trainer_pb2.StartJobRequest(job_id=job_id, output_name="student", run_dir=str(run_dir.resolve()),
                                                 method=trainer_pb2.TRAINING_METHOD_SFT))
    leap.run()
    assert trainer.jobs[job_id].state == trainer_pb2.JOB_STATE_SUCCEEDED
    assert f"{leap.state.values['run_id']}-iter0-a2" not in trainer.jobs, "no second attempt"
    assert leap.state.values["checkpoints"]["0"]["version"] == "v1"


def test_a_failed_training_is_retried_under_a_new_job_id_then_the_run_fails_naming_the_error(tmp_path):
    trainer = FakeTrainer()
    leap = make_run(tmp_path / "run", FakeStubs(trainer), config(retry={"train_attempts": 2}))
    run_id = leap.state.values["run_id"]
    trainer.fail_ids = {f"{run_id}-iter0-a1"}
    trainer.broken_watches = 1  # and the first watch breaks: it is reopened
    leap.run()
    assert trainer.jobs[f"{run_id}-iter0-a1"].state == trainer_pb2.JOB_STATE_FAILED
    assert leap.state.values["checkpoints"]["0"]["version"] == "v1"

    trainer = FakeTrainer()
    leap = make_run(tmp_path / "again", FakeStubs(trainer), config(retry={"train_attempts": 2}))
    trainer.fail_ids = {f"{leap.state.values['run_id']}-iter0-a{k}" for k in (1, 2)}
    with pytest.raises(RuntimeError, match="training failed 2 times on the trainer service; last error: loss is NaN"):
        leap.run()


def test_ctrl_c_during_training_cancels_the_job(tmp_path):
    trainer = FakeTrainer()
    leap = make_run(tmp_path / "run", FakeStubs(trainer))
    trainer.interrupt_watch = True
    with pytest.raises(KeyboardInterrupt):
        leap.run()
    (job,) = trainer.jobs.values()
    assert job.state == trainer_pb2.JOB_STATE_CANCELLED


@pytest.mark.parametrize("how", ["ctrl-c", "kill -9 of the run and its local trainer"])
def test_stopped_trainings_do_not_use_up_the_attempts_of_a_resumed_run(tmp_path, how):
    """A training stopped with the run (Ctrl-C cancels it; a kill -9 takes the local trainer down, whose
    restart marks the job failed with RESTARTED_MESSAGE) is no failed attempt: a run stopped in
    training more often than retry.train_attempts still resumes and finishes."""
    from services.trainer.jobs import RESTARTED_MESSAGE

    trainer = FakeTrainer()
    run_dir = tmp_path / "run"
    for _ in range(config().retry.train_attempts + 1):
        trainer.interrupt_watch = True
        with pytest.raises(KeyboardInterrupt):
            make_run(run_dir, FakeStubs(trainer, FakeStudent())).run()
        if how.startswith("kill"):
            for job in trainer.jobs.values():
                if job.state in (trainer_pb2.JOB_STATE_RUNNING, trainer_pb2.JOB_STATE_CANCELLED):
                    job.state, job.error = trainer_pb2.JOB_STATE_FAILED, RESTARTED_MESSAGE
    make_run(run_dir, FakeStubs(trainer, FakeStudent())).run()
    state = json.loads((run_dir / "state.json").read_text())
    assert all(phase["status"] == "done" for phase in state["phases"])
    train = next(p["outputs"] for p in state["phases"] if p["name"] == "iter0.train")
    assert train["job_id"].endswith(f"-a{config().retry.train_attempts + 2}")


def test_the_retry_section_of_the_run_config_is_typed():
    assert config().retry.train_attempts == 3
    with pytest.raises(ValueError, match="config key retry.train_attempts must be a whole number"):
        load_config(preset="smoke", overrides={"retry": {"train_attempts": "3"}})
    with pytest.raises(ValueError, match="config key retry.watch_backoff_s must be a finite number"):
        load_config(preset="smoke", overrides={"retry": {"watch_backoff_s": "fast"}})
    with pytest.raises(ValueError, match="retry.train_attempts must be >= 1"):
        load_config(preset="smoke", overrides={"retry": {"train_attempts": 0}})


def test_leap_iterations_train_their_own_epochs_on_the_configured_lora_layers(reference, tmp_path):
    _run_dir, _results, plain = reference
    hyper = {job_id.split("-")[-2]: job.spec.hyper_parameters for job_id, job in plain.jobs.items()}
    assert hyper["iter0"].epochs == hyper["iter1"].epochs == 1.0  # leap_epochs unset: epochs for every iteration
    assert hyper["iter0"].lora_last_layers == 15  # the smoke preset's
    trainer = FakeTrainer()
    make_run(tmp_path / "run", FakeStubs(trainer),
             config(trainer={"epochs": 2.0, "leap_epochs": 0.5, "lora_last_layers": 7})).run()
    hyper = {job_id.split("-")[-2]: job.spec.hyper_parameters for job_id, job in trainer.jobs.items()}
    assert (hyper["iter0"].epochs, hyper["iter1"].epochs) == (2.0, 0.5)
    assert hyper["iter0"].lora_last_layers == hyper["iter1"].lora_last_layers == 7


def test_the_trainer_section_of_the_run_config_is_checked():
    with pytest.raises(ValueError, match="config key trainer.lora_last_layers must be a whole number"):
        load_config(preset="smoke", overrides={"trainer": {"lora_last_layers": "15"}})
    with pytest.raises(ValueError, match="config key trainer.leap_epochs must be a finite number"):
        load_config(preset="smoke", overrides={"trainer": {"leap_epochs": float("nan")}})
    with pytest.raises(ValueError, match="trainer.lora_last_layers must be >= 0"):
        load_config(preset="smoke", overrides={"trainer": {"lora_last_layers": -1}})
    with pytest.raises(ValueError, match="trainer.leap_epochs >= 0"):
        load_config(preset="smoke", overrides={"trainer": {"leap_epochs": -1.0}})
    with pytest.raises(ValueError, match="trainer.epochs must be > 0"):
        load_config(preset="smoke", overrides={"trainer": {"epochs": 0.0}})


class TimedStudent(FakeStudent):
    """A fake student whose answers take a few milliseconds, recording which splits' episodes were
    being answered at once."""

    def __init__(self):
        super().__init__()
        self.in_flight: dict[str, int] = {}
        self.most_in_flight = 0
        self.seen_together: set[frozenset] = set()
        self.episodes: dict[str, set[str]] = {}  # split -> tasks it was asked about

    def Act(self, request, timeout=None):
        import time

        task = request.items[0].request_id.split("/")[0]
        split = task.split("-")[0]
        with self.lock:
            self.episodes.setdefault(split, set()).add(task)
            self.in_flight[split] = self.in_flight.get(split, 0) + 1
            self.most_in_flight = max(self.most_in_flight, sum(self.in_flight.values()))
            self.seen_together.add(frozenset(s for s, n in self.in_flight.items() if n))
        try:
            time.sleep(0.003)
            return super().Act(request, timeout)
        finally:
            with self.lock:
                self.in_flight[split] -= 1


def test_the_rollouts_run_beside_the_evaluation_of_the_same_adapter_within_the_episode_budget(reference, tmp_path):
    import json

    reference_dir, _results, _trainer = reference
    runs = {}
    for overlap in (True, False):
        student = TimedStudent()
        run_dir = tmp_path / f"overlap-{overlap}"
        results = make_run(run_dir, FakeStubs(FakeTrainer(), student),
                           config(concurrency=3, overlap_rollouts=overlap)).run()
        runs[overlap] = student
        assert student.most_in_flight <= 3, "one budget of episodes in flight for both phases"
        assert fingerprint(run_dir) == fingerprint(reference_dir), "the same datasets, adapters and results"
        phases = {p["name"]: p for p in json.loads((run_dir / "state.json").read_text())["phases"]}
        evaluation, rollout = phases["iter0.eval"], phases["iter1.rollout"]
        assert evaluation["outputs"]["work"]["student_steps"] == sum(
            len(t.steps) for t in trajectories_of(run_dir, "iter0.eval")), "each phase counts its own work"
        assert rollout["outputs"]["work"]["student_steps"] == sum(
            len(t.steps) for t in trajectories_of(run_dir, "iter1.rollout"))
        profile = {entry["phase"]: entry for entry in results["profile"]}
        report = (run_dir / "results.md").read_text()
        if overlap:
            assert rollout["started_at"] < evaluation["finished_at"]
            assert profile["iter0.eval"]["beside"] == ["iter1.rollout"]
            assert profile["iter1.rollout"]["beside"] == ["iter0.eval"]
            assert "| iter0.eval ∥ |" in report and "| iter1.rollout ∥ |" in report
        else:
            assert rollout["started_at"] >= evaluation["finished_at"]
            assert not any(entry["beside"] for entry in profile.values()) and "∥" not in report
    assert frozenset({"valid_unseen", "train"}) in runs[True].seen_together
    assert frozenset({"valid_unseen", "train"}) not in runs[False].seen_together


def test_when_the_evaluation_fails_the_rollouts_beside_it_start_no_more_episodes(reference, tmp_path):
    reference_dir, _results, _trainer = reference

    class FailingEvaluation(TimedStudent):
        def Act(self, request, timeout=None):
            if request.items[0].request_id.startswith("valid_unseen") and request.items[0].adapter_version != "base":
                raise KeyboardInterrupt  # Ctrl-C while the evaluation waits on its student
            return super().Act(request, timeout)

    student = FailingEvaluation()
    run_dir = tmp_path / "run"
    cfg = config(concurrency=1, environment={"rollout_tasks": 8})
    with pytest.raises(KeyboardInterrupt):
        make_run(run_dir, FakeStubs(FakeTrainer(), student), cfg).run()
    leap = make_run(run_dir, FakeStubs(FakeTrainer(), FakeStudent()), cfg)
    assert leap.state.is_done("iter0.load")
    assert not leap.state.is_done("iter0.eval") and not leap.state.is_done("iter1.rollout")
    # Once the evaluation has failed, the budget closes: rollout episodes that were waiting for the
    # one slot never start (without the close, all 8 would be played before the run stopped).
    assert len(student.episodes.get("train", ())) < 8


def test_an_episode_that_fails_with_any_exception_counts_as_an_error_not_a_dead_phase(tmp_path):
    """A reply the orchestrator cannot use (here an Act answer without results, so an IndexError, not an
    RPC error) is retried, then recorded as that episode's error: a failure in the results; the run goes on."""

    class OneBadAnswer(FakeStudent):
        def Act(self, request, timeout=None):
            if request.items[0].request_id.startswith("valid_unseen-3/"):
                return student_pb2.ActResponse()
            return super().Act(request, timeout)

    run_dir = tmp_path / "run"
    make_run(run_dir, FakeStubs(FakeTrainer(), OneBadAnswer())).run()
    baseline = json.loads((run_dir / "metrics" / "baseline.json").read_text())
    overall = baseline["splits"]["valid_unseen"]["overall"]
    assert overall["errors"] == 1 and overall["episodes"] == 4, overall
    assert "IndexError" in json.dumps(baseline)


def test_a_rollout_that_could_not_be_played_counts_as_failed_in_the_rollout_success(tmp_path):
    class OneRolloutFails(FakeStudent):
        def Act(self, request, timeout=None):
            item = request.items[0]
            if item.request_id.startswith("train-11/"):
                raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "student restarting")
            return super().Act(request, timeout)

    run_dir = tmp_path / "run"
    make_run(run_dir, FakeStubs(FakeTrainer(), OneRolloutFails())).run()
    state = json.loads((run_dir / "state.json").read_text())
    rollout = next(p["outputs"] for p in state["phases"] if p["name"] == "iter1.rollout")
    played = ds_read(rollout["trajectories_file"])
    assert len(rollout["errors"]) == 1 and rollout["episodes"] == len(played)
    won = sum(t.won for t in played)
    assert rollout["success"] == pytest.approx(100.0 * won / (len(played) + 1))
    correct = next(p["outputs"] for p in state["phases"] if p["name"] == "iter1.correct")
    assert correct["teacher_errors"] == 0 and correct["teacher_error_examples"] == []


def ds_read(path: str) -> list:
    from orchestrator import datasets as ds

    return ds.read_trajectories(Path(path))


def test_a_run_never_evaluates_another_runs_adapter_under_the_same_version_name(tmp_path):
    """Two runs on one student: the second run's `student-iter-0` is answered ALREADY_EXISTS (the name is
    bound to the first run's weights); it must stop with a clear error rather than evaluate those."""
    from orchestrator.platforms.hot_swap import ConflictingAdapter

    student = FakeStudent()
    make_run(tmp_path / "a", FakeStubs(FakeTrainer(), student)).run()
    with pytest.raises(ConflictingAdapter, match=r"serves student-iter-0 from .*/a/.*not this run's checkpoint .*/b/"):
        make_run(tmp_path / "b", FakeStubs(FakeTrainer(), student)).run()
    # The same run, resumed on the student that holds its own adapter, goes on.
    make_run(tmp_path / "a", FakeStubs(FakeTrainer(), student)).run()


def outputs_with_teacher(tmp_path, teacher, phase: str) -> dict:
    """The outputs of `phase` in a whole run whose teacher is `teacher`."""
    stubs = FakeStubs(FakeTrainer(), FakeStudent())
    stubs.teacher = teacher
    run_dir = tmp_path / "run"
    make_run(run_dir, stubs).run()
    state = json.loads((run_dir / "state.json").read_text())
    return next(p["outputs"] for p in state["phases"] if p["name"] == phase)


def test_a_trajectory_the_teacher_could_not_be_asked_about_is_named_not_lost(tmp_path):
    class OneCallFails(FakeTeacher):
        def Correct(self, request, timeout=None):
            if request.trajectory.task.task_id == "train-11":
                raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "the trajectory has more steps than --max-steps")
            return super().Correct(request, timeout)

    correct = outputs_with_teacher(tmp_path, OneCallFails(), "iter1.correct")
    assert correct["teacher_errors"] == 1
    assert correct["teacher_error_examples"] == [
        {"task_id": "train-11", "error": "INVALID_ARGUMENT: the trajectory has more steps than --max-steps"}]


def test_demonstrations_that_could_not_be_made_are_counted_and_named(tmp_path):
    class OneDemoFails(FakeTeacher):
        def Demonstrate(self, request, timeout=None):
            if request.task.task_id == "train-1":
                raise RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, "no sandbox could be started; retry later")
            return super().Demonstrate(request, timeout)

    demos = outputs_with_teacher(tmp_path, OneDemoFails(), "iter0.demos")
    assert demos["errors"] == 1 and demos["demonstrations"] == demos["tasks"] - 1 and demos["lost"] == 0
    assert demos["error_examples"][0]["task_id"] == "train-1"
