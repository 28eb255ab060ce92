"""Prompt rendering and output parsing (no model; the tokenizer only where token counts matter)."""

from __future__ import annotations

import inspect

import pytest

from leap.v1 import environment_pb2, student_pb2
from services.student import prompts
from services.student.prompts import (
    DEFAULT_HISTORY_WINDOW,
    action_line_complete,
    chat_prompt,
    format_target,
    match_candidate,
    parse_for_env,
    parse_output,
    render_messages,
)

CANDS = ["go to cabinet 1", "go to cabinet 10", "go to fridge 1", "open fridge 1", "take apple 1 from fridge 1", "look"]


def household(history=(), **kw):
    args = dict(env="household", goal="Your task is to: put a clean apple in fridge.", history=list(history),
                observation="You arrive at fridge 1. The fridge 1 is closed.", candidates=CANDS)
    args.update(kw)
    return render_messages(**args)


# -- rendering -----------------------------------------------------------------------------------

def test_prompt_shape_follows_leap():
    history = [("You are in the middle of a room.", "go to fridge 1")]
    system, user = household(history)
    assert system["role"] == "system" and user["role"] == "user"
    assert system["content"].startswith("You are a household robot")
    for rule in ('"go to <place>"', "verbatim", '"Nothing happens." means your last action was invalid',
                 "not searched yet", "do not repeat", "REASON:", "ACTION:"):
        assert rule in system["content"]
    text = user["content"]
    # The task line (ALFWorld's own "Your task is to:" prefix is not doubled), the notes, history,
    # observation, and the candidates other than "go to <place>" (the notes name the places).
    assert text.startswith("Your task is: put a clean apple in fridge.\nHolding: nothing\nTask objects seen: none yet\n"
                           "Searched: nothing yet\n"
                           "Not searched yet: fridge 1, cabinet 1, cabinet 10\nHistory:\n")
    assert "Observation: You are in the middle of a room.\nAction: go to fridge 1\n" in text
    assert "Current observation: You arrive at fridge 1. The fridge 1 is closed.\nOther actions:\n" in text
    assert text.endswith("\n".join(c for c in CANDS if not c.startswith("go to ")))
    assert text.index("Not searched yet:") < text.index("History:") < text.index("Current observation:") \
        < text.index("Other actions:")


def test_rendering_is_deterministic_and_byte_stable():
    history = [("obs %d" % i, "look") for i in range(3)]
    assert household(history) == household(history)
    # Tuples, mappings and HistoryEntry messages render the same.
    as_maps = [{"observation": o, "action": a} for o, a in history]
    as_pb = [student_pb2.HistoryEntry(observation=o, action=a) for o, a in history]
    assert household(history) == household(as_maps) == household(as_pb)
    # No stray blank lines or trailing spaces: the text is training data.
    for message in household(history):
        assert "\n\n" not in message["content"]
        assert all(line == line.rstrip() for line in message["content"].split("\n"))


def test_history_window_keeps_the_latest_turns():
    history = [(f"observation {i}", f"action {i}") for i in range(10)]
    text = household(history, history_window=3)[1]["content"]
    assert "observation 6" not in text
    assert [f"observation {i}" in text for i in (7, 8, 9)] == [True] * 3
    assert "History:" not in household(history, history_window=0)[1]["content"]
    assert "observation 0" in household(history, history_window=-1)[1]["content"]
    # Free-form environments: a caller that trims the history itself gets the same bytes.
    bash = [(f"out {i}", f"cmd {i}") for i in range(10)]
    assert render_messages("bash", "g", bash, "o", [], history_window=3) \
        == render_messages("bash", "g", bash[-3:], "o", [], history_window=3)
    assert render_messages("bash", "g", bash, "o", []) \
        == render_messages("bash", "g", bash[-DEFAULT_HISTORY_WINDOW:], "o", [])


def test_past_reasons_are_never_shown():
    history = [{"observation": "You see a fridge 1.", "action": "go to fridge 1", "reason": "SECRET REASON"}]
    assert "SECRET REASON" not in str(household(history))


