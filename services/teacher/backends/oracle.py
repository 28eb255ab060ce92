"""The oracle teacher: the environment's own experts choose, Jinja2 templates explain.

At every step t of a trajectory the oracle asks the expert that the realizability level assigns to
(task, t) for its next action after the student's own actions[:t] (on-policy, DAgger-style), and
writes the reason from the expert's rationale and the templates in templates/oracle/. It is exact,
free and deterministic: the teacher for CI and the upper bound for the LLM teacher.
"""

from __future__ import annotations

import logging

from services.runtime.deadline import NO_DEADLINE
from services.teacher import templates
from services.teacher.actions import (
    INVALID,
    MISTAKE_KINDS,
    REPEATED,
    WASTED_SEARCH,
    WRONG_OBJECT,
    carried_object,
    find_mistakes,
    match_candidate,
    parse_action,
    same_action,
)
from services.teacher.backends.base import AnnotationJob, CorrectionJob
from services.teacher.levels import PRIOR_SEARCHER, SEARCHER, expert_for_step, must_be_leak_free
from services.teacher.privileged import PrivilegedSource
from services.teacher.types import AnnotationResult, CorrectedStep, CorrectionResult

log = logging.getLogger("leap.teacher.oracle")

_GROUP_TITLES = {
    INVALID: "Invalid actions",
    REPEATED: "Repeated actions",
    WRONG_OBJECT: "Wrong objects",
    WASTED_SEARCH: "Wasted search",
}
# Experts whose rationales explain an expert demonstration without privileged knowledge, in order.
_REALIZABLE_EXPERTS = (SEARCHER, PRIOR_SEARCHER)


class OracleTeacher:
    name = "oracle"
    model = "environment-experts"

    @staticmethod
    def advise(task, actions, level: int, source: PrivilegedSource, *, deadline=NO_DEADLINE):
        """The oracle's policy: (expert choice, expert reply) for the state after `actions` at `level`.

        Following it from any state is what the oracle teaches; tests roll it out to check that it wins."""
        choice = expert_for_step(level, task.env, task.task_id, len(actions))
        return choice, source.expert(task, list(actions), choice.expert, deadline=deadline)

    def correct(self, job: CorrectionJob, source: PrivilegedSource) -> CorrectionResult:
        trajectory = job.trajectory
        task = trajectory.task
        steps = list(trajectory.steps)
        actions = [step.action for step in steps]
        mistakes = find_mistakes(trajectory, job.privileged.essential_objects)
        first_mistake = {}
        for mistake in mistakes:
            first_mistake.setdefault(mistake.t, mistake.kind)
        corrected_steps: list[CorrectedStep] = []
        for t, step in enumerate(steps):
            job.deadline.check(f"the correction of step {t}")
            choice, reply = self.advise(task, actions[:t], job.level, source, deadline=job.deadline)
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
            reason = templates.render_prose(
                "oracle/reason.j2",
                action=parse_action(action),
                student=parse_action(step.action),
                student_action=step.action,
                corrected=is_corrected,
                mistake=first_mistake.get(t, ""),
                rationale=reply.rationale,
                holding=carried_object(steps, t),
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
            "oracle/summary.j2",
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
        reasons: list[str] = []
        for t, step in enumerate(steps):
            job.deadline.check(f"the annotation of step {t}")
            rationale = ""
            for expert in _REALIZABLE_EXPERTS:
                reply = source.expert(task, actions[:t], expert, deadline=job.deadline)
                if reply.next_action and same_action(reply.next_action, step.action):
                    rationale = reply.rationale
                    break
            reasons.append(templates.render_prose(
                "oracle/reason.j2",
                action=parse_action(step.action),
                student=parse_action(step.action),
                student_action=step.action,
                corrected=False,
                mistake="",
                rationale=rationale,
                holding=carried_object(steps, t),
                may_reveal=False,
                goal=demo.goal,
            ))
        return AnnotationResult(ok=True, reasons=reasons)

    def close(self) -> None:
        pass

