"""The oracle teacher over real gRPC on 200 failed household trajectories.

- following the teacher from every visited state wins (the corrected action at t, then the
  teacher's policy, executed in a real environment session);
- level 0 corrects exactly as the SEARCHER would and never reveals what the student has not seen;
- level 100 corrections are optimal: they lie on paths of the planner's optimal length.
"""

from __future__ import annotations

import pytest

from leap.v1 import common_pb2
from services.teacher.backends.oracle import OracleTeacher
from services.teacher.leak import SecretIndex, find_leaks
from services.teacher.levels import SEARCHER

ROLLOUT_LIMIT = 120


@pytest.fixture(scope="module")
def corrections(oracle_teacher, failed_trajectories):
    """Correction of every failed trajectory at levels 0, 50 and 100 (and 25, 75 for the first 50)."""
    out = {}
    for level in (0, 25, 50, 75, 100):
        chosen = failed_trajectories if level in (0, 50, 100) else failed_trajectories[:50]
        out[level] = [oracle_teacher.correct(trajectory, level=level) for trajectory in chosen]
    return out


def _play(environment, task: common_pb2.TaskRef, actions: list[str]):
    """A fresh session of `task` (no horizon in the way) after replaying `actions`."""
    sessions = environment.sessions
    reset = sessions.reset(task.env, task.task_id, horizon=1000)
    obs = reset.observation
    for action in actions:
        obs = sessions.step(reset.session_id, action)
    return reset.session_id, obs


def _follow_teacher(environment, experts, task, history: list[str], first: str, level: int) -> tuple[bool, int]:
    """Execute `first` after `history`, then the oracle's policy; (won, actions executed after history)."""
    session, obs = _play(environment, task, history)
    actions = list(history)
    try:
        action = first
        for executed in range(1, ROLLOUT_LIMIT + 1):
            obs = environment.sessions.step(session, action)
            actions.append(action)
            if obs.won:
                return True, executed
            if obs.done:
                return False, executed
            _, reply = OracleTeacher.advise(task, actions, level, experts)
            action = reply.next_action
        return False, ROLLOUT_LIMIT
    finally:
        environment.sessions.close(session)


def test_every_trajectory_is_corrected(corrections, failed_trajectories):
    for level, results in corrections.items():
        for trajectory, correction in zip(failed_trajectories, results):
            assert correction.ok, (level, correction.error)
            assert correction.teacher == "oracle" and correction.realizability_level == level
            assert len(correction.steps) == len(trajectory.steps)
            assert correction.summary and correction.usage.calls == 0 and correction.usage.cost_usd == 0
            for t, (step, corrected) in enumerate(zip(trajectory.steps, correction.steps)):
                assert corrected.index == t and corrected.original_action == step.action
                assert corrected.action in step.candidates
                assert corrected.reason
                assert corrected.is_corrected == (corrected.action.lower() != step.action.lower().rstrip("."))


@pytest.mark.parametrize("level", [0, 25, 50, 75])
def test_following_the_teacher_from_every_visited_state_wins(level, corrections, failed_trajectories,
                                                           environment, experts):
    results = corrections[level]
    checked = 0
    for trajectory, correction in zip(failed_trajectories, results):
        actions = [step.action for step in trajectory.steps]
        for t, corrected in enumerate(correction.steps):
            won, _ = _follow_teacher(environment, experts, trajectory.task, actions[:t], corrected.action, level)
            assert won, (trajectory.task.task_id, t, corrected.action)
            checked += 1
    assert checked == sum(len(tr.steps) for tr in failed_trajectories[:len(results)])


def test_level_0_corrects_as_the_searcher_and_reveals_nothing(corrections, failed_trajectories, experts):
    for trajectory, correction in zip(failed_trajectories, corrections[0]):
        actions = [step.action for step in trajectory.steps]
        for t, corrected in enumerate(correction.steps):
            searcher = experts.expert(trajectory.task, actions[:t], SEARCHER)
            assert corrected.action == searcher.next_action
            # The environment's own account of what is still hidden after actions[:t].
            hidden = experts.state(trajectory.task, actions[:t])
            index = SecretIndex.build(hidden)
            unseen_names = [s for s in index.secrets if not index.is_place(s)]
            assert not any(name in corrected.action for name in unseen_names), (corrected.action, unseen_names)
            assert find_leaks(corrected.reason, index, said=actions[:t + 1]) == [], corrected.reason
        final_hidden = SecretIndex.build(experts.state(trajectory.task, actions))
        assert find_leaks(correction.summary, final_hidden, said=actions) == [], correction.summary


@pytest.mark.parametrize("level", [25, 50])
def test_realizable_levels_reveal_nothing(level, corrections, failed_trajectories, experts):
    for trajectory, correction in zip(failed_trajectories, corrections[level]):
        actions = [step.action for step in trajectory.steps]
        for t, corrected in enumerate(correction.steps):
            index = SecretIndex.build(experts.state(trajectory.task, actions[:t]))
            assert find_leaks(corrected.reason, index, said=actions[:t + 1]) == [], corrected.reason


def test_level_100_corrections_are_optimal(corrections, failed_trajectories, environment, experts):
    for trajectory, correction in zip(failed_trajectories, corrections[100]):
        actions = [step.action for step in trajectory.steps]
        for t, corrected in enumerate(correction.steps):
            optimal = experts.state(trajectory.task, actions[:t]).optimal_actions
            won, length = _follow_teacher(environment, experts, trajectory.task, actions[:t], corrected.action, 100)
            assert won and length == len(optimal), (trajectory.task.task_id, t, length, len(optimal))
        assert "Hidden state:" in correction.summary


def test_reasons_explain_with_rationales_and_summaries_list_mistakes(corrections, failed_trajectories):
    summaries = " ".join(c.summary for c in corrections[50])
    for title in ("Invalid actions", "Repeated actions", "Wasted search"):
        assert title in summaries
    reasons = [s.reason for c in corrections[50] for s in c.steps]
    assert any("usually kept" in r for r in reasons)  # the prior searcher's common-sense rationale
    assert any("had no effect" in r for r in reasons)  # the student's invalid action, called out
    assert all("Hidden state" not in c.summary for c in corrections[50])
    # A reason says why; the ACTION line says what. With an expert rationale the reason does not
    # end by restating the action (a student would pay for those words at every step).
    with_rationale = [s for c in corrections[50] for s in c.steps if "usually kept" in s.reason]
    assert with_rationale and not any(s.reason.rstrip().endswith(f"{s.action}.") or "I should" in s.reason
                                      for s in with_rationale)
