"""Unit tests of the teacher's logic without gRPC: levels, actions, parsing, validation, LLM retries."""

from __future__ import annotations

import json

import pytest

from services.runtime.errors import InvalidArgument, NotFound
from services.teacher.actions import INVALID, REPEATED, WASTED_SEARCH, WRONG_OBJECT, legality_error, normalize_action
from services.teacher.profiles.household import find_mistakes, parse_action
from services.teacher.backends.llm import LlmSettings, LlmTeacher, Pricing
from services.teacher.backends.oracle import OracleTeacher
from services.teacher.leak import SecretIndex
from services.teacher.levels import LEVELS, PLANNER, PRIOR_SEARCHER, SEARCHER, expert_for_step
from services.teacher.service import TeacherService
from services.teacher.validation import AnswerFormatError, first_json_object, validate_correction
from tests.teacher.fakes import PRIVILEGED, FakeSource, ScriptedChat, small_trajectory


def answer(actions, reasons=None, summary="The student searched the cabinets first.") -> str:
    reasons = reasons or ["Fruit is usually kept cold, so I should check the cold places first."] * len(actions)
    return json.dumps({"summary": summary,
                       "steps": [{"t": t, "reason": r, "action": a} for t, (a, r) in enumerate(zip(actions, reasons))]})


# --- levels -------------------------------------------------------------------------------------
def test_anchor_levels_use_one_expert():
    for t in range(50):
        assert expert_for_step(0, "household", "train-1", t).expert == SEARCHER
        assert expert_for_step(50, "household", "train-1", t).expert == PRIOR_SEARCHER
        assert expert_for_step(100, "household", "train-1", t).expert == PLANNER


def test_intermediate_levels_mix_their_neighbours_stably():
    picks25 = [expert_for_step(25, "household", f"train-{i}", t).expert for i in range(40) for t in range(10)]
    picks75 = [expert_for_step(75, "household", f"train-{i}", t).expert for i in range(40) for t in range(10)]
    assert set(picks25) == {SEARCHER, PRIOR_SEARCHER}
    assert set(picks75) == {PRIOR_SEARCHER, PLANNER}
    assert 0.35 < picks25.count(PRIOR_SEARCHER) / len(picks25) < 0.65
    assert 0.35 < picks75.count(PLANNER) / len(picks75) < 0.65
    again = [expert_for_step(25, "household", f"train-{i}", t).expert for i in range(40) for t in range(10)]
    assert again == picks25


@pytest.mark.parametrize("level", [-1, 10, 60, 101])
def test_unknown_levels_are_invalid(level):
    with pytest.raises(InvalidArgument, match="0, 25, 50, 75, 100"):
        expert_for_step(level, "household", "t", 0)


# --- actions and mistakes -----------------------------------------------------------------------
def test_action_grammar_and_legality():
    assert normalize_action("  Go to  Fridge 1. ") == "go to fridge 1"
    assert parse_action("take apple 1 from countertop 2").verb == "take"
    assert parse_action("move apple 1 to diningtable 1").place == "diningtable 1"
    assert parse_action("cool apple 1 with fridge 1").obj == "apple 1"
    assert legality_error("go to fridge 1", ["go to fridge 1"]) is None
    assert "not one of" in legality_error("go to the moon", ["go to fridge 1"])
    assert legality_error("ls -la", []) is None
    assert legality_error("", []) == "the action is empty"


def test_mistakes_are_found():
    traj = small_trajectory(["go to cabinet 1", "go to cabinet 1", "take apple 1 from cabinet 1", "examine bread 1"])
    kinds = {(m.t, m.kind) for m in find_mistakes(traj, PRIVILEGED.essential_objects)}
    assert (1, REPEATED) in kinds
    assert (2, INVALID) in kinds


def test_wasted_search_and_wrong_object():
    from leap.v1 import common_pb2

    obs = ["kitchen", "You arrive at countertop 1. On the countertop 1, you see a bread 1.",
           "You arrive at cabinet 1. The cabinet 1 is closed.",
           "You arrive at countertop 1. On the countertop 1, you see a bread 1.",
           "You pick up the bread 1 from the countertop 1.", "done"]
    actions = ["go to countertop 1", "go to cabinet 1", "go to countertop 1", "take bread 1 from countertop 1"]
    steps = [common_pb2.Step(index=t, observation=obs[t], action=a, action_valid=True, next_observation=obs[t + 1])
             for t, a in enumerate(actions)]
    traj = common_pb2.Trajectory(steps=steps)
    kinds = {(m.t, m.kind) for m in find_mistakes(traj, ["apple 1"])}
    assert kinds == {(2, WASTED_SEARCH), (3, WRONG_OBJECT)}


