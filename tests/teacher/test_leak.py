"""The leak detector on its own: positive and negative cases."""

from __future__ import annotations

import pytest

from leap.v1 import environment_pb2 as env_pb
from services.teacher.leak import SecretIndex, entities_in, find_leaks, leaked_secrets

STATE = env_pb.PrivilegedState(
    secrets=["cabinet 3", "countertop 2"],
    facts=["apple 1 is in cabinet 3", "butterknife 2 is on countertop 2"],
)
SEEN_NOTHING = ["You are in the middle of a kitchen. Looking quickly around you, you see a cabinet 1, "
                "a cabinet 2, a cabinet 3, a countertop 1, a countertop 2, and a fridge 1."]
SEEN_APPLE = SEEN_NOTHING + ["You arrive at cabinet 3. The cabinet 3 is closed.",
                             "You open the cabinet 3. The cabinet 3 is open. In it, you see a apple 1, and a cup 2."]


@pytest.mark.parametrize("text", [
    "The apple is in cabinet 3.",
    "apple 1 is in cabinet 3",
    "Go to cabinet 3 to get the apple.",
    "I bet the apples are kept in cabinet 3",
    "It is in cabinet 3, go there.",
    "You will find it inside cabinet 3.",
    "Let me check cabinet 1. The APPLE 1 IS IN CABINET 3 anyway.",
])
def test_stating_a_hidden_place_leaks(text):
    assert leaked_secrets(text, STATE, SEEN_NOTHING) == ["cabinet 3"]


@pytest.mark.parametrize("text", [
    "Apples are often kept in the fridge, so I should check the fridge first.",
    "Fruit is usually kept cold or on a counter.",
    "I have not searched cabinet 3 yet, so I should go there next.",
    "So I should go to cabinet 3 next.",
    "",
])
def test_general_principles_and_bare_places_do_not_leak(text):
    assert leaked_secrets(text, STATE, SEEN_NOTHING) == []


def test_what_the_student_saw_is_no_longer_secret():
    text = "The apple 1 is in cabinet 3, so I should take it."
    assert leaked_secrets(text, STATE, SEEN_NOTHING) == ["cabinet 3"]
    assert leaked_secrets(text, STATE, SEEN_APPLE) == []


def test_arriving_at_a_closed_place_reveals_nothing():
    # The student stood in front of the closed cabinet 3: its content is still hidden.
    seen = SEEN_NOTHING + ["You arrive at cabinet 3. The cabinet 3 is closed."]
    assert leaked_secrets("the apple is in cabinet 3", STATE, seen) == ["cabinet 3"]


def test_each_secret_is_judged_on_its_own():
    text = "The butterknife is on countertop 2 and the apple is in cabinet 3."
    assert sorted(leaked_secrets(text, STATE, SEEN_NOTHING)) == ["cabinet 3", "countertop 2"]
    assert leaked_secrets(text, STATE, SEEN_APPLE) == ["countertop 2"]


def test_quoting_a_fact_verbatim_leaks():
    leaks = find_leaks("Hint: butterknife 2 is on countertop 2.", STATE, SEEN_NOTHING)
    assert [leak.secret for leak in leaks] == ["countertop 2"]
    assert leaks[0].rule == "a privileged fact quoted verbatim"


def test_unlinked_secrets_leak_whenever_named():
    state = env_pb.PrivilegedState(secrets=["find . -name '*.log' -delete"], facts=[])
    assert leaked_secrets("Run find . -name '*.log' -delete now", state, []) != []
    assert leaked_secrets("Use find with -name and -delete", state, []) == []
    assert leaked_secrets("Use find with -name", state, ["$ find . -name '*.log' -delete"]) == []


def test_entities_are_extracted_without_articles_or_verbs():
    text = "On the countertop 1, you see a apple 1, a butter knife 2, and a desklamp 1. You arrive at sink basin 1."
    assert entities_in(text) == ["countertop 1", "apple 1", "butter knife 2", "desklamp 1", "sink basin 1"]


def test_index_links_secrets_to_the_objects_they_hide():
    index = SecretIndex.build(STATE)
    assert index.linked == {"cabinet 3": ["apple 1"], "countertop 2": ["butterknife 2"]}


def test_state_without_secrets_never_leaks():
    assert find_leaks("the apple is in cabinet 3", env_pb.PrivilegedState(), []) == []


