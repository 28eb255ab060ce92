"""The teacher follows what the environment declares: its experts place the realizability levels, its
teacher profile (or the generic one) finds mistakes and picks the reason templates. No gRPC here."""

from __future__ import annotations

import pytest

from leap.v1 import common_pb2
from leap.v1 import environment_pb2 as env_pb
from services.runtime.errors import FailedPrecondition
from services.teacher.actions import INVALID, REPEATED, find_mistakes
from services.teacher.backends.oracle import OracleTeacher
from services.teacher.levels import LEVELS, PLANNER, PRIOR_SEARCHER, SEARCHER, expert_for_step
from services.teacher.profiles import GENERIC, profile_for, template_for
from services.teacher.profiles import household as household_profile
from services.teacher.service import TeacherService
from tests.teacher.fakes import FakeSource

GOLD = "find . -name '*.txt' -mtime -1"
GOLD_OUTPUT = "./notes/today.txt"


def bash_trajectory(actions, valid=None, outputs=None, env="intercode_bash") -> common_pb2.Trajectory:
    """A free-form trajectory: no candidates, the environment's outputs as observations."""
    valid = valid or [True] * len(actions)
    outputs = outputs or [f"output of {a}" for a in actions]
    steps = [common_pb2.Step(index=t, observation="$" if t == 0 else outputs[t - 1], action=a, action_valid=v,
                             next_observation=outputs[t])
             for t, (a, v) in enumerate(zip(actions, valid))]
    return common_pb2.Trajectory(task=common_pb2.TaskRef(env=env, task_id="train-3", split="train"),
                                 goal="List the text files changed in the last day.", task_type="nl2bash",
                                 steps=steps, done=True, truncated=True, agent="student")


def bash_state(experts=(env_pb.EXPERT_KIND_PLANNER,)) -> env_pb.PrivilegedState:
    return env_pb.PrivilegedState(task=common_pb2.TaskRef(env="intercode_bash", task_id="train-3", split="train"),
                                  goal="List the text files changed in the last day.", gold_command=GOLD,
                                  gold_output=GOLD_OUTPUT, secrets=[GOLD_OUTPUT], experts=list(experts))


# --- levels over the experts an environment offers ---------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
def test_a_planner_only_environment_is_corrected_by_the_planner_at_every_level(level):
    for t in range(20):
        assert expert_for_step(level, "intercode_bash", "train-3", t, [PLANNER]).expert == PLANNER


def test_without_a_prior_searcher_level_50_mixes_searcher_and_planner_stably():
    experts = [SEARCHER, PLANNER]
    assert {expert_for_step(0, "webshop", "train-1", t, experts).expert for t in range(40)} == {SEARCHER}
    assert {expert_for_step(100, "webshop", "train-1", t, experts).expert for t in range(40)} == {PLANNER}
    picks = [expert_for_step(50, "webshop", "train-1", t, experts).expert for t in range(200)]
    assert 60 < picks.count(PLANNER) < 140
    assert picks == [expert_for_step(50, "webshop", "train-1", t, experts).expert for t in range(200)]


def test_all_anchors_when_the_environment_does_not_say():
    assert expert_for_step(50, "household", "train-1", 0, []).expert == PRIOR_SEARCHER
    assert expert_for_step(50, "household", "train-1", 0, [SEARCHER, PRIOR_SEARCHER, PLANNER]).expert == PRIOR_SEARCHER


def test_an_environment_with_none_of_the_oracles_experts_is_a_failed_precondition():
    with pytest.raises(FailedPrecondition, match="offers none of the oracle teacher's experts"):
        expert_for_step(50, "odd", "t", 0, ["tutor"])


# --- profiles and templates --------------------------------------------------------------------
def test_profiles_by_environment_name():
    assert profile_for("household") is household_profile.PROFILE
    assert profile_for("alfworld") is household_profile.PROFILE
    for env in ("intercode_bash", "webshop", "textworld", "someone_elses_env", ""):
        assert profile_for(env) is GENERIC