# --- parsing and validation ---------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    '{"a": 1}', 'Sure! ```json\n{"a": 1}\n``` hope it helps', 'prefix {"a": 1,} suffix {"b": 2}',
    '{"a": 1, "s": "braces } inside { strings"}',
])
def test_first_json_object_is_tolerant(text):
    assert first_json_object(text)["a"] == 1


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("no json here", "no JSON object"), ('{"summary": "cut off', "not closed"),
    ("{'single': 'quotes'}", "not valid JSON"),
])
def test_first_json_object_explains_failures(text, message):
    with pytest.raises(AnswerFormatError, match=message):
        first_json_object(text)


def test_validation_catches_length_legality_and_leaks():
    traj = small_trajectory()
    index = SecretIndex.build(PRIVILEGED)
    good = validate_correction(json.loads(answer(["go to fridge 1", "go to fridge 1"])), traj, index, leak_free=True)
    assert good.ok and [s.is_corrected for s in good.steps] == [True, True]
    short = validate_correction(json.loads(answer(["go to fridge 1"])), traj, index, leak_free=True)
    assert "needs exactly 2 entries" in short.message()
    illegal = validate_correction(json.loads(answer(["go to fridge 1", "fly away"])), traj, index, leak_free=True)
    assert "t=1: 'fly away' is not one of the step's candidate actions" in illegal.message()
    leaky = json.loads(answer(["go to fridge 1", "go to fridge 1"],
                              ["The apple is in fridge 1.", "Fruit is kept cold."]))
    assert "t=0: the reason reveals 'fridge 1'" in validate_correction(leaky, traj, index, leak_free=True).message()
    assert validate_correction(leaky, traj, index, leak_free=False).ok


def test_a_free_form_action_may_not_write_a_hidden_value_and_text_must_be_unicode():
    """A shell step has no candidates: the corrected action is the model's own text, so `echo 1729`
    would hand the student the gold output the reason may not name. And JSON lets a lone surrogate
    through ("\\ud800"), which no protobuf message can carry: both are answers to retry."""
    from leap.v1 import environment_pb2 as env_pb

    bash = env_pb.PrivilegedState(secrets=["1729"], facts=["the gold output is 1729"])
    index = SecretIndex.build(bash)
    traj = small_trajectory(actions=("ls", "cat notes.txt"))
    for step in traj.steps:
        del step.candidates[:]
    cheat = validate_correction(json.loads(answer(["ls", "echo 1729"], ["List the files.", "Print the answer."])),
                                traj, index, leak_free=True)
    assert "t=1: the action writes '1729'" in cheat.message() and not cheat.steps
    fair = validate_correction(json.loads(answer(["ls", "wc -l notes.txt"], ["List the files.", "Count the lines."])),
                               traj, index, leak_free=True)
    assert fair.ok, fair.message()
    lone = json.loads(answer(["ls", "ls"], ["List the files.", "Count."]).replace("Count.", "Count \\ud800."))
    assert '"reason" holds a lone surrogate' in validate_correction(lone, traj, index, leak_free=True).message()
    lone = json.loads(answer(["ls", "ls"], summary="Bad summary.").replace("Bad", "Bad \\udfff"))
    assert '"summary" holds a lone surrogate' in validate_correction(lone, traj, index, leak_free=False).message()


def test_validation_returns_candidates_verbatim():
    traj = small_trajectory()
    index = SecretIndex.build(PRIVILEGED)
    result = validate_correction(json.loads(answer(["Go To Fridge 1.", "go to cabinet 2"])), traj, index,
                                 leak_free=True)
    assert [s.action for s in result.steps] == ["go to fridge 1", "go to cabinet 2"]
    assert [s.is_corrected for s in result.steps] == [True, False]


# --- the LLM teacher's retry loop (scripted model) -----------------------------------------------
def llm_service(answers, **settings):
    chat = ScriptedChat(answers)
    teacher = LlmTeacher(chat, settings=LlmSettings(**settings), pricing=Pricing(0.5, 1.5))
    return TeacherService(teacher, FakeSource()), chat


def test_llm_valid_first_answer():
    service, chat = llm_service([answer(["go to fridge 1", "go to fridge 1"])])
    result = service.correct(small_trajectory(), level=50)
    assert result.ok and result.attempts == 1
    assert result.usage.calls == 1 and result.usage.prompt_tokens == 100 and result.usage.completion_tokens == 20
    assert result.usage.cost_usd == pytest.approx(100 / 1000 * 0.5 + 20 / 1000 * 1.5)
    prompt = chat.conversations[0][1]["content"]
    assert "apple 1 is in fridge 1" in prompt and "go to cabinet 2" in prompt


