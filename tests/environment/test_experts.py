"""Experts: the planner is optimal, the searchers use only what the agent observed, rationales leak nothing."""

from __future__ import annotations

import collections
import random
import re

import pytest

from services.environment.backends.household import HouseholdBackend, HouseholdConfig, priors
from services.environment.backends.household.experts import PLANNER, PRIOR_SEARCHER, SEARCHER, advise
from services.environment.backends.household.generator import SPLITS, generate
from services.environment.backends.household.planner import plan_for
from services.environment.backends.household.world import (
    TASK_TYPES,
    Knowledge,
    Scene,
    candidates,
    is_won,
    transition,
)
from tests.environment.helpers import make_scene, run_expert, shortest_length

CONFIG = HouseholdConfig()
SMALL = HouseholdConfig(min_receptacles=4, max_receptacles=7, min_distractors=0, max_distractors=3,
                        extra_target_prob=0.5)


def _thousand_tasks():
    for split, count in (("train", 600), ("valid_seen", 200), ("valid_unseen", 200)):
        for i in range(count):
            yield generate(split, i, CONFIG)


def _random_prefix(scene: Scene, rng: random.Random, length: int):
    """Random candidate actions from the start (stopping short of a win): (state, knowledge, actions)."""
    state, knowledge, actions = scene.initial_state(), Knowledge(), []
    for _ in range(length):
        action = rng.choice(candidates(scene, state))
        out = transition(scene, state, action)
        if is_won(scene, out.state):
            break
        state, knowledge = out.state, knowledge.after(scene, out)
        actions.append(action)
    return state, knowledge, actions


def test_planner_wins_all_of_1000_tasks_of_every_type_and_split():
    per_type = collections.Counter()
    for scene in _thousand_tasks():
        plan = plan_for(scene, scene.initial_state())
        state = scene.initial_state()
        for action in plan.actions:
            out = transition(scene, state, action)
            assert out.valid, (scene.task.task_id, action, out.text)
            assert not is_won(scene, state)
            state = out.state
        assert is_won(scene, state), scene.task.task_id
        per_type[scene.task.task_type] += 1
    assert sum(per_type.values()) == 1000
    assert set(per_type) == set(TASK_TYPES) and min(per_type.values()) >= 150


def test_planner_is_never_longer_than_an_exhaustive_search():
    rng = random.Random(7)
    checked = collections.Counter()
    # Small scenes from random mid-episode states (hands full, receptacles open, objects moved) ...
    for split in SPLITS:
        for i in range(50):
            scene = generate(split, i, SMALL)
            state, _, _ = _random_prefix(scene, rng, rng.randint(0, 10))
            plan = plan_for(scene, state)
            assert shortest_length(scene, state, len(plan)) == len(plan), (scene.task.task_id, plan.actions)
            checked[scene.task.task_type] += 1
    # ... and default-size scenes from their initial state.
    for i in range(24):
        scene = generate("valid_seen", i, CONFIG)
        plan = plan_for(scene, scene.initial_state())
        if len(plan) <= 8:  # deeper searches take seconds on these scenes
            assert shortest_length(scene, scene.initial_state(), len(plan)) == len(plan), scene.task.task_id
    assert set(checked) == set(TASK_TYPES)


def test_planner_handles_hand_made_corner_cases():
    # Holding an irrelevant object: one `move` frees the hand where the target is taken.
    scene = make_scene("pick_and_place_simple", "put a apple in fridge.", "apple",
                       ["countertop 1", "cabinet 1", "fridge 1"], {"knife 1": "countertop 1", "apple 1": "cabinet 1"},
                       dest_kind="fridge")
    state = transition(scene, transition(scene, scene.initial_state(), "go to countertop 1").state,
                       "take knife 1 from countertop 1").state
    assert plan_for(scene, state).actions == [
        "go to cabinet 1", "open cabinet 1", "move knife 1 to cabinet 1", "take apple 1 from cabinet 1",
        "go to fridge 1", "open fridge 1", "move apple 1 to fridge 1"]
    # Cooling an object found in the fridge needs no second trip.
    scene = make_scene("pick_cool_then_place_in_recep", "put a cool apple in countertop.", "apple",
                       ["countertop 1", "fridge 1"], {"apple 1": "fridge 1"}, dest_kind="countertop", verb="cool")
    assert plan_for(scene, scene.initial_state()).actions == [
        "go to fridge 1", "open fridge 1", "take apple 1 from fridge 1", "cool apple 1 with fridge 1",
        "go to countertop 1", "move apple 1 to countertop 1"]
    # Two objects: the nearer order wins, and one already in place counts.
    scene = make_scene("pick_two_obj_and_place", "put two mug in shelf.", "mug",
                       ["shelf 1", "cabinet 1", "cabinet 2"], {"mug 1": "cabinet 1", "mug 2": "cabinet 2"},
                       dest_kind="shelf")
    assert len(plan_for(scene, scene.initial_state())) == 10
    # Look: the object lies next to the lamp.
    scene = make_scene("look_at_obj_in_light", "examine the book with the desklamp.", "book",
                       ["shelf 1", "desk 1"], {"book 1": "desk 1", "desklamp 1": "desk 1", "book 2": "shelf 1"},
                       lamp_kind="desklamp")
    assert plan_for(scene, scene.initial_state()).actions == [
        "go to desk 1", "take book 1 from desk 1", "use desklamp 1"]


