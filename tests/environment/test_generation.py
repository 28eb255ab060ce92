"""Seeded lazy generation: determinism across processes, splits, the valid_unseen rule, priors."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.environment.backends.household import HouseholdBackend, HouseholdConfig, priors
from services.environment.backends.household.generator import (
    SPLITS,
    combos_by_split,
    generate,
    parse_task_id,
    task_id_of,
)
from services.environment.backends.household.world import TASK_TYPES, candidates, initial_text, transition
from services.runtime.errors import InvalidArgument, NotFound

ROOT = Path(__file__).resolve().parents[2]
CONFIG = HouseholdConfig()

FINGERPRINT = """
import json, sys
from services.environment.backends.household import HouseholdBackend
backend = HouseholdBackend()
out = {}
for task_id in sys.argv[1:]:
    episode = backend.start(task_id, 0)
    obs = episode.reset()
    texts = [obs.text, list(obs.candidates)]
    for _ in range(6):
        obs = episode.step(obs.candidates[len(obs.candidates) // 3])
        texts += [obs.text, list(obs.candidates)]
    out[task_id] = texts
print(json.dumps(out))
"""


def _fingerprint_here(task_ids):
    backend = HouseholdBackend()
    out = {}
    for task_id in task_ids:
        episode = backend.start(task_id, 0)
        obs = episode.reset()
        texts = [obs.text, list(obs.candidates)]
        for _ in range(6):
            obs = episode.step(obs.candidates[len(obs.candidates) // 3])
            texts += [obs.text, list(obs.candidates)]
        out[task_id] = texts
    return out


def test_same_seed_gives_the_same_task_and_observations_in_another_process():
    task_ids = ["train-00000", "train-00042", "train-01999", "valid_seen-00007", "valid_unseen-00123"]
    proc = subprocess.run([sys.executable, "-c", FINGERPRINT, *task_ids], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == _fingerprint_here(task_ids)


def test_generation_is_deterministic_and_splits_differ():
    assert generate("train", 5, CONFIG) == generate("train", 5, CONFIG)
    assert generate("train", 5, CONFIG) != generate("valid_seen", 5, CONFIG)
    assert initial_text(generate("train", 5, CONFIG)) != initial_text(generate("train", 6, CONFIG))


def test_task_types_come_in_balanced_blocks():
    for split in SPLITS:
        for block in range(5):
            types = [generate(split, 6 * block + i, CONFIG).task.task_type for i in range(6)]
            assert sorted(types) == sorted(TASK_TYPES)


def test_valid_unseen_asks_for_combinations_train_never_asks_for():
    def combo(scene):
        t = scene.task
        return t.task_type, t.obj_kind, t.lamp_kind or t.dest_kind

    train = {combo(generate("train", i, CONFIG)) for i in range(CONFIG.train_tasks)}
    seen = {combo(generate("valid_seen", i, CONFIG)) for i in range(CONFIG.valid_seen_tasks)}
    unseen = {combo(generate("valid_unseen", i, CONFIG)) for i in range(CONFIG.valid_unseen_tasks)}
    assert not unseen & train
    assert seen <= {(c.task_type, c.obj_kind, c.target) for cs in combos_by_split(0.2)["seen"].values() for c in cs}
    assert len(seen & train) > 0.8 * len(seen)
    # The held-out pairings still use objects and receptacles that train knows.
    assert {o for _, o, _ in unseen} <= {o for _, o, _ in train}
    assert {r for _, _, r in unseen} <= {r for _, _, r in train}
    held = combos_by_split(0.2)
    for task_type in TASK_TYPES:
        assert held["unseen"][task_type] and held["seen"][task_type]
        assert not set(held["unseen"][task_type]) & set(held["seen"][task_type])


def test_scenes_are_sane_and_respect_the_knobs():
    config = HouseholdConfig(min_receptacles=8, max_receptacles=9, min_distractors=2, max_distractors=2)
    for split in SPLITS:
        for i in range(120):
            scene = generate(split, i, config)
            task = scene.task
            layout = scene.layout
            assert 8 <= len(layout.receptacles) <= 12  # required receptacles may exceed the range
            targets = [o for o, k in enumerate(scene.obj_kinds) if k == task.obj_kind]
            assert len(targets) >= (2 if task.task_type == "pick_two_obj_and_place" else 1)
            # The task is never already done: no object starts where the task wants it.
            assert all(layout.recep_kinds[scene.initial_locs[o]] != task.dest_kind for o in targets)
            if task.verb:
                assert priors.APPLIANCE[task.verb] in layout.recep_kinds
            if task.lamp_kind:
                assert task.lamp_kind in scene.obj_kinds
                assert not any(layout.openable[scene.initial_locs[o]] for o, k in enumerate(scene.obj_kinds)
                               if k in priors.LAMPS)
            else:
                assert task.dest_kind in layout.recep_kinds
            assert len(set(scene.objects)) == len(scene.objects)
            assert len(set(layout.receptacles)) == len(layout.receptacles)
            assert f"Your task is to: {task.goal}" in initial_text(scene)
            assert not any(ch.isdigit() for ch in task.goal)  # goals name kinds, never instances


def test_objects_follow_the_priors_with_spread():
    in_top = total = 0
    kinds_used = collections.Counter()
    for split in SPLITS:
        for i in range(300):
            scene = generate(split, i, CONFIG)
            task = scene.task
            weights = priors.prior_weights(task.obj_kind, scene.layout.kinds_present, task.dest_kind)
            top = max(weights, key=weights.get)
            for o, kind in enumerate(scene.obj_kinds):
                where = scene.layout.recep_kinds[scene.initial_locs[o]]
                assert priors.PRIORS[kind].get(where, 0) > 0, f"{kind} placed on {where}"
                if kind == task.obj_kind:
                    total += 1
                    in_top += where == top
                    kinds_used[where] += 1
    share = in_top / total
    assert 0.45 <= share <= 0.7, share  # likely places first, but search is still needed
    assert len(kinds_used) >= 10


def test_backend_task_lookup_and_listing():
    backend = HouseholdBackend(train_tasks="30", valid_seen_tasks=5)
    assert backend.num_tasks("train") == 30
    tasks = backend.list_tasks("train", 25, 10)
    assert [t.task_id for t in tasks] == [task_id_of("train", i) for i in range(25, 30)]
    assert backend.task("train-00029").goal == tasks[-1].goal
    assert backend.task_at("valid_seen", 7).task_id == "valid_seen-00002"  # wraps around
    assert parse_task_id("valid_unseen-00012") == ("valid_unseen", 12)
    for bad in ("train-00030", "train-x", "test-00001", "", "train"):
        with pytest.raises(NotFound, match="valid task ids: train-00000..train-00029"):
            backend.task(bad)
    with pytest.raises(NotFound, match="valid splits: train .*valid_seen .*valid_unseen"):
        backend.num_tasks("test")
    with pytest.raises(InvalidArgument, match="valid options"):
        HouseholdBackend(bogus="1")
    with pytest.raises(InvalidArgument, match="not a valid int"):
        HouseholdBackend(train_tasks="many")
    with pytest.raises(InvalidArgument, match="min_receptacles"):
        HouseholdBackend(min_receptacles="9", max_receptacles="3")


def test_candidate_lists_stay_compact():
    lengths = []
    for i in range(60):
        scene = generate("train", i, CONFIG)
        state = scene.initial_state()
        for action in candidates(scene, state)[:4]:
            state = transition(scene, state, action).state
            lengths.append(len(candidates(scene, state)))
    assert max(lengths) <= CONFIG.max_receptacles + 10