def test_no_privileged_field_can_enter():
    """render_messages only takes agent-visible inputs: there is no parameter for privileged state."""
    params = set(inspect.signature(render_messages).parameters)
    assert params == {"env", "goal", "history", "observation", "candidates", "history_window"}
    privileged = set(environment_pb2.PrivilegedState.DESCRIPTOR.fields_by_name)
    assert not (params & (privileged - {"goal"}))
    # The ActItem contract (all the student server ever receives) has no privileged field either.
    act_fields = set(student_pb2.ActItem.DESCRIPTOR.fields_by_name)
    assert not (act_fields & (privileged - {"goal"}))
    with pytest.raises(TypeError):
        render_messages("household", "g", [], "o", [], optimal_actions=["take apple 1 from fridge 1"])  # type: ignore[call-arg]
    # A history entry carrying extra (privileged) keys contributes only its observation and action.
    leaky = [{"observation": "You see a fridge 1.", "action": "go to fridge 1", "secrets": "apple 1 is in fridge 1"}]
    assert "apple 1 is in fridge 1" not in str(household(leaky))


def test_generic_template_for_free_form_environments():
    system, user = render_messages("bash", "Count the files in /testbed.", [("ls", "ls /testbed")],
                                   "a.txt b.txt", [])
    assert "bash shell" in system["content"] and "one bash command" in system["content"]
    assert "Candidate actions" not in user["content"]
    assert user["content"].startswith("Your task is: Count the files in /testbed.")
    system, user = render_messages("webshop", "i need red shoes under 50 dollars", [], "WebShop [SEP] Search",
                                   ["click[item 1]", "click[next >]"])
    assert "search[keywords]" in system["content"]
    assert user["content"].endswith("Candidate actions:\nclick[item 1]\nclick[next >]")
    # alfworld shares the household template; unknown environments get the generic one.
    assert render_messages("alfworld", "g", [], "o", ["look"]) == render_messages("household", "g", [], "o", ["look"])
    assert "text environment" in render_messages("somethingelse", "g", [], "o", [])[0]["content"]


def test_prompt_token_count_is_compact_and_chat_template_round_trips():
    from transformers import AutoTokenizer

    from services.models import ensure_smollm2_folder

    tokenizer = AutoTokenizer.from_pretrained(ensure_smollm2_folder())
    history = [("You are in the middle of a room. Looking quickly around you, you see a cabinet 2, a cabinet 1, "
                "a countertop 1, a fridge 1 and a sinkbasin 1.", "go to countertop 1"),
               ("On the countertop 1, you see a knife 1.", "go to fridge 1")]
    messages = household(history)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    templated = templated["input_ids"] if hasattr(templated, "keys") else templated
    assert list(ids) == list(templated)
    assert text.endswith("<|im_start|>assistant\n")
    # The system message is cached while serving; what each step prefills is the rest.
    system_ids = tokenizer(messages[0]["content"], add_special_tokens=False)["input_ids"]
    assert len(system_ids) < 110
    assert len(ids) - len(system_ids) < 210  # 203 with the four note lines


# -- targets and parsing -------------------------------------------------------------------------

def test_format_target_round_trips_through_the_parser():
    target = format_target("The fridge\nkeeps food cold.", "open fridge 1")
    assert target == "REASON: The fridge keeps food cold.\nACTION: open fridge 1"
    parsed = parse_output(target, CANDS)
    assert (parsed.reason, parsed.action, parsed.valid, parsed.raw) == (
        "The fridge keeps food cold.", "open fridge 1", True, target)


