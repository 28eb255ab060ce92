"""The household notes: folded from the agent's own observations, checked against the world's truth."""

from __future__ import annotations

import random

from services.environment.backends.household import HouseholdConfig
from services.environment.backends.household.generator import generate
from services.environment.backends.household.world import (
    CLEAN,
    COOL,
    HOT,
    NOTHING,
    NOWHERE,
    ON,
    Knowledge,
    candidates,
    initial_text,
    is_won,
    transition,
)
from services.student.memory import HouseholdMemory, household_memory, is_move_candidate
from services.student.prompts import render_messages

_WORDS = ((CLEAN, "clean"), (HOT, "hot"), (COOL, "cool"), (ON, "on"))


def _random_episode(scene, rng: random.Random, steps: int):
    """Random candidate actions, biased towards the ones that change what the notes must track."""
    state, knowledge = scene.initial_state(), Knowledge()
    observations = [initial_text(scene)]
    for _ in range(steps):
        options = candidates(scene, state)
        busy = [a for a in options if a.split()[0] in ("take", "move", "open", "heat", "cool", "clean", "use")]
        action = rng.choice(busy if busy and rng.random() < 0.6 else options)
        out = transition(scene, state, action)
        state, knowledge = out.state, knowledge.after(scene, out)
        observations.append(out.text)
        yield state, knowledge, list(observations), candidates(scene, state)
        if is_won(scene, state):
            return


def test_notes_match_the_world_after_random_play():
    """After every step of 300 random episodes, the notes hold exactly what the agent can know.

    Searched places are those whose contents were listed to it (the world's Knowledge); their
    contents are the true ones (only the agent moves objects); what it holds and the states it gave
    objects are true; the places are the room's, in the first observation's order.
    """
    config = HouseholdConfig()
    rng = random.Random(7)
    checked = took = processed = seen_task_objects = here = 0
    for i in range(300):
        scene = generate(("train", "valid_seen", "valid_unseen")[i % 3], i, config)
        layout = scene.layout
        for state, knowledge, observations, options in _random_episode(scene, rng, 25):
            memory = household_memory(observations, options)
            assert memory.places == list(layout.receptacles)
            searched = [layout.receptacles[r] for r in range(len(layout.receptacles)) if knowledge.searched >> r & 1]
            assert sorted(memory.contents) == sorted(searched)
            for r, name in enumerate(layout.receptacles):
                if name in memory.contents:
                    truth = [scene.objects[o] for o, where in enumerate(state.locs) if where == r]
                    assert sorted(memory.contents[name]) == sorted(truth), (scene.task.task_id, name, observations)
            holding = "" if state.holding == NOTHING else scene.objects[state.holding]
            assert memory.holding == holding
            assert memory.at == ("" if state.loc == NOWHERE else layout.receptacles[state.loc])
            goal_words = set(scene.task.goal.rstrip(".").split())
            wanted = sorted((obj, place) for place in memory.contents for obj in memory.contents[place]
                            if obj.rsplit(" ", 1)[0] in goal_words)
            assert sorted(memory.task_objects()) == wanted and wanted == sorted(set(wanted))
            seen_line = memory.lines()[1]
            assert seen_line == "Task objects seen: " + (", ".join(
                f"{memory._described(o)} {'here' if p == memory.at else 'at ' + p}" for o, p in memory.task_objects())
                or "none yet")
            seen_task_objects += bool(wanted)
            here += any(p == memory.at for _, p in wanted)
            for obj, words in memory.states.items():
                o = scene.obj_index[obj]
                assert set(words) == {word for bit, word in _WORDS if state.flags[o] & bit}
            took += bool(holding)
            processed += bool(memory.states)
            checked += 1
    assert checked > 3000 and took > 300 and processed > 30  # the interesting cases really happened
    assert seen_task_objects > 300 and here > 100


def test_alfworld_phrasing():
    memory = HouseholdMemory()
    for text in ("You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a countertop 1, "
                 "and a fridge 1.\n\nYour task is to: put a cool tomato in microwave.",
                 "You arrive at loc 5. On the countertop 1, you see a apple 1, a tomato 1, and a egg 2.",
                 "You pick up the tomato 1 from the countertop 1.",
                 "You arrive at loc 2. The fridge 1 is closed.",
                 "You open the fridge 1. The fridge 1 is open. In it, you see nothing.",
                 "You cool the tomato 1 using the fridge 1.",
                 "You are carrying: a tomato 1."):
        memory.observe(text)
    assert memory.places == ["cabinet 1", "countertop 1", "fridge 1"]  # no "loc 5"
    assert memory.lines() == [
        "Holding: tomato 1 (cool)",
        "Task objects seen: none yet",
        "Searched: countertop 1 (apple 1, egg 2), fridge 1",
        "Not searched yet: cabinet 1",
    ]
    memory.observe("You put the tomato 1 in/on the fridge 1.")
    memory.observe("You heat the egg 2 using the microwave 1.")  # states follow the object, not the hand
    assert memory.lines()[:3] == ["Holding: nothing", "Task objects seen: tomato 1 (cool) at fridge 1",
                                  "Searched: countertop 1 (apple 1, egg 2 (hot)), fridge 1 (tomato 1 (cool))"]
    memory.observe("You arrive at loc 3. On the countertop 1, you see a apple 1, a egg 2, and a tomato 2.")
    assert memory.at == "countertop 1"  # older ALFWorld names the place only in the listing
    assert memory.lines()[1] == "Task objects seen: tomato 2 here, tomato 1 (cool) at fridge 1"


def test_notes_come_only_from_what_the_agent_was_shown():
    """Every name in the notes appears in an observation or a candidate: nothing else can enter."""
    memory = household_memory(["You arrive at drawer 3. The drawer 3 is closed."], ["go to shelf 2", "open drawer 3"])
    assert memory.lines() == ["Holding: nothing", "Task objects seen: none yet", "Searched: nothing yet",
                              "Not searched yet: drawer 3, shelf 2"]
    assert is_move_candidate("go to shelf 2") and not is_move_candidate("open drawer 3")


def test_household_prompt_folds_the_whole_history_and_shows_the_window():
    history = [("You are in the middle of a room. Looking quickly around you, you see a shelf 1, a drawer 1, "
                "and a sofa 1.", "go to shelf 1"),
               ("You arrive at shelf 1. On the shelf 1, you see a keychain 1.", "go to drawer 1"),
               ("You arrive at drawer 1. The drawer 1 is closed.", "open drawer 1")]
    observation = "You open the drawer 1. The drawer 1 is open. In it, you see nothing."
    cands = ["go to shelf 1", "go to sofa 1", "close drawer 1", "inventory", "look"]
    user = render_messages("household", "put a keychain in sofa.", history, observation, cands,
                           history_window=1)[1]["content"]
    assert user == ("Your task is: put a keychain in sofa.\n"
                    "Holding: nothing\n"
                    "Task objects seen: keychain 1 at shelf 1\n"
                    "Searched: shelf 1 (keychain 1), drawer 1\n"
                    "Not searched yet: sofa 1\n"
                    "History:\n"
                    "Observation: You arrive at drawer 1. The drawer 1 is closed.\n"
                    "Action: open drawer 1\n"
                    "Current observation: You open the drawer 1. The drawer 1 is open. In it, you see nothing.\n"
                    "Other actions:\n"
                    "close drawer 1\ninventory\nlook")
