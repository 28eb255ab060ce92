"""The oracle teacher: the environment's own experts choose, Jinja2 templates explain.

At every step t of a trajectory the oracle asks the expert that the realizability level assigns to
(task, t), among the experts the environment offers, for its next action after the student's own
actions[:t] (on-policy, DAgger-style), and writes the reason from the expert's rationale and the
templates of the environment's teacher profile (services.teacher.profiles: the household/ALFWorld
grammar, or the generic profile every environment satisfies). It is exact, free and deterministic:
the teacher for CI and the upper bound for the LLM teacher.
"""

from __future__ import annotations

import logging

from services.runtime.deadline import NO_DEADLINE
from services.runtime.experts import PLANNER, PRIOR_SEARCHER, SEARCHER
from services.teacher import templates
from services.teacher.actions import INVALID, MISTAKE_KINDS, REPEATED, WASTED_SEARCH, WRONG_OBJECT, match_candidate, same_action
from services.teacher.backends.base import AnnotationJob, BackendSpec, CorrectionJob
from services.teacher.levels import expert_for_step, must_be_leak_free
from services.teacher.privileged import PrivilegedSource, offered_experts
from services.teacher.profiles import profile_for, template_for
from services.teacher.types import AnnotationResult, CorrectedStep, CorrectionResult

log = logging.getLogger("leap.teacher.oracle")

_GROUP_TITLES = {
    INVALID: "Invalid actions",
    REPEATED: "Repeated actions",
    WRONG_OBJECT: "Wrong objects",
    WASTED_SEARCH: "Wasted search",
}
# Experts whose rationales explain a demonstration, in order of preference: the realizable ones (they
# use only what the agent observed), then the planner for environments that have no other.
_ANNOTATING_EXPERTS = (SEARCHER, PRIOR_SEARCHER, PLANNER)


class OracleTeacher:
    name = "oracle"
    model = "environment-experts"

    @staticmethod
    def advise(task, actions, level: int, source: PrivilegedSource, *, available=(), deadline=NO_DEADLINE):
        """The oracle's policy: (expert choice, expert reply) for the state after `actions` at `level`,
        among the `available` experts of the environment (empty: all).

        Following it from any state is what the oracle teaches; tests roll it out to check that it wins."""
        choice = expert_for_step(level, task.env, task.task_id, len(actions), available)
        return choice, source.expert(task, list(actions), choice.expert, deadline=deadline)

    @staticmethod
    def _reason(job_env: str, steps, t: int, action: str, student_action: str, **context) -> str:
        profile = profile_for(job_env)
        return templates.render_prose(
            template_for("oracle", job_env, "reason"),
            action_text=action, student_action=student_action,
            **(context | profile.reason_context(steps, t, action, student_action)),
        )

    def correct(self, job: CorrectionJob, source: PrivilegedSource) -> CorrectionResult:
        trajectory = job.trajectory
        task = trajectory.task
        steps = list(trajectory.steps)
        actions = [step.action for step in steps]
        available = offered_experts(job.privileged)
        mistakes = profile_for(task.env).find_mistakes(trajectory, job.privileged.essential_objects)
        first_mistake = {}
        for mistake in mistakes:
            first_mistake.setdefault(mistake.t, mistake.kind)
        corrected_steps: list[CorrectedStep] = []
        for t, step in enumerate(steps):
            job.deadline.check(f"the correction of step {t}")
            choice, reply = self.advise(task, actions[:t], job.level, source, available=available,
                                        deadline=job.deadline)
            if reply.already_won or not reply.next_action:
                return CorrectionResult.failure(
                    self.name, job.level,
                    f"the {choice.expert} has no action at step {t} (the replayed episode is already "
                    f"{'won' if reply.already_won else 'over'}): the trajectory continues past the end of its episode",
                )
            action = match_candidate(reply.next_action, step.candidates) if step.candidates else reply.next_action
            if action is None:
                return CorrectionResult.failure(
                    self.name, job.level,
                    f"the {choice.expert}'s action {reply.next_action!r} at step {t} is not among the step's "
                    "candidates: the trajectory does not replay to what was recorded (another task, seed or "
                    "environment version?)",
                )
            is_corrected = not same_action(action, step.action)
            reason = self._reason(
                task.env, steps, t, action, step.action,
                corrected=is_corrected,
                mistake=first_mistake.get(t, ""),
                rationale=reply.rationale,
                may_reveal=not must_be_leak_free(job.level),
                goal=trajectory.goal,
            )
            corrected_steps.append(CorrectedStep(
                index=t,
                reason=reason, action=action, is_corrected=is_corrected,
                original_action=step.action, original_reason=step.reason, source=choice.expert,
            ))
        summary = self._summary(job, mistakes, corrected_steps)
        return CorrectionResult(ok=True, teacher=self.name, realizability_level=job.level,
                                summary=summary, steps=corrected_steps)

    def _summary(self, job: CorrectionJob, mistakes, corrected_steps) -> str:
        trajectory = job.trajectory
        groups = [(kind, _GROUP_TITLES[kind], [m for m in mistakes if m.kind == kind]) for kind in MISTAKE_KINDS]
        return templates.render_prose(
            template_for("oracle", trajectory.task.env, "summary"),
            goal=trajectory.goal or job.privileged.goal,
            steps=len(trajectory.steps),
            won=trajectory.won,
            truncated=trajectory.truncated,
            corrected=sum(1 for s in corrected_steps if s.is_corrected),
            level=job.level,
            groups=groups,
            hidden_facts=list(job.privileged.facts) if job.level == 100 else [],
        )

    def annotate(self, job: AnnotationJob, source: PrivilegedSource) -> AnnotationResult:
        demo = job.demonstration
        task = demo.task
        steps = list(demo.steps)
        actions = [step.action for step in steps]
        available = offered_experts(job.privileged)
        experts = [e for e in _ANNOTATING_EXPERTS if not available or e in available]
        # The planner explains only where no realizable expert exists: its rationales must then be
        # written without hidden facts (the service's leak check holds every annotation to that).
        if any(e != PLANNER for e in experts):
            experts = [e for e in experts if e != PLANNER]
        reasons: list[str] = []
        for t, step in enumerate(steps):
            job.deadline.check(f"the annotation of step {t}")
            rationale = ""
            for expert in experts:
                reply = source.expert(task, actions[:t], expert, deadline=job.deadline)
                if reply.next_action and same_action(reply.next_action, step.action):
                    rationale = reply.rationale
                    break
            reasons.append(self._reason(
                task.env, steps, t, step.action, step.action,
                corrected=False,
                mistake="",
                rationale=rationale,
                may_reveal=False,
                goal=demo.goal,
            ))
        return AnnotationResult(ok=True, reasons=reasons)

    def close(self) -> None:
        pass


SPEC = BackendSpec(name="oracle", help="the environment's experts (exact, free)",
                   create=lambda options, config: OracleTeacher())