# The household environment's form: per unseen object, its location fact, its hiding place and its name.
HOUSEHOLD = env_pb.PrivilegedState(
    facts=["apple 1 is on countertop 1", "apple 2 is in fridge 1", "diningtable 1 is clean"],
    secrets=["apple 1 is on countertop 1", "countertop 1", "apple 1", "apple 2 is in fridge 1", "fridge 1", "apple 2"],
)


@pytest.mark.parametrize("text, leaked", [
    ("Apples are usually kept in the fridge, so I check the fridge.", []),
    ("I should go to fridge 1 next.", []),
    ("The apple is in fridge 1.", ["fridge 1"]),
    ("apple 2 is in fridge 1", ["apple 2 is in fridge 1", "fridge 1", "apple 2"]),
    ("I need apple 2.", ["apple 2"]),
    ("An apple is on countertop 1, go there.", ["countertop 1"]),
])
def test_household_secrets(text, leaked):
    assert sorted(leaked_secrets(text, HOUSEHOLD, SEEN_NOTHING)) == sorted(leaked)


def test_household_secrets_once_seen():
    seen = SEEN_NOTHING + ["You arrive at countertop 1. On the countertop 1, you see a apple 1, and a bread 1."]
    assert leaked_secrets("Take apple 1: the apple 1 is on countertop 1.", HOUSEHOLD, seen) == []
    assert leaked_secrets("Then find apple 2 in fridge 1.", HOUSEHOLD, seen) == ["fridge 1", "apple 2"]


def test_quoting_the_students_own_action_is_no_leak():
    said = ["go to cabinet 1", "take apple 1 from cabinet 3"]
    text = '"take apple 1 from cabinet 3" had no effect, so it is not possible here.'
    assert leaked_secrets(text, STATE, SEEN_NOTHING, said) == []
    # ... but its words never reveal where things are.
    assert leaked_secrets("Right: the apple 1 is in cabinet 3.", STATE, SEEN_NOTHING, said) == ["cabinet 3"]


def test_the_students_own_words_never_erase_a_leak():
    """Blanking the student's actions out of a reason once let a reason say where a thing is hidden: a
    fragment it typed ("1", "cabinet 3") erased the words of the leak, and an action written as the
    teacher's own words ("Go to cabinet 3: ...") erased the place. Only quoted actions are blanked, a
    fragment of a secret never is, and a hidden place a quote names stays visible."""
    leak = "Go to cabinet 3: the apple is inside."
    for said in ([], ["1"], ["3"], ["cabinet 3"], ["apple"], ["go to cabinet 3"]):
        assert leaked_secrets(leak, STATE, SEEN_NOTHING, said) == ["cabinet 3"], said
        assert "cabinet 3" in leaked_secrets("apple 1 is in cabinet 3.", STATE, SEEN_NOTHING, said), said
    quoted = '"go to cabinet 3": the apple is inside.'
    assert leaked_secrets(quoted, STATE, SEEN_NOTHING, ["go to cabinet 3"]) == ["cabinet 3"]
    # Quoting its action for what it did is still no leak, whatever the action names.
    assert leaked_secrets('"go to cabinet 3" found nothing new.', STATE, SEEN_NOTHING, ["go to cabinet 3"]) == []


# TextWorld's form: names without instance numbers, and a fact about the place itself ("fridge is
# closed"). The environment declares the place among its critical locations.
TEXTWORLD = env_pb.PrivilegedState(
    secrets=["red tuna is in the fridge", "fridge", "red tuna"],
    facts=["red tuna is in the fridge", "red tuna is cookable", "fridge is closed"],
    critical_locations=["fridge", "counter"], essential_objects=["red tuna", "knife"],
)
TEXTWORLD_SEEN = ["-= Kitchen =- You can see a fridge. On the counter you make out a red hot pepper."]


def test_declared_places_without_numbers_leak_only_with_what_they_hide():
    index = SecretIndex.build(TEXTWORLD)
    assert index.places == {"fridge"} and index.is_place("fridge") and not index.is_place("red tuna")
    assert index.linked["fridge"] == ["red tuna"]
    assert leaked_secrets("I should open the fridge and look inside.", TEXTWORLD, TEXTWORLD_SEEN) == []
    assert leaked_secrets("The red tuna is in the fridge.", TEXTWORLD, TEXTWORLD_SEEN) != []
    assert "red tuna" in leaked_secrets("Take the red tuna next.", TEXTWORLD, TEXTWORLD_SEEN)
    # Once the open fridge showed the tuna, nothing of it is secret.
    seen = TEXTWORLD_SEEN + ["You open the fridge, revealing a red tuna."]
    assert leaked_secrets("The red tuna is in the fridge.", TEXTWORLD, seen) == []


