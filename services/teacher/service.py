"""The teacher's logic, transport-free: validate the request, fetch privileged state, run the backend,
and check the result once more before it leaves (length, legal actions, no leaks below level 75).

    service = TeacherService(OracleTeacher(), GrpcPrivilegedSource("localhost:50052", token))
    result = service.correct(trajectory, level=50)

Errors are services.runtime errors (INVALID_ARGUMENT for a bad request, NOT_FOUND for an unknown task,
UNAVAILABLE when the environment is down). A correction the teacher cannot produce, or one that fails
the final check, is a result with ok=False, never an exception: a LEAP run goes on without it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import grpc
from prometheus_client import Counter

from services.runtime.deadline import NO_DEADLINE, Deadline
from services.runtime.errors import InvalidArgument, ServiceError
from services.runtime.messages import check_id
from services.teacher.actions import legality_error
from services.teacher.backends.base import AnnotationJob, CorrectionJob, TeacherBackend
from services.teacher.leak import SecretIndex, TrajectorySecrets, redact
from services.teacher.levels import LEVELS, check_level, must_be_leak_free
from services.runtime.experts import EXPERT_KINDS
from services.teacher.privileged import PrivilegedSource
from services.teacher.types import AnnotationResult, CorrectionResult

log = logging.getLogger("leap.teacher")

DEFAULT_MAX_STEPS = 100
MAX_RETRIES_LIMIT = 10
# Trajectory.goal is the bare instruction (TaskInfo.goal); a client that copied the observation's
# "Your task is to: ..." line is understood too (common.proto says readers tolerate the prefix).
_GOAL_PREFIX = re.compile(r"^\s*your task is(?: to)?\s*:\s*", re.IGNORECASE)

CORRECTIONS = Counter("leap_teacher_corrections_total", "Trajectories corrected, by backend, level and outcome",
                      ["backend", "level", "outcome"])
ANNOTATIONS = Counter("leap_teacher_annotations_total", "Demonstrations annotated, by backend and outcome",
                      ["backend", "outcome"])
TOKENS = Counter("leap_teacher_tokens_total", "LLM tokens used by the teacher", ["kind"])
COST = Counter("leap_teacher_cost_usd_total", "Estimated LLM cost of the teacher in US dollars")


@dataclass(frozen=True)
class TeacherDescription:
    backend: str
    model: str
    realizability_levels: tuple[int, ...]
    max_steps: int


class AnnotationFailed(ServiceError):
    """Demonstrate could not add valid reasons (an LLM teacher out of retries): ABORTED, retry or drop."""

    code = grpc.StatusCode.ABORTED


class TeacherService:
    def __init__(self, backend: TeacherBackend, source: PrivilegedSource, *, max_steps: int = DEFAULT_MAX_STEPS):
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        self.backend = backend
        self.source = source
        self.max_steps = max_steps

    def describe(self) -> TeacherDescription:
        return TeacherDescription(self.backend.name, self.backend.model, LEVELS, self.max_steps)

    # --- request checks ------------------------------------------------------------------------
    def _check_trajectory(self, trajectory, what: str) -> None:
        steps = len(trajectory.steps)
        if steps == 0:
            verb = "correct" if what == "trajectory" else "annotate"
            raise InvalidArgument(f"the {what} has no steps; there is nothing to {verb}")
        if steps > self.max_steps:
            raise InvalidArgument(f"the {what} has {steps} steps, more than this teacher accepts ({self.max_steps}); "
                                  "split it or raise the teacher's --max-steps")
        if not trajectory.task.env or not trajectory.task.task_id:
            raise InvalidArgument(f"the {what}'s task is incomplete: task.env and task.task_id are required")
        self._check_task(trajectory.task, f"{what}.task")
        for t, step in enumerate(trajectory.steps):
            if not step.action.strip():
                raise InvalidArgument(f"step {t} of the {what} has an empty action")
        trajectory.goal = _GOAL_PREFIX.sub("", trajectory.goal)

    @staticmethod
    def _check_task(task, what: str) -> None:
        """The task's names are identifiers (printable ASCII, bounded): refused here, before any parsing."""
        check_id(task.env, f"{what}.env")
        check_id(task.task_id, f"{what}.task_id")
        check_id(task.split, f"{what}.split")

    @staticmethod
    def _check_retries(max_retries: int) -> None:
        if not 0 <= max_retries <= MAX_RETRIES_LIMIT:
            raise InvalidArgument(f"max_retries must be between 0 (server default) and {MAX_RETRIES_LIMIT}, "
                                  f"not {max_retries}")

    # --- RPCs ----------------------------------------------------------------------------------
    def correct(self, trajectory, *, level: int, max_retries: int = 0, temperature: float = 0.0,
                deadline: Deadline = NO_DEADLINE) -> CorrectionResult:
        """Correct every step of a (failed) trajectory at a realizability level."""
        check_level(level)
        self._check_retries(max_retries)
        if not 0.0 <= temperature <= 2.0:
            raise InvalidArgument(f"temperature must be between 0 and 2, not {temperature}")
        self._check_trajectory(trajectory, "trajectory")
        privileged = self.source.state(trajectory.task, (), deadline=deadline)
        job = CorrectionJob(trajectory=trajectory, privileged=privileged, level=level, max_retries=max_retries,
                            temperature=temperature, deadline=deadline)
        result = self.backend.correct(job, self.source)
        if result.ok:
            problem = self._final_check(result, trajectory, privileged, level, deadline)
            if problem:
                log.error("correction refused", extra={"backend": self.backend.name, "task": trajectory.task.task_id,
                                                       "level": level, "problem": problem})
                result = CorrectionResult.failure(self.backend.name, level, f"correction refused: {problem}",
                                                  usage=result.usage, attempts=result.attempts)
        if not result.ok:  # the message leaves the teacher: it names no secret (the server's log does)
            if result.error:
                log.info("correction failed", extra={"task": trajectory.task.task_id, "error": result.error[:2000]})
            result.error = redact(result.error, privileged)
        self._account(result.usage)
        CORRECTIONS.labels(self.backend.name, str(level), "ok" if result.ok else "failed").inc()
        return result

    def annotate(self, demonstration, *, max_retries: int = 0, deadline: Deadline = NO_DEADLINE) -> AnnotationResult:
        """A reason for every step of an expert demonstration, from what was observed up to that step."""
        self._check_retries(max_retries)
        self._check_trajectory(demonstration, "demonstration")
        privileged = self.source.state(demonstration.task, (), deadline=deadline)
        job = AnnotationJob(demonstration=demonstration, privileged=privileged, max_retries=max_retries,
                            deadline=deadline)
        result = self.backend.annotate(job, self.source)
        if result.ok:
            problem = self._check_annotation(result, demonstration, privileged, deadline)
            if problem:
                log.error("annotation refused", extra={"backend": self.backend.name,
                                                       "task": demonstration.task.task_id, "problem": problem})
                result = AnnotationResult(ok=False, error=f"annotation refused: {problem}", usage=result.usage,
                                          attempts=result.attempts)
        if not result.ok:
            result.error = redact(result.error, privileged)
        self._account(result.usage)
        ANNOTATIONS.labels(self.backend.name, "ok" if result.ok else "failed").inc()
        return result

    def demonstrate(self, task, *, expert: str, horizon: int = 0, annotate: bool = False,
                    deadline: Deadline = NO_DEADLINE):
        """An expert's demonstration of `task`, played by the environment, with the teacher's reasons on
        every step when `annotate` is set (LEAP's iteration-0 data). Callers ask the teacher because only
        the teacher holds the privileged credential."""
        if not task.env or not task.task_id:
            raise InvalidArgument("the task is incomplete: task.env and task.task_id are required")
        self._check_task(task, "task")
        if expert not in EXPERT_KINDS:
            raise InvalidArgument(f"expert {expert or 'UNSPECIFIED'} cannot demonstrate; use one of "
                                  "EXPERT_KIND_SEARCHER (LEAP's BC demonstrations), EXPERT_KIND_PRIOR_SEARCHER "
                                  "or EXPERT_KIND_PLANNER")
        if horizon < 0:
            raise InvalidArgument(f"horizon must be 0 (the environment's default) or positive, not {horizon}")
        demo = self.source.demonstration(task, expert, horizon, deadline=deadline)
        if not annotate or not demo.steps:
            return demo
        result = self.annotate(demo, deadline=deadline)
        if not result.ok:
            raise AnnotationFailed(f"the {self.backend.name} teacher could not annotate the {expert} demonstration "
                                   f"of {task.env}/{task.task_id}: {result.error}")
        for step, reason in zip(demo.steps, result.reasons):
            step.reason = reason
        demo.metadata["teacher"] = self.backend.name
        demo.metadata["teacher_model"] = self.backend.model
        demo.metadata["teacher_prompt_tokens"] = str(result.usage.prompt_tokens)
        demo.metadata["teacher_completion_tokens"] = str(result.usage.completion_tokens)
        demo.metadata["teacher_cost_usd"] = f"{result.usage.cost_usd:.6f}"
        return demo

    def close(self) -> None:
        self.backend.close()
        self.source.close()

    # --- the last line of defence --------------------------------------------------------------
    @staticmethod
    def _final_check(result: CorrectionResult, trajectory, privileged, level: int,
                     deadline: Deadline = NO_DEADLINE) -> str:
        steps = list(trajectory.steps)
        if len(result.steps) != len(steps):
            return f"{len(result.steps)} corrected steps for a trajectory of {len(steps)}"
        leak_free = must_be_leak_free(level)
        secrets = TrajectorySecrets(SecretIndex.build(privileged), trajectory, deadline.check) if leak_free else None
        for t, (corrected, step) in enumerate(zip(result.steps, steps)):
            deadline.check("checking the correction")
            problem = legality_error(corrected.action, list(step.candidates))
            if problem:
                return f"step {t}: {problem}"
            if secrets is not None:
                leaks = secrets.leaks(corrected.reason, t)
                if leaks:
                    return f"step {t}: the reason leaks {leaks[0].describe()}"
        if secrets is not None:
            leaks = secrets.leaks(result.summary, len(steps))
            if leaks:
                return f"the summary leaks {leaks[0].describe()}"
        return ""

    @staticmethod
    def _check_annotation(result: AnnotationResult, demonstration, privileged,
                          deadline: Deadline = NO_DEADLINE) -> str:
        if len(result.reasons) != len(demonstration.steps):
            return f"{len(result.reasons)} reasons for a demonstration of {len(demonstration.steps)} steps"
        secrets = TrajectorySecrets(SecretIndex.build(privileged), demonstration, deadline.check)
        for t, reason in enumerate(result.reasons):
            deadline.check("checking the annotation")
            leaks = secrets.leaks(reason, t)
            if leaks:
                return f"step {t}: the reason leaks {leaks[0].describe()}"
        return ""

    @staticmethod
    def _account(usage) -> None:
        if usage.prompt_tokens:
            TOKENS.labels("prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens:
            TOKENS.labels("completion").inc(usage.completion_tokens)
        if usage.cost_usd:
            COST.inc(usage.cost_usd)