@pytest.mark.parametrize("expert", [SEARCHER, PRIOR_SEARCHER])
def test_searchers_win_within_horizon_50(expert):
    scenes = [generate(split, i, CONFIG) for split in SPLITS for i in range(200)]
    wins = sum(run_expert(scene, expert, 50)[0] for scene in scenes)
    assert wins / len(scenes) >= 0.95


def test_priors_make_search_shorter():
    """What LEAP's teacher can teach and BC cannot: searching by priors finds things faster."""
    scenes = [generate("train", i, CONFIG) for i in range(300)]
    plain = sum(len(run_expert(s, SEARCHER, 50)[1]) for s in scenes)
    prior = sum(len(run_expert(s, PRIOR_SEARCHER, 50)[1]) for s in scenes)
    optimal = sum(len(plan_for(s, s.initial_state())) for s in scenes)
    assert optimal < prior < 0.8 * plain


def _shuffled(scene: Scene, knowledge: Knowledge, rng: random.Random, only_task_objects: bool = False) -> Scene:
    """The same scene with the objects the agent has not perceived (all of them, or only those of the
    task's kinds) moved to random receptacles it has not searched (task objects never straight into
    the destination; lamps only on surfaces)."""
    layout = scene.layout
    unsearched = [r for r in range(len(layout.receptacles)) if not knowledge.searched >> r & 1]
    locs = list(scene.initial_locs)
    for o, kind in enumerate(scene.obj_kinds):
        if knowledge.known >> o & 1 or (only_task_objects and kind not in (scene.task.obj_kind, scene.task.lamp_kind)):
            continue
        options = [r for r in unsearched
                   if not (kind == scene.task.obj_kind and layout.recep_kinds[r] == scene.task.dest_kind)
                   and not (kind in priors.LAMPS and layout.openable[r])]
        if options:
            locs[o] = rng.choice(options)
    return Scene(layout, scene.objects, scene.obj_kinds, tuple(locs))


def _divergence(expert: str, a: Scene, b: Scene, prefix: list[str], horizon: int = 50):
    """Play `expert` in both scenes after the same prefix until their observations first differ.
    Returns the pairs of advice given while the histories were identical, and whether they diverged."""
    states, knowledge = [a.initial_state(), b.initial_state()], [Knowledge(), Knowledge()]
    scenes = (a, b)
    for action in prefix:
        outs = [transition(s, st, action) for s, st in zip(scenes, states)]
        assert outs[0].text == outs[1].text, "the prefix must not reveal the shuffled objects"
        states = [o.state for o in outs]
        knowledge = [k.after(s, o) for k, s, o in zip(knowledge, scenes, outs)]
    pairs = []
    for _ in range(horizon):
        if is_won(a, states[0]) or is_won(b, states[1]):
            return pairs, is_won(a, states[0]) != is_won(b, states[1])
        advice = [advise(s, st, k, expert) for s, st, k in zip(scenes, states, knowledge)]
        pairs.append(advice)
        outs = [transition(s, st, adv.next_action) for s, st, adv in zip(scenes, states, advice)]
        if outs[0].text != outs[1].text:
            return pairs, True
        states = [o.state for o in outs]
        knowledge = [k.after(s, o) for k, s, o in zip(knowledge, scenes, outs)]
    return pairs, False


@pytest.mark.parametrize("expert", [SEARCHER, PRIOR_SEARCHER])
def test_searchers_never_use_unobserved_information(expert):
    rng = random.Random(11)
    compared = 0
    for split in SPLITS:
        for i in range(80):
            scene = generate(split, i, CONFIG)
            _, knowledge, prefix = _random_prefix(scene, rng, rng.choice([0, 0, 3, 8]))
            other = _shuffled(scene, knowledge, rng, only_task_objects=i % 2 == 0)
            pairs, _ = _divergence(expert, scene, other, prefix)
            for mine, theirs in pairs:  # identical histories -> identical decisions, plans and words
                assert mine == theirs, (scene.task.task_id, mine, theirs)
            compared += len(pairs)
    assert compared > 500  # decisions compared while the two worlds looked the same