def test_an_essential_object_is_never_a_place_even_when_listed_as_one():
    state = env_pb.PrivilegedState(secrets=["box", "box is on the shelf"], facts=["box is on the shelf"],
                                   critical_locations=["box"], essential_objects=["box"])
    assert not SecretIndex.build(state).is_place("box")


def test_trajectory_secrets_agree_with_the_plain_check_in_one_pass():
    """TrajectorySecrets finds, once, the step at which each secret stops being news; its answers are
    those of find_leaks over the observations and actions up to each step, and it reads each secret
    against each observation at most once (the plain check, per step, was quadratic in the episode)."""
    from leap.v1 import common_pb2
    from services.teacher.leak import (TrajectorySecrets, actions_up_to, find_leaks, observations_all,
                                       observations_up_to)

    observations = ["You are in the middle of a room. You see a cabinet 3 and a fridge 1.",
                    "You arrive at cabinet 3. The cabinet 3 is closed.", "You open the cabinet 3. In it, you see "
                    "a apple 1.", "You arrive at fridge 1.", "You pick up the apple 1 from the cabinet 3."]
    actions = ["go to cabinet 3", "open cabinet 3", "go to fridge 1", "take apple 1 from cabinet 3", "look"]
    steps = [common_pb2.Step(index=t, observation=o, action=a) for t, (o, a) in enumerate(zip(observations, actions))]
    steps[-1].next_observation = "You are carrying: apple 1."
    trajectory = common_pb2.Trajectory(steps=steps)
    index = SecretIndex.build(STATE)
    texts = ["The apple 1 is in cabinet 3.", "Go to cabinet 3: the apple is inside.", "Apples are kept cold.",
             "The butterknife 2 is on countertop 2.",
             '"take apple 1 from cabinet 3" had no effect.', "I saw apple 1 earlier."]
    secrets = TrajectorySecrets(index, trajectory)
    for t in range(len(steps)):
        for text in texts:
            plain = find_leaks(text, index, observations_up_to(trajectory, t), actions_up_to(trajectory, t))
            assert secrets.leaks(text, t) == plain, (t, text)
    for text in texts:
        plain = find_leaks(text, index, observations_all(trajectory), actions_up_to(trajectory, len(steps)))
        assert secrets.leaks(text, len(steps)) == plain, text
    # Not vacuous: cabinet 3 is news until the student opened it; countertop 2 stays hidden throughout.
    assert secrets.hidden_at(0) == ["cabinet 3", "countertop 2"] and secrets.hidden_at(len(steps)) == ["countertop 2"]

    calls = []
    original = SecretIndex.observed

    def counting(self, secret, texts, **kwargs):
        texts = list(texts)
        calls.append(len(texts))
        return original(self, secret, texts, **kwargs)

    SecretIndex.observed = counting
    try:
        long = common_pb2.Trajectory(steps=[common_pb2.Step(index=t, observation=f"You see a bowl {t}.", action="look")
                                            for t in range(60)])
        TrajectorySecrets(index, long).leaks("The apple 1 is in cabinet 3.", 59)
    finally:
        SecretIndex.observed = original
    assert sum(calls) <= len(index.secrets) * 61, sum(calls)


@pytest.mark.parametrize("spelling", [
    "fridge1", "fridge-1", "fridge_1", "fridge #1", "fridge \u200b1", "fridge \uff11", "fr\u0456dge 1", "fridge 1\u0301",
    "FRIDGE 1", "fri\u00addge 1",
])
def test_a_hidden_place_is_caught_however_it_is_spelled(spelling):
    """Separators, zero-width and soft-hyphen characters, full-width digits, combining marks and
    look-alike letters of other scripts do not hide a place from the check."""
    state = env_pb.PrivilegedState(facts=["apple 1 is in fridge 1"], secrets=["fridge 1"],
                                   essential_objects=["apple 1"], critical_locations=["fridge 1"])
    seen = ["You are in the middle of a kitchen. You see a cabinet 1, a fridge 1, a diningtable 1."]
    assert leaked_secrets(f"The apple is in {spelling}.", state, seen) == ["fridge 1"], spelling
    # ... and "fridge 1" still never matches another fridge.
    assert leaked_secrets("The apple is in fridge 11.", state, seen) == []
