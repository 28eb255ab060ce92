"""The LEAP loop as an explicit, resumable state machine over the four services.

Phases, each persisted before the next starts:

    baseline.eval                   the untrained student on the held-out tasks
    reference.eval                  the searching expert and the privileged planner on the same tasks
    iter0.demos -> .dataset -> .train -> .load -> .eval          behaviour cloning (BC)
    iter<i>.rollout -> .correct -> .dataset -> .train -> .load -> .eval   LEAP iterations i >= 1
    report                          results.json, results.md, results.png

Iteration i's evaluation and iteration i+1's rollouts play the same adapter and need nothing of
each other, so they run side by side (`overlap_rollouts`), within one budget of `concurrency`
episodes in flight: the rollouts take the slots the evaluation's finished episodes free. Each is
still its own phase, begun, finished and resumed on its own. On a 2-core CPU, whose student engine is
never idle, this neither gains nor loses (README, runs 25-26); it pays where a decode pass of a few
rows costs what a full one does.

A phase's outputs are written atomically, then the phase is marked done. `--resume` skips done
phases; an unfinished phase is redone from its inputs (which are deterministic: seeded rollouts,
seeded subsampling), so a run killed at any point ends with the same datasets and checkpoint
versions as an uninterrupted one.

Training and adapter serving go through the run's platform (orchestrator.platforms.base.Platform):
the local trainer and student by default, trainer Jobs and every student replica on Kubernetes.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from leap.v1 import common_pb2, environment_pb2, student_pb2, trainer_pb2
from orchestrator import datasets as ds
from orchestrator.config import RunConfig, load_snapshot
from orchestrator.episodes import (
    EpisodeSettings,
    EpisodeSlots,
    SlotsClosed,
    ServiceStubs,
    correct,
    demonstrate,
    list_task_refs,
    play_student_episode,
    run_parallel,
    summarize,
)
from orchestrator.platforms.base import BASE_VERSION, Platform, TrainingFailed, TrainingObserver
from orchestrator.platforms.local import LocalPlatform
from orchestrator.progress import PhaseProgress, ProgressReporter
from orchestrator.state import RunState
from orchestrator.work import StudentWork, training_work
from services.runtime.experts import EXPERT_KINDS, REFERENCE_EXPERTS
from services.trainer import methods as training_methods
from services.trainer.jobs import INTERRUPTED_MESSAGES
from services.runtime.files import atomic_write_json, atomic_write_text

log = logging.getLogger("leap.orchestrator")



def fault_point(name: str) -> None:
    """Crash-test hook: when $LEAP_FAULT_KILL names this point, the process kills itself (SIGKILL).

    Used by the resume tests to kill the orchestrator at exact moments (mid-rollout, mid-training,
    mid-hot-swap). Inert unless the variable is set.
    """
    if os.environ.get("LEAP_FAULT_KILL") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def phase_names(iterations: int) -> list[str]:
    names = ["baseline.eval", "reference.eval", "iter0.demos", "iter0.dataset", "iter0.train", "iter0.load",
             "iter0.eval"]
    for i in range(1, iterations + 1):
        names += [f"iter{i}.{p}" for p in ("rollout", "correct", "dataset", "train", "load", "eval")]
    return names + ["report"]


def adapter_version(iteration: int) -> str:
    return f"student-iter-{iteration}"


def plays_student(phase: str) -> bool:
    """Whether a phase runs the student (so every replica must serve the latest adapter first)."""
    return phase == "baseline.eval" or (phase.startswith("iter") and phase.endswith((".rollout", ".eval")))


class TrainingProgress(TrainingObserver):
    """Shows one training on its progress bar; the crash-test points of a training."""

    def __init__(self, bar: PhaseProgress, title: str):
        self.bar = bar
        self.title = title

    def submitted(self, job_id: str) -> None:
        fault_point(f"{self.title}:submitted")

    def progress(self, progress: trainer_pb2.JobProgress) -> None:
        self.bar.update(completed=progress.step, total=progress.total_steps or None,
                        info=f"loss {progress.loss:.3f}  {progress.tokens_per_second:.0f} tok/s")
        if progress.step >= 1:
            fault_point(f"{self.title}:step-{progress.step}")

    def status(self, text: str) -> None:
        self.bar.update(info=text[:120])


#: Training attempts that were stopped (not failed) a run goes past before it gives up.
MAX_INTERRUPTED_TRAININGS = 20


class ConfigMismatch(RuntimeError):
    pass


@dataclass
class LeapRun:
    config: RunConfig
    run_dir: Path
    stubs: ServiceStubs
    reporter: ProgressReporter
    # Test hook: called with every ActItem the student is sent (to prove nothing privileged is in it).
    act_hook: Callable[[student_pb2.ActItem], None] | None = None
    # Where training and adapter serving happen (default: the trainer and student at `stubs`).
    platform: Platform | None = None

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.state = RunState(self.run_dir, phase_names(self.config.iterations))
        if "run_id" not in self.state.values:
            self.state.values["run_id"] = secrets.token_hex(4)
            self.state.save()
        self.env = self.config.environment.name
        self._env_info: environment_pb2.EnvironmentInfo | None = None
        #: Per thread, the student's work in the phase that thread runs (orchestrator.work).
        self._phase_work = threading.local()
        #: Episodes in flight over every phase running at once (`concurrency`); made by run().
        self._episode_slots = EpisodeSlots(self.config.concurrency)
        if self.platform is None:
            self.platform = LocalPlatform(self.stubs, self.config.retry)
        self.platform.begin_run(self.run_label)

    @property
    def run_label(self) -> str:
        """The run's name on the platform: `<config name>-<run id>`."""
        return f"{self.config.name}-{self.state.values['run_id']}".strip("-")

    # ---------------------------------------------------------------- setup
    @staticmethod
    def prepare_run_dir(run_dir: Path, config: RunConfig, resume: bool) -> None:
        """Write the config snapshot, or check that a resumed run uses the same config."""
        run_dir.mkdir(parents=True, exist_ok=True)
        snapshot = run_dir / "config.yaml"
        text = yaml.safe_dump(config.to_dict(), sort_keys=True)
        if snapshot.exists():
            if not resume:
                raise ConfigMismatch(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")
            # Compared as configs, not text: a snapshot written before a field existed reads with that
            # field's default, so runs started by an older release still resume.
            if load_snapshot(snapshot).to_dict() != config.to_dict():
                raise ConfigMismatch(f"the config differs from the one {run_dir} was started with "
                                     f"({snapshot}); resume with that config or start a new run")
        else:
            atomic_write_text(snapshot, text)

    def write_manifest(self) -> None:
        envs = self.stubs.env.ListEnvironments(environment_pb2.ListEnvironmentsRequest(), timeout=30)
        model = self.stubs.student.GetModelInfo(student_pb2.GetModelInfoRequest(), timeout=30)
        import platform

        from importlib import metadata

        versions = {}
        for pkg in ("leap-serve", "grpcio", "protobuf", "torch", "transformers", "peft", "trl"):
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                pass
        atomic_write_json(self.run_dir / "manifest.json", {
            "run_id": self.state.values["run_id"],
            "seed": self.config.seed,
            "environments": {e.name: e.version for e in envs.environments},
            "student_model": model.base_model,
            "student_backend": model.backend,
            "student_device": model.device,
            "student_dtype": model.dtype,
            "teacher": self.config.teacher.backend,
            "realizability_level": self.config.teacher.realizability_level,
            "services": self.stubs.addresses,
            "packages": versions,
            "python": platform.python_version(),
        })

    # ---------------------------------------------------------------- driver
    def run(self) -> dict:
        self._check_student_capabilities()
        self._environment()
        if not (self.run_dir / "manifest.json").exists():
            self.write_manifest()
        self._episode_slots = EpisodeSlots(self.config.concurrency)
        for name in self.state.phases:
            if self.state.is_done(name):
                continue
            beside = self.runs_beside(name)
            for phase in (name, beside):
                if phase and plays_student(phase):
                    self.confirm_latest_adapter()
                    break
            if beside is None:
                self._run_phase(name)
            else:
                self._run_side_by_side(name, beside)
        return self.results()

    def runs_beside(self, name: str) -> str | None:
        """The pending phase that runs at the same time as `name`: iteration i+1's rollouts beside
        iteration i's evaluation (same adapter), when `overlap_rollouts` is on; None otherwise."""
        if not self.config.overlap_rollouts or not (name.startswith("iter") and name.endswith(".eval")):
            return None
        partner = f"iter{int(name[4:-5]) + 1}.rollout"
        if partner not in self.state.phases or self.state.is_done(partner):
            return None
        return partner

    def _run_phase(self, name: str) -> None:
        self.state.begin(name)
        self._phase_work.tally = StudentWork()
        # An earlier phase's episodes claim freed slots first (an evaluation before the rollouts beside it).
        self._phase_work.priority = list(self.state.phases).index(name)
        outputs = self._dispatch(name)
        work = self._phase_work.tally.snapshot() | outputs.pop("work", {})
        if work:
            outputs["work"] = work
        self.state.finish(name, outputs)

    def _run_side_by_side(self, first: str, second: str) -> None:
        """Run two phases at once (`second` on a thread of its own). When one fails (Ctrl-C
        included), the other starts no more episodes, lets those in flight end and fails too; the
        first failure is raised. A failed phase stays pending, and a resumed run redoes it."""
        failure: list[BaseException] = []

        def run_second() -> None:
            try:
                self._run_phase(second)
            except BaseException as exc:  # noqa: BLE001 - raised on the run's own thread below
                failure.append(exc)
                self._episode_slots.close()

        thread = threading.Thread(target=run_second, name=f"phase-{second}")
        thread.start()
        try:
            self._run_phase(first)
        except BaseException as exc:  # noqa: BLE001 - raised below, once the other phase has stopped
            failure.insert(0, exc)
            self._episode_slots.close()
        finally:
            thread.join()
        if failure:
            # The cause, not the other phase's SlotsClosed that followed from it.
            raise next((exc for exc in failure if not isinstance(exc, SlotsClosed)), failure[0])

    def _check_student_capabilities(self) -> None:
        """Fail before any phase when the config asks the student server for what it cannot do."""
        if not self.config.student.constrain_action:
            return
        model = self.stubs.student.GetModelInfo(student_pb2.GetModelInfoRequest(), timeout=30)
        if not model.supports_action_constraint:
            raise ConfigMismatch(
                f"student.constrain_action is set, but the student server at {self.stubs.addresses.get('student')} "
                f"({model.backend} backend) cannot restrict actions to the candidates; set "
                "student.constrain_action: false, or serve the student with the local backend")

    def _dispatch(self, name: str) -> dict:
        if name == "baseline.eval":
            return self._evaluate_student("baseline", BASE_VERSION)
        if name == "reference.eval":
            return self._evaluate_experts()
        if name == "report":
            return self._report()
        head, phase = name.split(".")
        i = int(head.removeprefix("iter"))
        return {
            "demos": lambda: self._demos(),
            "rollout": lambda: self._rollout(i),
            "correct": lambda: self._correct(i),
            "dataset": lambda: self._dataset(i),
            "train": lambda: self._train(i),
            "load": lambda: self._load(i),
            "eval": lambda: self._evaluate_student(f"iter{i}", adapter_version(i)),
        }[phase]()

    # ---------------------------------------------------------------- helpers
    def _settings(self, temperature: float, seed: int, version: str) -> EpisodeSettings:
        s = self.config.student
        return EpisodeSettings(env=self.env, horizon=self.config.environment.horizon, temperature=temperature,
                               max_new_tokens=s.max_new_tokens, history_window=s.history_window, seed=seed,
                               adapter_version=version, constrain_action=s.constrain_action,
                               max_reason_tokens=s.max_reason_tokens)

    def _play(self, title: str, tasks: list[common_pb2.TaskRef], settings: EpisodeSettings) -> tuple[list, list]:
        wins = 0
        done = 0
        count_work = self._phase_work.tally.add
        with self.reporter.phase(title, len(tasks)) as bar:
            def on_done(outcome):
                nonlocal wins, done
                done += 1
                fault_point(f"{title}:episode-{done}")
                if outcome.value is not None and outcome.value.won:
                    wins += 1
                bar.advance(1, info=f"success {100 * wins / done:.0f}%")

            outcomes = run_parallel(lambda k: play_student_episode(self.stubs, tasks[k].task_id, settings,
                                                                   self.act_hook, count_work),
                                    len(tasks), self.config.concurrency, on_done, slots=self._episode_slots,
                                    priority=self._phase_work.priority)
        trajectories = [o.value for o in outcomes if o.value is not None]
        errors = [{"task_id": tasks[o.index].task_id, "error": o.error} for o in outcomes if o.value is None]
        return trajectories, errors

    def _eval_tasks(self, split: str) -> list[common_pb2.TaskRef]:
        return list_task_refs(self.stubs, self.env, split, 0, self.config.environment.eval_tasks,
                              "environment.eval_tasks")

    def _evaluate_student(self, label: str, version: str) -> dict:
        metrics = {}
        for split in self.config.environment.eval_splits:
            tasks = self._eval_tasks(split)
            settings = self._settings(self.config.student.eval_temperature, self.config.seed, version)
            settings.stop_cycles = self.config.environment.stop_cycles
            trajectories, errors = self._play(f"{label}: evaluate on {split}", tasks, settings)
            path = ds.write_trajectories(self.run_dir / "trajectories" / f"{label}-eval-{split}.jsonl", trajectories)
            metrics[split] = summarize(trajectories, len(errors)) | {"errors": errors, "trajectories": str(path)}
        atomic_write_json(self.run_dir / "metrics" / f"{label}.json", {"label": label, "adapter": version,
                                                                      "splits": metrics})
        return {"metrics_file": str(self.run_dir / "metrics" / f"{label}.json")}

    def _evaluate_experts(self) -> dict:
        out = {}
        offered = self._experts()
        for label, (name, _title) in REFERENCE_EXPERTS.items():
            expert = EXPERT_KINDS[name]
            if expert not in offered:
                continue
            metrics = {}
            for split in self.config.environment.eval_splits:
                tasks = self._eval_tasks(split)
                with self.reporter.phase(f"{label}: {split}", len(tasks)) as bar:
                    outcomes = run_parallel(
                        lambda k: demonstrate(self.stubs, tasks[k], expert, self.config.environment.horizon, False),
                        len(tasks), self.config.concurrency, lambda _o: bar.advance(1))
                trajectories = [o.value for o in outcomes if o.value is not None]
                errors = [{"task_id": tasks[o.index].task_id, "error": o.error} for o in outcomes if o.value is None]
                metrics[split] = summarize(trajectories, len(errors)) | {"errors": errors}
            atomic_write_json(self.run_dir / "metrics" / f"{label}.json", {"label": label, "splits": metrics})
            out[f"{label}_file"] = str(self.run_dir / "metrics" / f"{label}.json")
        return out

    def _environment(self) -> environment_pb2.EnvironmentInfo:
        """What the environment server says about the configured environment (asked once per process)."""
        if self._env_info is None:
            served = self.stubs.env.ListEnvironments(environment_pb2.ListEnvironmentsRequest(), timeout=30)
            for info in served.environments:
                if info.name == self.env:
                    self._env_info = info
                    break
            else:
                raise ConfigMismatch(
                    f"environment.name is {self.env!r}, but the environment server at "
                    f"{self.stubs.addresses.get('environment')} serves: "
                    f"{', '.join(e.name for e in served.environments) or 'nothing'}")
        return self._env_info

    def _experts(self) -> set[int]:
        """The expert kinds the environment offers (all three from a server too old to say)."""
        return set(self._environment().experts) or set(EXPERT_KINDS.values())

    def demonstration_expert(self) -> int:
        """BC imitates LEAP's searching expert (it uses only what the agent observed); environments
        without one (InterCode Bash: the gold command is the only expert) are demonstrated by the planner."""
        offered = self._experts()
        if environment_pb2.EXPERT_KIND_SEARCHER in offered:
            return environment_pb2.EXPERT_KIND_SEARCHER
        if environment_pb2.EXPERT_KIND_PLANNER in offered:
            return environment_pb2.EXPERT_KIND_PLANNER
        raise ConfigMismatch(f"environment {self.env!r} offers neither a searcher nor a planner expert, so "
                             "there is nothing to demonstrate for behaviour cloning")

    # ---------------------------------------------------------------- iteration 0 (BC)
    def _demos(self) -> dict:
        e = self.config.environment
        tasks = list_task_refs(self.stubs, self.env, e.train_split, e.demo_offset, e.demo_tasks,
                                "environment.demo_offset and environment.demo_tasks")
        expert = self.demonstration_expert()
        with self.reporter.phase("iter0: expert demonstrations + teacher reasons", len(tasks)) as bar:
            outcomes = run_parallel(
                lambda k: demonstrate(self.stubs, tasks[k], expert, e.demo_horizon, True),
                len(tasks), self.config.concurrency, lambda _o: bar.advance(1))
        # BC imitates successful demonstrations only; the tasks whose call failed are named.
        demos = [o.value for o in outcomes if o.value is not None and o.value.won]
        path = ds.write_trajectories(self.run_dir / "trajectories" / "iter0-demos.jsonl", demos)
        errors = [{"task_id": tasks[o.index].task_id, "error": o.error} for o in outcomes if o.value is None]
        return {"trajectories_file": str(path), "demonstrations": len(demos), "tasks": len(tasks),
                "lost": sum(1 for o in outcomes if o.value is not None and not o.value.won),
                "errors": len(errors), "error_examples": errors[:20]}

    # ---------------------------------------------------------------- iterations >= 1
    def _rollout(self, i: int) -> dict:
        e = self.config.environment
        tasks = list_task_refs(self.stubs, self.env, e.train_split, e.rollout_offset + (i - 1) * e.rollout_tasks,
                               e.rollout_tasks, "environment.rollout_offset and environment.rollout_tasks")
        settings = self._settings(self.config.student.rollout_temperature, self.config.seed * 1000 + i,
                                  adapter_version(i - 1))
        trajectories, errors = self._play(f"iter{i}: rollouts on train", tasks, settings)
        path = ds.write_trajectories(self.run_dir / "trajectories" / f"iter{i}-rollouts.jsonl", trajectories)
        # An episode that could not be played counts as a failed one (never dropped from the rate).
        return {"trajectories_file": str(path), "episodes": len(trajectories), "errors": errors,
                "success": summarize(trajectories, len(errors))["overall"]["success"]}

    def _correct(self, i: int) -> dict:
        rollouts = ds.read_trajectories(Path(self.state.outputs(f"iter{i}.rollout")["trajectories_file"]))
        failed = [t for t in rollouts if not t.won]
        level = self.config.teacher.realizability_level
        with self.reporter.phase(f"iter{i}: teacher corrections (level {level})", len(failed)) as bar:
            outcomes = run_parallel(lambda k: correct(self.stubs, failed[k], level), len(failed),
                                    self.config.concurrency, lambda _o: bar.advance(1))
        pairs = [(failed[o.index], o.value) for o in outcomes if o.value is not None]
        path = ds.write_corrections(self.run_dir / "trajectories" / f"iter{i}-corrections.jsonl", pairs)
        # A trajectory the teacher could not be asked about (its call failed after the retry) has no
        # correction: it is named here rather than left out unseen.
        unasked = [{"task_id": failed[o.index].task.task_id, "error": o.error} for o in outcomes if o.value is None]
        return {"corrections_file": str(path), "failed": len(failed),
                "corrected_ok": sum(1 for _t, c in pairs if c.ok),
                "teacher_failures": [c.error for _t, c in pairs if not c.ok][:20],
                "teacher_errors": len(unasked), "teacher_error_examples": unasked[:20]}

    def _iteration_rows(self, i: int, method: str) -> list[dict]:
        window = self.config.student.history_window
        if i == 0:
            demos = ds.read_trajectories(Path(self.state.outputs("iter0.demos")["trajectories_file"]))
            return ds.demonstration_rows(self.env, demos, window)
        pairs = ds.read_corrections(Path(self.state.outputs(f"iter{i}.correct")["corrections_file"]))
        return ds.correction_rows(self.env, pairs, window, method, self.config.keep_unchanged_steps)

    def _method(self, i: int) -> str:
        return "sft" if i == 0 else self.config.trainer.method

    def _dataset(self, i: int) -> dict:
        method = self._method(i)
        rows = self._iteration_rows(i, method)
        own = ds.write_rows(self.run_dir / "datasets" / f"iter{i}-{method}.jsonl", rows)
        # Aggregate with earlier iterations of the same kind (BC data is SFT-shaped).
        first = 0 if method == "sft" else 1
        history = [ds.read_rows(self.run_dir / "datasets" / f"iter{k}-{method}.jsonl") for k in range(first, i)]
        mixed = ds.aggregate(history + [rows], seed=self.config.seed * 7919 + i,
                             max_rows=self.config.trainer.max_examples,
                             balance_actions=self.config.trainer.balance_actions)
        path = ds.write_rows(self.run_dir / "datasets" / f"train-iter{i}-{method}.jsonl", mixed)
        return {"rows_file": str(own), "rows": len(rows), "mixed_file": str(path), "mixed_rows": len(mixed)}

    def _hyper(self, i: int) -> trainer_pb2.HyperParameters:
        """Iteration `i`'s hyper-parameters: LEAP iterations (i >= 1) continue from the previous adapter
        and train `leap_epochs` epochs where set."""
        t = self.config.trainer
        epochs = t.leap_epochs if i > 0 and t.leap_epochs > 0 else t.epochs
        return trainer_pb2.HyperParameters(lora_r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                                           target_modules=list(t.target_modules), lora_last_layers=t.lora_last_layers,
                                           learning_rate=t.learning_rate, epochs=epochs, batch_size=t.batch_size,
                                           max_length=t.max_length, max_steps=t.max_steps, beta=t.beta,
                                           seed=self.config.seed)

    def _train(self, i: int) -> dict:
        dataset = self.state.outputs(f"iter{i}.dataset")
        if dataset["mixed_rows"] == 0:
            # Nothing to learn from (e.g. every rollout won): keep the previous adapter.
            previous = self.state.values.get("checkpoints", {}).get(str(i - 1))
            self.state.values.setdefault("checkpoints", {})[str(i)] = previous
            self.state.save()
            return {"skipped": "no training rows", "checkpoint": previous}
        parent = None
        if i > 0:
            parent = self.state.values["checkpoints"][str(i - 1)]
        spec = trainer_pb2.StartJobRequest(
            method=training_methods.to_proto(self._method(i)),
            datasets=[common_pb2.ArtifactRef(uri=str(Path(dataset["mixed_file"]).resolve()),
                                             sha256=dataset["mixed_sha256"], format="jsonl")],
            base_model=self.config.student.model, output_name="student", hyper_parameters=self._hyper(i),
            run_dir=str(self.run_dir.resolve()),
        )
        if parent:
            spec.parent.CopyFrom(common_pb2.CheckpointRef(**parent))
        job = self._run_training_job(f"{self.state.values['run_id']}-iter{i}", spec, f"iter{i}: train ({self._method(i)})")
        ckpt = {"name": job.checkpoint.name, "version": job.checkpoint.version, "uri": job.checkpoint.uri,
                "sha256": job.checkpoint.sha256, "base_model": job.checkpoint.base_model}
        self.state.values.setdefault("checkpoints", {})[str(i)] = ckpt
        self.state.save()
        return {"job_id": job.job_id, "checkpoint": ckpt, "final_loss": job.progress.loss,
                "work": training_work(job)}

    def _run_training_job(self, base_id: str, spec: trainer_pb2.StartJobRequest, title: str) -> trainer_pb2.Job:
        """Train on the platform; a failed attempt is retried under a new job id (retry.train_attempts).

        An attempt that was stopped rather than failed (cancelled when the run was stopped by hand, or
        ended by the trainer's restart or shutdown, e.g. a kill -9 of the run that took its local trainer
        down) does not count as a failure: a resumed run finds it under its id and starts the next one.
        """
        attempts = self.config.retry.train_attempts
        last_error = ""
        failures = interrupted = 0
        attempt = 0
        while failures < attempts:
            attempt += 1
            request = trainer_pb2.StartJobRequest()
            request.CopyFrom(spec)
            request.job_id = f"{base_id}-a{attempt}"
            with self.reporter.phase(title, None) as bar:
                try:
                    job = self.platform.train_job(request, TrainingProgress(bar, title))
                except TrainingFailed as exc:
                    failures += 1
                    last_error = str(exc)
                    log.warning("training attempt failed", extra={"job_id": request.job_id, "error": last_error})
                    continue
                except KeyboardInterrupt:  # stopped by hand: the training stops with the run
                    self.platform.cancel_job(request.job_id)
                    raise
            if job.state == trainer_pb2.JOB_STATE_SUCCEEDED:
                return job
            if job.state == trainer_pb2.JOB_STATE_CANCELLED or job.error in INTERRUPTED_MESSAGES:
                interrupted += 1
                if interrupted > MAX_INTERRUPTED_TRAININGS:
                    raise RuntimeError(f"training was stopped {interrupted} times before it could finish "
                                       f"(last: {job.job_id}, {trainer_pb2.JobState.Name(job.state)}); "
                                       "see why the trainer keeps stopping")
                log.warning("training attempt was stopped, not failed; starting the next one",
                            extra={"job_id": request.job_id, "state": trainer_pb2.JobState.Name(job.state)})
                continue
            failures += 1
            last_error = job.error or trainer_pb2.JobState.Name(job.state)
            log.warning("training attempt failed", extra={"job_id": request.job_id, "error": last_error})
        raise RuntimeError(f"training failed {attempts} times on {self.platform.description}; "
                           f"last error: {last_error}")

    def _adapter(self, i: int) -> common_pb2.CheckpointRef:
        """Iteration i's checkpoint, served under the adapter version adapter_version(i)."""
        ckpt = self.state.values["checkpoints"][str(i)]
        if ckpt is None:  # nothing trained in iteration 0 (cannot happen with demos) or skipped
            raise RuntimeError(f"no checkpoint for iteration {i}")
        ref = common_pb2.CheckpointRef(**ckpt)
        ref.version = adapter_version(i)
        return ref

    def _load(self, i: int) -> dict:
        ref = self._adapter(i)
        with self.reporter.phase(f"hot-swap {ref.version}", None) as bar:
            info = self.platform.load_adapter(ref, on_status=lambda text: bar.update(info=text[:120]))
            fault_point(f"hot-swap {ref.version}:loaded")
        return {"version": info.version, "load_seconds": info.load_seconds}

    def confirm_latest_adapter(self) -> None:
        """Make sure the student (every replica) serves the adapter the next phases pin: the latest
        loaded one, or the base model before any; after a restart of the run or of a replica too."""
        checkpoints = self.state.values.get("checkpoints", {})
        loaded = [int(k) for k, ckpt in checkpoints.items() if ckpt and self.state.is_done(f"iter{k}.load")]
        self.platform.confirm_adapter(self._adapter(max(loaded)) if loaded else None, on_status=self.reporter.note)

    # ---------------------------------------------------------------- report
    def results(self) -> dict:
        from orchestrator.report import collect_results

        return collect_results(self.run_dir, self.config)

    def _report(self) -> dict:
        from orchestrator.report import write_report

        paths = write_report(self.run_dir, self.config)
        return {k + "_file": str(v) for k, v in paths.items()}
