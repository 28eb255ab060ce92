"""The household world's rules: ALFWorld's grammar, observation texts, candidates, goals."""

from __future__ import annotations

import pytest

from services.environment.backends.household.world import (
    COOL,
    HOT,
    NOTHING_HAPPENS,
    Knowledge,
    candidates,
    initial_text,
    is_won,
    listing,
    parse,
    transition,
)
from tests.environment.helpers import make_scene, play

RECEPTACLES = ["countertop 1", "fridge 1", "cabinet 1", "cabinet 2", "microwave 1", "sinkbasin 1", "desk 1"]
OBJECTS = {"apple 1": "fridge 1", "egg 2": "fridge 1", "mug 1": "cabinet 1", "knife 1": "countertop 1",
           "desklamp 1": "desk 1", "book 1": "desk 1"}


@pytest.fixture()
def scene():
    return make_scene("pick_clean_then_place_in_recep", "put a clean apple in cabinet.", "apple",
                      RECEPTACLES, OBJECTS, dest_kind="cabinet", verb="clean")


def test_listing_follows_alfworld():
    assert listing([]) == "nothing"
    assert listing(["mug 1"]) == "a mug 1"
    assert listing(["apple 1", "egg 2"]) == "a apple 1, and a egg 2"
    assert listing(["a 1", "b 2", "c 3"]) == "a a 1, a b 2, and a c 3"


def test_initial_observation_lists_receptacles_then_the_task(scene):
    assert initial_text(scene) == (
        "You are in the middle of a room. Looking quickly around you, you see a countertop 1, a fridge 1, "
        "a cabinet 1, a cabinet 2, a microwave 1, a sinkbasin 1, and a desk 1.\n\n"
        "Your task is to: put a clean apple in cabinet.")
    assert candidates(scene, scene.initial_state()) == [f"go to {r}" for r in RECEPTACLES] + ["inventory", "look"]


def test_a_whole_clean_and_place_episode(scene):
    steps = [
        ("take apple 1 from fridge 1", NOTHING_HAPPENS),
        ("go to fridge 1", "You arrive at fridge 1. The fridge 1 is closed."),
        ("take apple 1 from fridge 1", NOTHING_HAPPENS),
        ("open fridge 1", "You open the fridge 1. The fridge 1 is open. In it, you see a apple 1, and a egg 2."),
        ("take apple 1 from fridge 1", "You pick up the apple 1 from the fridge 1."),
        ("take egg 2 from fridge 1", NOTHING_HAPPENS),  # one hand
        ("inventory", "You are carrying: a apple 1."),
        ("go to sinkbasin 1", "You arrive at sinkbasin 1. On the sinkbasin 1, you see nothing."),
        ("clean apple 1 with sinkbasin 1", "You clean the apple 1 using the sinkbasin 1."),
        ("examine apple 1", "This is a clean apple 1."),
        ("go to cabinet 1", "You arrive at cabinet 1. The cabinet 1 is closed."),
        ("open cabinet 1", "You open the cabinet 1. The cabinet 1 is open. In it, you see a mug 1."),
        ("move apple 1 to cabinet 1", "You move the apple 1 to the cabinet 1."),
    ]
    state = scene.initial_state()
    for action, expected in steps:
        assert not is_won(scene, state)
        out = transition(scene, state, action)
        assert out.text == expected, action
        assert out.valid == (expected != NOTHING_HAPPENS)
        state = out.state
    assert is_won(scene, state)


def test_candidates_offer_only_what_is_possible_here(scene):
    state, _, _ = play(scene, ["go to fridge 1"])
    cands = candidates(scene, state)
    assert "open fridge 1" in cands and "go to fridge 1" not in cands
    assert not any(c.startswith("take") for c in cands)  # closed: nothing visible yet
    state, _, _ = play(scene, ["go to fridge 1", "open fridge 1"])
    cands = candidates(scene, state)
    assert cands[-5:] == ["close fridge 1", "take apple 1 from fridge 1", "take egg 2 from fridge 1",
                          "inventory", "look"]
    state, _, _ = play(scene, ["go to fridge 1", "open fridge 1", "take apple 1 from fridge 1"])
    cands = candidates(scene, state)
    assert {"move apple 1 to fridge 1", "cool apple 1 with fridge 1", "examine apple 1"} <= set(cands)
    assert not any(c.startswith("take") for c in cands)
    # An appliance offers its verb only for objects it can treat.
    state, _, _ = play(scene, ["go to countertop 1", "take knife 1 from countertop 1", "go to microwave 1"])
    cands = candidates(scene, state)
    assert "heat knife 1 with microwave 1" not in cands
    assert transition(scene, state, "heat knife 1 with microwave 1").text == NOTHING_HAPPENS


def test_every_candidate_is_admissible_and_inadmissible_actions_change_nothing(scene):
    import random

    rng = random.Random(0)
    state = scene.initial_state()
    for _ in range(300):
        for action in candidates(scene, state, verbose=True):
            assert transition(scene, state, action).valid, action
        for action in ("go to nowhere 1", "dance", "take apple 9 from fridge 1", "open countertop 1", ""):
            out = transition(scene, state, action)
            assert out.text == NOTHING_HAPPENS and out.state == state and not out.valid
        state = transition(scene, state, rng.choice(candidates(scene, state))).state