def test_llm_retry_feeds_the_problems_back():
    service, chat = llm_service(["I think the student should go to the fridge.",
                                 answer(["go to fridge 1", "open the fridge"]),
                                 answer(["go to fridge 1", "go to fridge 1"])], default_max_retries=3)
    result = service.correct(small_trajectory(), level=50)
    assert result.ok and result.attempts == 3 and result.usage.calls == 3
    second, third = chat.conversations[1], chat.conversations[2]
    assert second[-2]["role"] == "assistant" and "no JSON object" in second[-1]["content"]
    assert "'open the fridge' is not one of the step's candidate actions" in third[-1]["content"]
    assert len(third) == 4  # the prompt stays bounded: original request + last answer + problems


def test_llm_failure_after_retries_is_a_result_not_an_error():
    service, chat = llm_service(["nonsense"])
    result = service.correct(small_trajectory(), level=50, max_retries=2)
    assert not result.ok and result.attempts == 3 and result.usage.calls == 3
    assert result.error.startswith("no valid correction after 3 attempt(s)") and not result.steps


def test_llm_leak_triggers_a_retry_below_75_only():
    leaky = answer(["go to fridge 1", "go to fridge 1"], ["The apple 1 is in fridge 1.", "Go get it."])
    service, _ = llm_service([leaky, answer(["go to fridge 1", "go to fridge 1"])])
    result = service.correct(small_trajectory(), level=50)
    assert result.ok and result.attempts == 2
    service, _ = llm_service([leaky])
    result = service.correct(small_trajectory(), level=75)
    assert result.ok and result.attempts == 1 and "fridge 1" in result.steps[0].reason


def test_llm_prompt_shows_only_what_the_level_allows():
    cases = [(0, False, False), (25, True, False), (50, True, True), (100, True, True)]
    for level, shows_objects, shows_facts in cases:
        service, chat = llm_service([answer(["go to fridge 1", "go to fridge 1"])])
        service.correct(small_trajectory(), level=level)
        prompt = chat.conversations[0][0]["content"] + chat.conversations[0][1]["content"]
        assert ("objects the task needs" in prompt) == shows_objects, level
        assert ("apple 1 is in fridge 1" in prompt) == shows_facts, level
        assert f"Realizability {level}%" in prompt


def test_llm_annotation():
    service, chat = llm_service(['{"steps": [{"t": 0, "reason": "I start with the nearest place."}, '
                                 '{"t": 1, "reason": "Cabinet 1 was closed and empty-handed, I move on."}]}'])
    result = service.annotate(small_trajectory())
    assert result.ok and len(result.reasons) == 2


# --- the service's own checks ---------------------------------------------------------------------
def test_bad_requests():
    service = TeacherService(OracleTeacher(), FakeSource(), max_steps=3)
    from leap.v1 import common_pb2

    with pytest.raises(InvalidArgument, match="no steps"):
        service.correct(common_pb2.Trajectory(task=PRIVILEGED.task), level=0)
    with pytest.raises(InvalidArgument, match="more than this teacher accepts"):
        service.correct(small_trajectory(["look"] * 4), level=0)
    with pytest.raises(InvalidArgument, match="realizability_level 30"):
        service.correct(small_trajectory(), level=30)
    with pytest.raises(NotFound, match="unknown task"):
        service.correct(small_trajectory(task_id="train-99999"), level=0)


def test_oracle_with_scripted_experts_and_the_final_leak_check():
    source = FakeSource()
    result = TeacherService(OracleTeacher(), source).correct(small_trajectory(), level=50)
    assert result.ok, result.error
    assert [s.action for s in result.steps] == ["go to fridge 1", "go to fridge 1"]
    assert "Fruit is usually kept cold" in result.steps[0].reason
    assert [c[2] for c in source.calls if c[0] == "expert"] == [PRIOR_SEARCHER, PRIOR_SEARCHER]
    # A planner rationale that names the hidden place is fine at 100 ...
    assert TeacherService(OracleTeacher(), FakeSource()).correct(small_trajectory(), level=100).ok
    # ... and refused if it ever came out of a realizable expert.
    leaky = FakeSource(experts={"prior_searcher": ("go to fridge 1", "The apple 1 is in fridge 1.")})
    refused = TeacherService(OracleTeacher(), leaky).correct(small_trajectory(), level=50)
    # The refusal says which step leaked, never the secret itself (the message leaves the teacher).
    assert not refused.ok and "correction refused: step 0: the reason leaks '[hidden]'" in refused.error
    assert "fridge" not in refused.error.lower()


@pytest.mark.parametrize("level", LEVELS)
def test_oracle_summary_lists_mistakes(level):
    traj = small_trajectory(["go to cabinet 1", "go to cabinet 1", "take apple 1 from cabinet 1"])
    result = TeacherService(OracleTeacher(), FakeSource()).correct(traj, level=level)
    assert result.ok
    assert "Repeated actions: step 1" in result.summary and "Invalid actions: step 2" in result.summary
    assert ("apple 1 is in fridge 1" in result.summary) == (level == 100)