def test_the_shuffle_test_catches_an_expert_that_peeks():
    rng = random.Random(3)
    differing = 0
    for i in range(40):
        scene = generate("train", i, CONFIG)
        pairs, _ = _divergence(PLANNER, scene, _shuffled(scene, Knowledge(), rng), [])
        differing += any(a.next_action != b.next_action for a, b in pairs)
    assert differing >= 20


def _whole_word(needle: str, text: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(needle) + r"(?![\w])", text) is not None


@pytest.mark.parametrize("expert", [PLANNER, SEARCHER, PRIOR_SEARCHER])
def test_experts_replan_from_any_state_and_their_rationales_reveal_no_secret(expert):
    backend = HouseholdBackend()
    rng = random.Random({"planner": 1, "searcher": 2, "prior_searcher": 3}[expert])
    rationales = set()
    for split in SPLITS:
        for i in range(25):
            task_id = f"{split}-{i:05d}"
            scene = backend.scene(task_id)
            state, knowledge, actions = _random_prefix(scene, rng, rng.randint(0, 12))
            # From wherever the student left it, the expert still finishes.
            won, finish = run_expert(scene, expert, 60, state, knowledge)
            assert won, (task_id, expert, actions, finish)
            if expert == PLANNER:
                assert len(finish) == len(plan_for(scene, state))
            # Along its own way, every rationale is free of what the agent has not observed.
            for t in range(len(finish)):
                history = actions + finish[:t]
                advice = backend.expert_advice(task_id, history, expert)
                assert advice.next_action == finish[t] and advice.plan[0] == advice.next_action
                assert advice.rationale and not advice.already_won
                secrets = backend.privileged_state(task_id, history).secrets
                leaked = [s for s in secrets if _whole_word(s, advice.rationale)]
                assert not leaked, (task_id, history, advice.rationale, leaked)
                rationales.add(advice.rationale)
            done = backend.expert_advice(task_id, actions + finish, expert)
            assert done.already_won and done.next_action == "" and done.plan == ()
    assert len(rationales) > 20  # they explain, not repeat one sentence


def test_prior_searcher_explains_with_priors():
    backend = HouseholdBackend()
    advice = backend.expert_advice("train-00003", [], PRIOR_SEARCHER)  # heat some mug and put it on shelf
    assert advice.next_action == "go to coffeemachine 1"
    assert advice.rationale.startswith(
        "Mugs are usually kept in the cabinet, on the coffeemachine or on the countertop")
    plain = backend.expert_advice("train-00003", [], SEARCHER)
    assert plain.next_action == "go to countertop 1" and "one by one" in plain.rationale


@pytest.mark.parametrize("task_type", ["pick_and_place_simple", "pick_heat_then_place_in_recep",
                                       "pick_two_obj_and_place"])
def test_delivery_rationales_state_the_destination_and_the_agents_place_before_the_step(task_type):
    """Every step from the take to the put reads "The task wants ... <destination kind>; I am at the
    <kind where the agent stands>, so I <step>": go and put share their opening words and differ only
    after the two places they depend on (a student that filled "I am at the X, so I put it" with
    wherever it stood put the object back where it found it)."""
    backend = HouseholdBackend()
    task_id = next(t.task_id for t in backend.list_tasks("train", 0, 200) if t.task_type == task_type)
    scene = backend.scene(task_id)
    won, actions = run_expert(scene, SEARCHER, 60)
    assert won
    task = scene.task
    kinds = scene.layout.recep_kinds
    receptacles = list(scene.layout.receptacles)
    checked = collections.Counter()
    place, holding = None, False
    for t, action in enumerate(actions):
        advice = backend.expert_advice(task_id, actions[:t], SEARCHER)
        assert advice.next_action == action
        if holding and (action.startswith("go to ") or action.startswith("move ")
                           or action.split()[0] in ("heat", "cool", "clean")):
            here = kinds[receptacles.index(place)] if place else None
            assert advice.rationale.startswith("The task wants "), advice.rationale
            assert f"; I am at the {here}, so I " in advice.rationale, advice.rationale
            if action.startswith("move "):
                assert advice.rationale.endswith("so I put it there."), advice.rationale
                assert f" the {task.dest_kind};" in advice.rationale
                checked["put"] += 1
            elif action.startswith("go to "):
                target = action.removeprefix("go to ")
                assert advice.rationale.endswith(f"so I go to the {kinds[receptacles.index(target)]}.")
                checked["go"] += 1
            else:
                assert advice.rationale.endswith(f"so I {action.split()[0]} it now."), advice.rationale
                checked["process"] += 1
        if action.startswith("go to "):
            place = action.removeprefix("go to ")
        elif action.startswith("take "):
            place, holding = action.split(" from ", 1)[1], True
        elif action.startswith("move "):
            holding = False
    assert checked["put"] >= 1 and checked["go"] >= 1
    assert checked["process"] >= (1 if task.verb else 0)