@pytest.mark.parametrize("text, action", [
    ("REASON: cold food.\nACTION: open fridge 1", "open fridge 1"),
    ("reason: cold food\naction: Open Fridge 1", "open fridge 1"),                 # case
    ("**Reason:** cold food\n**Action:** `open fridge 1`", "open fridge 1"),       # markdown
    ("### REASON\n- cold food\n### ACTION: \"open fridge 1\"", "open fridge 1"),   # headings, quotes
    ("ACTION: open fridge 1.", "open fridge 1"),                                    # missing REASON, period
    ("REASON: x ACTION: open fridge 1", "open fridge 1"),                           # one line
    ("REASON: x\nACTION:\nopen fridge 1\nObservation: ...", "open fridge 1"),       # value on the next line
    ("REASON: x\nACTION: I will open fridge 1 now", "open fridge 1"),               # extra words
    ("REASON: x\nACTION: go to cabinet 10", "go to cabinet 10"),                    # longest candidate wins
    ("Sure!\nREASON: x\nACTION: take apple 1 from fridge 1\nREASON: again\nACTION: look",
     "take apple 1 from fridge 1"),                                                 # first action counts
    ("```\nREASON: x\nACTION: look\n```", "look"),                                  # code fence
    ("open fridge 1", "open fridge 1"),                                             # bare candidate line
])
def test_tolerant_parsing_matches_candidates(text, action):
    parsed = parse_output(text, CANDS)
    assert parsed.valid, parsed
    assert parsed.action == action
    assert parsed.raw == text


def test_reason_is_extracted_without_labels_or_markdown():
    parsed = parse_output("**REASON:** The apple may be cold.\n\n**ACTION:** open fridge 1", CANDS)
    assert parsed.reason == "The apple may be cold."


@pytest.mark.parametrize("text", [
    "", "   ", "I don't know.", "REASON: thinking...", "ACTION: fly to the moon", "ACTION:",
    "REASON: x\nACTION: go to cabinet", "\x00\x01<|im_end|>", "ACTION: " + "x" * 10000,
])
def test_malformed_output_is_an_invalid_action_not_an_exception(text):
    parsed = parse_output(text, CANDS)
    assert parsed.valid is False
    assert parsed.raw == text


def test_ambiguous_containment_is_not_guessed():
    assert match_candidate("go to fridge 1 or open fridge 1", ["go to fridge 1", "open fridge 1"]) is None
    assert match_candidate("go to cabinet 1", ["go to cabinet 10"]) is None


def test_free_form_actions():
    bash = parse_for_env("bash", "REASON: list files\nACTION: ls -la /testbed | wc -l", [])
    assert bash.valid and bash.action == "ls -la /testbed | wc -l"
    assert parse_for_env("bash", "REASON: here\nACTION: ls .", []).action == "ls ."       # not a sentence period
    assert parse_for_env("bash", "REASON: x\nACTION: cat notes.txt.", []).action == "cat notes.txt"
    assert not parse_for_env("bash", "I would list the files", []).valid                  # no ACTION label
    shop = parse_for_env("webshop", "REASON: search first\nACTION: search[red shoes]", ["click[item 1]"])
    assert shop.valid and shop.action == "search[red shoes]"
    assert parse_for_env("webshop", "ACTION: click[item 1]", ["click[item 1]"]).valid
    assert not parse_for_env("webshop", "ACTION: buy it now", ["click[item 1]"]).valid
    assert not parse_for_env("household", "ACTION: jump", CANDS).valid


def test_action_line_complete_marks_where_decoding_may_stop():
    assert not action_line_complete("REASON: the fridge")
    assert not action_line_complete("REASON: the fridge\nACTION: open fri")
    assert not action_line_complete("REASON: the fridge\nACTION: open fridge 1")   # newline not yet written
    assert action_line_complete("REASON: the fridge\nACTION: open fridge 1\n")
    assert action_line_complete("**Action:** look\n")
    assert not action_line_complete("ACTION:\n")
    assert action_line_complete("ACTION:\nlook\n")


def test_chat_prompt_folds_the_system_message_for_templates_without_one():
    class NoSystemTemplate:
        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            if any(m["role"] == "system" for m in messages):
                raise ValueError("System role not supported")
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    messages = household()
    text = chat_prompt(NoSystemTemplate(), messages)
    assert text == f"<user>{messages[0]['content']}\n\n{messages[1]['content']}<assistant>"


def test_prompts_module_is_torch_free():
    source = inspect.getsource(prompts)
    assert "import torch" not in source and "transformers" not in source.split('"""', 2)[2]