def test_templates_fall_back_from_environment_to_family_to_default():
    assert template_for("oracle", "household", "reason") == "oracle/household/reason.j2"
    assert template_for("oracle", "alfworld", "reason") == "oracle/household/reason.j2"
    assert template_for("oracle", "webshop", "reason") == "oracle/default/reason.j2"
    assert template_for("oracle", "household", "summary") == "oracle/default/summary.j2"
    assert template_for("llm", "alfworld", "correct_system") == "llm/household/correct_system.j2"
    assert template_for("llm", "intercode_bash", "correct_system") == "llm/default/correct_system.j2"
    # A hostile environment name never becomes a path.
    assert template_for("oracle", "../../etc", "reason") == "oracle/default/reason.j2"


def test_generic_mistakes_are_invalid_and_repeated_only():
    traj = bash_trajectory(["ls", "ls", "cat nosuch", "pwd", "pwd"], valid=[True, True, False, True, True],
                           outputs=["a b", "a b", "cat: nosuch: No such file", "/", "/"])
    kinds = [(m.t, m.kind) for m in find_mistakes(traj)]
    assert kinds == [(1, REPEATED), (2, INVALID), (4, REPEATED)]
    # The household grammar would call "go to x" a walk; the generic profile sees only the repetition.
    assert GENERIC.find_mistakes(traj, ["apple 1"]) == find_mistakes(traj)


# --- the oracle on a free-form, planner-only environment ---------------------------------------
def planner_source(rationale="Files changed recently are found with find and -mtime, filtered by name."):
    return FakeSource(state=bash_state(), experts={"planner": (GOLD, rationale)})


@pytest.mark.parametrize("level", LEVELS)
def test_oracle_corrects_free_form_steps_with_the_planner(level):
    source = planner_source()
    traj = bash_trajectory(["ls", "ls", "cat notes"])
    result = TeacherService(OracleTeacher(), source).correct(traj, level=level)
    assert result.ok, result.error
    assert [s.action for s in result.steps] == [GOLD] * 3
    assert all(s.is_corrected and s.source == PLANNER for s in result.steps)
    assert result.steps[0].reason.startswith("Files changed recently are found with find")
    assert 'Doing "ls" again will not change anything.' in result.steps[1].reason
    assert {c[2] for c in source.calls if c[0] == "expert"} == {PLANNER}
    assert "Repeated actions: step 1" in result.summary


def test_oracle_without_a_rationale_names_only_the_action():
    result = TeacherService(OracleTeacher(), planner_source(rationale="")).correct(bash_trajectory(["ls"]), level=50)
    assert result.ok
    assert result.steps[0].reason == f'This is the next step towards the goal, so I should do "{GOLD}".'


def test_a_planner_rationale_that_quotes_the_gold_output_is_refused_below_75():
    leaky = planner_source(rationale=f"The answer is {GOLD_OUTPUT}, which find prints.")
    refused = TeacherService(OracleTeacher(), leaky).correct(bash_trajectory(["ls"]), level=50)
    assert not refused.ok and "leaks" in refused.error
    assert TeacherService(OracleTeacher(), leaky).correct(bash_trajectory(["ls"]), level=100).ok


def test_annotation_uses_the_planner_only_where_no_realizable_expert_exists():
    source = planner_source()
    demo = bash_trajectory([GOLD])
    demo.agent = "planner"
    result = TeacherService(OracleTeacher(), source).annotate(demo)
    assert result.ok and result.reasons[0].startswith("Files changed recently")
    # With a searcher on offer (household), the planner never explains a demonstration.
    household = FakeSource()
    from tests.teacher.fakes import small_trajectory
    TeacherService(OracleTeacher(), household).annotate(small_trajectory(["go to cabinet 1"]))
    assert PLANNER not in {c[2] for c in household.calls if c[0] == "expert"}