def test_grammar_is_tolerant_of_case_spacing_and_the_old_put(scene):
    assert parse("  Go   To Fridge 1. ") == ("go", ("fridge 1",))
    assert parse("put apple 1 in fridge 1") == ("move", ("apple 1", "fridge 1"))
    state, _, texts = play(scene, ["go to countertop 1", "take knife 1 from countertop 1", "go to cabinet 2",
                                   "open cabinet 2", "put knife 1 in cabinet 2"])
    assert texts[-1] == "You move the knife 1 to the cabinet 2."
    assert transition(scene, state, "go to cabinet 2").text == NOTHING_HAPPENS  # already there


def test_look_examine_and_inventory(scene):
    state = scene.initial_state()
    assert transition(scene, state, "look").text == \
        "You are in the middle of a room. Looking quickly around you, you see nothing."
    assert transition(scene, state, "inventory").text == "You are not carrying anything."
    assert transition(scene, state, "examine fridge 1").text == NOTHING_HAPPENS  # not there
    state, _, _ = play(scene, ["go to countertop 1"])
    assert transition(scene, state, "look").text == "You are facing the countertop 1. Next to it, you see nothing."
    assert transition(scene, state, "examine countertop 1").text == "On the countertop 1, you see a knife 1."
    assert transition(scene, state, "examine knife 1").text == "There's nothing special about knife 1."
    assert transition(scene, state, "examine apple 1").text == NOTHING_HAPPENS  # not visible from here
    verbose = candidates(scene, state, verbose=True)
    assert "examine countertop 1" in verbose and "examine knife 1" in verbose
    assert "examine countertop 1" not in candidates(scene, state)


def test_heat_and_cool_exclude_each_other(scene):
    state, _, _ = play(scene, ["go to fridge 1", "open fridge 1", "take apple 1 from fridge 1",
                               "cool apple 1 with fridge 1"])
    apple = scene.obj_index["apple 1"]
    assert state.flags[apple] == COOL
    state = transition(scene, state, "go to microwave 1").state
    state = transition(scene, state, "heat apple 1 with microwave 1").state
    assert state.flags[apple] == HOT


def test_lamps_are_used_not_taken():
    scene = make_scene("look_at_obj_in_light", "examine the book with the desklamp.", "book",
                       ["desk 1", "shelf 1"], {"desklamp 1": "desk 1", "book 1": "shelf 1"}, lamp_kind="desklamp")
    state, _, texts = play(scene, ["go to desk 1"])
    assert texts[-1] == "You arrive at desk 1. On the desk 1, you see a desklamp 1."
    cands = candidates(scene, state)
    assert "use desklamp 1" in cands and "take desklamp 1 from desk 1" not in cands
    assert transition(scene, state, "take desklamp 1 from desk 1").text == NOTHING_HAPPENS
    on = transition(scene, state, "use desklamp 1")
    assert on.text == "You turn on the desklamp 1." and not is_won(scene, on.state)  # no book in hand
    assert transition(scene, on.state, "use desklamp 1").text == "You turn off the desklamp 1."
    # With the lamp on, arriving with the book wins.
    state, _, _ = play(scene, ["go to desk 1", "use desklamp 1", "go to shelf 1", "take book 1 from shelf 1"])
    assert not is_won(scene, state)
    assert is_won(scene, transition(scene, state, "go to desk 1").state)


def test_two_objects_must_share_one_receptacle():
    scene = make_scene("pick_two_obj_and_place", "put two mug in cabinet.", "mug",
                       ["countertop 1", "cabinet 1", "cabinet 2"], {"mug 1": "countertop 1", "mug 2": "countertop 1"},
                       dest_kind="cabinet")
    spread = ["go to countertop 1", "take mug 1 from countertop 1", "go to cabinet 1", "open cabinet 1",
              "move mug 1 to cabinet 1", "go to countertop 1", "take mug 2 from countertop 1", "go to cabinet 2",
              "open cabinet 2", "move mug 2 to cabinet 2"]
    state, _, _ = play(scene, spread)
    assert not is_won(scene, state)
    state, _, _ = play(scene, spread[:-3] + ["go to cabinet 1", "move mug 2 to cabinet 1"])
    assert is_won(scene, state)


def test_knowledge_comes_only_from_listed_contents(scene):
    _, knowledge, _ = play(scene, ["go to fridge 1"])
    assert knowledge == Knowledge()  # a closed fridge shows nothing
    _, knowledge, _ = play(scene, ["go to fridge 1", "open fridge 1"])
    fridge, apple, egg = scene.layout.recep_index["fridge 1"], scene.obj_index["apple 1"], scene.obj_index["egg 2"]
    assert knowledge.searched == 1 << fridge
    assert knowledge.known == (1 << apple) | (1 << egg)
    _, knowledge, _ = play(scene, ["go to countertop 1"])
    assert knowledge.known == 1 << scene.obj_index["knife 1"]