def _household_walk(actions):
    """(goal, steps) of a real household episode: steps[t] = (history before t, observation, candidates)."""
    from services.environment.backends.household import HouseholdBackend
    from services.environment.service import EnvironmentSessions

    sessions = EnvironmentSessions({"household": HouseholdBackend(valid_seen_tasks=4)})
    reset = sessions.reset("household", task_id="train-00001")
    obs, history, steps = reset.observation, [], []
    for action in actions:
        steps.append((list(history), obs.text, list(obs.candidates)))
        history.append((obs.text, action))
        obs = sessions.step(reset.session_id, action)
    steps.append((list(history), obs.text, list(obs.candidates)))
    return reset.task.goal, steps


def test_prompt_state_keys_repeat_when_every_later_prompt_would_repeat():
    goal, steps = _household_walk(["go to fridge 1", "go to cabinet 1", "go to fridge 1", "go to cabinet 1",
                                   "go to fridge 1"])

    def key(t, window=1):
        history, observation, candidates = steps[t]
        return prompts.prompt_state_key("household", goal, history, observation, candidates, history_window=window)

    def prompt(t, window=1):
        history, observation, candidates = steps[t]
        return render_messages("household", goal, history, observation, candidates, history_window=window)

    # At the cabinet after the fridge, twice: same notes, same last turn, same observation.
    assert key(2) == key(4) and prompt(2) == prompt(4)
    assert key(3) == key(5) and prompt(3) == prompt(5)
    # At the fridge the first time the notes had not seen the cabinet yet.
    assert key(1) != key(3) and prompt(1) != prompt(3)
    # Two turns shown: the turn before differs (the first observation against the fridge's).
    assert key(2, window=2) != key(4, window=2)
    assert key(3, window=2) == key(5, window=2)


def test_prompt_state_keys_hold_the_notes_whole_state_not_only_the_lines_shown():
    goal = "Your task is to: put a clean apple in fridge."
    room = "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a drawer 1, and a fridge 1."
    cabinet = "You arrive at cabinet 1. On the cabinet 1, you see a mug 1."
    drawer = "You arrive at drawer 1. On the drawer 1, you see a pen 1."
    nothing_held = "You are not carrying anything."
    candidates = ["go to cabinet 1", "go to drawer 1", "go to fridge 1", "inventory", "look"]
    # Both searched both places; one stands at the cabinet, the other at the drawer, and no line says where.
    at_cabinet = [(room, "go to drawer 1"), (drawer, "go to cabinet 1"), (cabinet, "inventory")]
    at_drawer = [(room, "go to cabinet 1"), (cabinet, "go to drawer 1"), (drawer, "inventory")]

    def both(fn, turn=None, observation=nothing_held):
        return [fn("household", goal, h + ([turn] if turn else []), observation, candidates, history_window=0)
                for h in (at_cabinet, at_drawer)]

    same_now = both(render_messages)
    assert same_now[0] == same_now[1]
    keys = both(prompts.prompt_state_key)
    assert keys[0] != keys[1]
    # The place the agent stands at shows later: an apple found "here" or "at cabinet 1".
    later = both(render_messages, (nothing_held, "look"),
                 "You open the cabinet 1. The cabinet 1 is open. In it, you see an apple 1.")
    assert later[0] != later[1]


def test_prompt_state_keys_of_environments_without_notes_follow_the_turns_shown():
    def key(history, window):
        return prompts.prompt_state_key("textworld", "Eat the apple.", history, "You are in the kitchen.",
                                        ["go north", "eat apple"], history_window=window)

    older = [("You are in the hall.", "go south"), ("You are in the kitchen.", "go north")]
    other = [("You are in the cellar.", "go up"), ("You are in the kitchen.", "go north")]
    assert key(older, 1) == key(other, 1)
    assert key(older, 2) != key(other, 2)
    assert key(older, -1) != key(other, -1)
    assert key(older, 1) != prompts.prompt_state_key("textworld", "Eat the apple.", older, "You are in the kitchen.",
                                                     ["go north"], history_window=1)
