"""Household tasks exported as ALFWorld game folders: names, files, the CLI, and parity of the two engines.

Parity (a handful here, one task per task type; bench/alfworld_bench.py runs 50): the household
planner's plan wins the exported game in the real ALFWorld engine, and at every step of it the two
engines offer the same commands, except for the kinds of difference the backend README explains.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("ALFWORLD_DATA", os.path.join(tempfile.gettempdir(), "leap-tests-alfworld-data"))

import pytest  # noqa: E402

from services.environment.backends.alfworld import export, games  # noqa: E402
from services.environment.backends.alfworld.engine import Engine  # noqa: E402
from services.environment.backends.household.generator import HouseholdConfig, TaskSet  # noqa: E402
from services.environment.backends.household.world import TASK_TYPES  # noqa: E402

TASKS = TaskSet(HouseholdConfig())
REPO = Path(__file__).resolve().parents[2]


def one_per_type(split: str) -> list:
    found: dict[str, object] = {}
    for i in range(60):
        scene = TASKS.scene(split, i)
        found.setdefault(scene.task.task_type, scene)
        if len(found) == len(TASK_TYPES):
            break
    return list(found.values())


def test_alfred_spelling_of_every_household_kind():
    import alfworld.gen.constants as constants

    from services.environment.backends.household import priors

    alfred = {name.lower(): name for name in constants.OBJECTS}
    kinds = set(priors.PRIORS) | {kind for room in priors.ROOMS.values() for kind in room}
    assert {kind: export.camel(kind) for kind in kinds} == {kind: alfred[kind] for kind in kinds}


def test_ids_demangle_to_household_names():
    # ALFWorld's demangler numbers instances in reverse order of their sorted ids.
    ids = [export.entity_id("cabinet", n, 12) for n in range(1, 13)]
    assert [12 - sorted(ids).index(i) for i in ids] == list(range(1, 13))
    assert export.entity_id("sinkbasin", 1, 1).startswith("Sink_bar_") and export.entity_id(
        "sinkbasin", 1, 1).endswith("_bar_SinkBasin")


@pytest.mark.parametrize("split", ["train", "valid_unseen"])
def test_parity_of_the_two_engines(tmp_path, split):
    engine = Engine()
    for scene in one_per_type(split):
        relative = export.folder_of(scene)
        export.write_folder(tmp_path / relative, export.export_scene(scene))
        info = games.read_game(tmp_path / relative, relative, split)
        assert info.goal == scene.task.goal and info.task_type == scene.task.task_type
        engine.load(info.task_id, games.load_game_data(info))
        first = engine.reset()
        # Same room, same names: every receptacle of the household scene is listed by ALFWorld.
        assert all(f"a {name}" in first.text for name in scene.layout.receptacles)
        result = export.parity(scene, engine)
        assert result.household_won and result.alfworld_won and not result.alfworld_won_before_end, result
        assert not result.unexplained, (scene.task.task_id, result.unexplained)
        # fast-downward's plan is as short as the household planner's (both are optimal here).
        assert result.alfworld_plan_length == len(result.plan)
        assert set(result.kinds) <= {"help", "examine-visible-object", "examine-closed-receptacle"}


def test_files_of_a_game_folder(tmp_path):
    scene = TASKS.scene("valid_seen", 3)
    files = export.export_scene(scene)
    assert set(files) == {"traj_data.json", "initial_state.pddl", "game.tw-pddl"}
    traj = json.loads(files["traj_data.json"])
    assert traj["task_type"] == scene.task.task_type and traj["leap"]["household_task_id"] == "valid_seen-00003"
    assert traj["pddl_params"]["object_target"] == export.camel(scene.task.obj_kind)
    game = json.loads(files["game.tw-pddl"])
    assert game["solvable"] is True and game["pddl_problem"] == files["initial_state.pddl"]
    assert "UNKNOWN GOAL" not in game["grammar"] and f"Your task is to: {scene.task.goal}" in game["grammar"]
    assert game["walkthrough"] and "(:goal" in game["pddl_problem"] and " # " not in game["pddl_problem"]
    # Writing twice is a no-op; a folder with other content is never overwritten.
    folder = tmp_path / export.folder_of(scene)
    assert export.write_folder(folder, files) and not export.write_folder(folder, files)
    with pytest.raises(ValueError, match="other content"):
        export.write_folder(folder, export.export_scene(TASKS.scene("valid_seen", 4)))


def test_cli_export(tmp_path):
    out = tmp_path / "games"
    cmd = [sys.executable, "-m", "orchestrator.cli", "env", "export-alfworld", "--split", "valid_unseen",
           "--count", "2", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 game folders written" in done.stdout
    assert len(list((out / "valid_unseen").rglob("game.tw-pddl"))) == 2
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert again.returncode == 0 and "0 game folders written, 2 already there" in again.stdout
    for bad in (["--split", "test"], ["--count", "0"], ["--count", "-5"], ["--start", "-1"]):
        failed = subprocess.run([*cmd, *bad], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
        assert failed.returncode == 2 and failed.stderr.startswith("error: "), (bad, failed.stderr)
