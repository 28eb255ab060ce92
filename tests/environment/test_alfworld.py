"""The alfworld backend on the real ALFWorld + TextWorld engine, over real gRPC on loopback.

Tasks are household tasks exported as ALFWorld game folders into a temporary cache (a few per
split, made once per test session); ALFWORLD_DATA points to a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("ALFWORLD_DATA", os.path.join(tempfile.gettempdir(), "leap-tests-alfworld-data"))

import grpc  # noqa: E402
import pytest  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from leap.v1 import environment_pb2 as pb  # noqa: E402
from services.environment.backends.alfworld import AlfworldBackend  # noqa: E402
from services.environment.backends.alfworld import engine as eng  # noqa: E402
from services.environment.backends.alfworld import export, games  # noqa: E402
from services.environment.backends.household.generator import HouseholdConfig, TaskSet  # noqa: E402
from services.environment.client import task_ref  # noqa: E402
from services.environment.server import ENVIRONMENT_SERVICE, EnvironmentServer  # noqa: E402
from services.runtime.config import ServerConfig  # noqa: E402
from services.runtime.errors import InvalidArgument, NotFound, ResourceExhausted  # noqa: E402
from tests.environment.server_helpers import code_of, served  # noqa: E402

TOKEN = "alfworld-test-token"
SIZES = {"train_tasks": "6", "valid_seen_tasks": "2", "valid_unseen_tasks": "4"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("alfworld-cache")


@pytest.fixture(scope="module")
def backend(cache) -> AlfworldBackend:
    b = AlfworldBackend(cache_dir=str(cache), **SIZES)
    yield b
    b.close()


server, env, oracle = served("alfworld", TOKEN, max_sessions=32, timeout_s=60, oracle_timeout_s=120)


def shows(message, secret: str) -> bool:
    text = text_format.MessageToString(message, as_utf8=True)
    return re.search(r"(?<![\w])" + re.escape(secret) + r"(?![\w])", text, re.IGNORECASE) is not None


def test_spec_and_task_lists(env, cache):
    [info] = env.list_environments()
    assert info.name == "alfworld" and info.version == "alfworld 0.4.2 (textworld 1.7.0)"
    assert list(info.splits) == ["train", "valid_seen", "valid_unseen"] and info.default_horizon == 50
    assert set(info.experts) == {pb.EXPERT_KIND_PLANNER, pb.EXPERT_KIND_SEARCHER} and len(info.task_types) == 6
    tasks = {split: list(env.list_tasks("alfworld", split, page_size=3)) for split in info.splits}
    assert {s: len(t) for s, t in tasks.items()} == {"train": 6, "valid_seen": 2, "valid_unseen": 4}
    # One task per game folder, the id being the folder's path; the goal is the game's own sentence.
    folders = sorted(p.parent for p in cache.rglob("game.tw-pddl"))
    assert len(folders) == 12
    root = folders[0].parents[2]
    ids = {t.task.task_id for ts in tasks.values() for t in ts}
    assert ids == {f.relative_to(root).as_posix() for f in folders}
    for t in tasks["train"]:
        grammar = json.loads((root / t.task.task_id / "game.tw-pddl").read_text())["grammar"]
        assert f"Your task is to: {t.goal.rstrip('.')}." in grammar and t.task_type in games.TASK_TYPES


def test_play_the_planner_plan_over_grpc(env, oracle):
    task = next(iter(env.list_tasks("alfworld", "valid_unseen"))).task
    reset = env.reset("alfworld", task_id=task.task_id)
    first = reset.observation
    assert first.text.startswith("You are in the middle of a room.") and "Welcome" not in first.text
    assert "help" in first.candidates and list(first.candidates) == sorted(first.candidates)
    nothing = env.step(reset.session_id, "take the moon from the sky")
    assert nothing.text == "Nothing happens." and not nothing.last_action_valid and nothing.step == 1
    plan = oracle.privileged_state(task_ref("alfworld", task.task_id), ["take the moon from the sky"]).optimal_actions
    assert plan
    for action in plan:
        obs = env.step(reset.session_id, action)
        assert obs.last_action_valid, (action, obs.text)
    assert obs.won and obs.done and obs.score == 1.0 and not obs.candidates
    code, details = code_of(env.step, reset.session_id, "look")
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    env.close_session(reset.session_id)


def test_planner_demonstrations_win_and_searcher_plays_alfworlds_way(env, oracle):
    for split in ("valid_seen", "valid_unseen"):  # bench/alfworld_bench.py runs every task of larger sets
        for t in env.list_tasks("alfworld", split):
            demo = oracle.demonstration(t.task, "planner")
            assert demo.won and demo.agent == "planner" and all(s.reason and s.action_valid for s in demo.steps)
    task = next(iter(env.list_tasks("alfworld", "train"))).task
    demo = oracle.demonstration(task, "searcher", horizon=50)
    assert demo.agent == "searching_expert" and demo.steps[0].action == "look"  # ALFWorld's expert looks first
    assert demo.won or demo.truncated or "expert_gave_up" in demo.metadata
    # The demonstration is the expert's advice at every prefix of itself (replays are exact).
    actions = [s.action for s in demo.steps]
    for k in (0, 1, len(actions) // 2, len(actions) - 1):
        assert oracle.expert_actions(task, actions[:k], "searcher").next_action == actions[k]


def test_replays_of_any_history_are_deterministic(backend):
    task = backend.list_tasks("train", 1, 1)[0].task_id
    noise = ["go to the moon", "\u00e9\u00e8 \U0001f600", "x" * 4000, "look", "Go To Fridge 1", "inventory", "help"]
    first = [backend.expert_advice(task, noise[:k], e) for k in range(len(noise) + 1) for e in ("planner", "searcher")]
    # A different history in between (the cached replay must reset, not continue).
    backend.expert_advice(backend.list_tasks("train", 2, 1)[0].task_id, ["look"], "searcher")
    backend.expert_advice(task, ["inventory", "inventory"], "searcher")
    again = [backend.expert_advice(task, noise[:k], e) for k in range(len(noise) + 1) for e in ("planner", "searcher")]
    assert first == again
    states = [backend.privileged_state(task, noise[:k]) for k in (len(noise), 0, len(noise))]
    assert states[0] == states[2] and states[0].optimal_actions == states[1].optimal_actions
    assert states[0].extra["replayed_actions"] == str(len(noise))


def test_privileged_state_in_leaps_form(backend):
    for summary in backend.list_tasks("train", 0, 6):
        state = backend.privileged_state(summary.task_id, [])
        kinds = {backend.game(summary.task_id).object_kind, backend.game(summary.task_id).toggle_kind} - {""}
        assert state.optimal_actions and state.essential_objects and state.critical_locations
        assert all(o.rsplit(" ", 1)[0] in kinds for o in state.essential_objects)
        # Nothing seen yet: every task object is a secret (its place, its receptacle, its name).
        for obj in state.essential_objects:
            where = next(f for f in state.facts if f.startswith(obj + " is "))
            assert {where, obj, where.rsplit(" ", 2)[-2] + " " + where.rsplit(" ", 1)[-1]} <= set(state.secrets)
        # After the plan, the task is won and the objects are no secret anymore.
        done = backend.privileged_state(summary.task_id, list(state.optimal_actions))
        assert done.extra["won"] == "true" and not done.optimal_actions and not done.secrets


def hidden(secrets) -> list[str]:
    """The secrets that are hidden objects or their places (receptacle names are public: the room lists them)."""
    return [s for s in secrets if " is " in s or any(f.startswith(s + " is ") for f in secrets)]


def test_no_privileged_fact_in_environment_messages_and_rationales(env, oracle, backend):
    """Along the planner's path (straight to hidden objects), no EnvironmentService response names a hidden
    object or its place before the agent has seen it, and no rationale names any secret."""
    for summary in backend.list_tasks("valid_unseen", 0, 4) + backend.list_tasks("train", 0, 3):
        ref = task_ref("alfworld", summary.task_id)
        reset = env.reset("alfworld", task_id=summary.task_id)
        actions: list[str] = []
        secrets = oracle.privileged_state(ref, actions).secrets
        assert secrets and not any(shows(reset, s) for s in hidden(secrets))
        for expert in ("planner", "searcher"):
            advice = oracle.expert_actions(ref, actions, expert)
            assert not any(re.search(r"(?<![\w])" + re.escape(s) + r"(?![\w])", advice.rationale, re.I)
                           for s in secrets), (expert, advice.rationale, secrets)
        for action in oracle.privileged_state(ref, actions).optimal_actions:
            obs = env.step(reset.session_id, action)
            actions.append(action)
            secrets = oracle.privileged_state(ref, actions).secrets
            assert not any(shows(obs, s) for s in hidden(secrets)), (summary.task_id, actions)
            for expert in ("planner", "searcher"):
                rationale = oracle.expert_actions(ref, actions, expert).rationale
                assert not any(re.search(r"(?<![\w])" + re.escape(s) + r"(?![\w])", rationale, re.I) for s in secrets)
        assert obs.won
        env.close_session(reset.session_id)


def test_hostile_requests(env, oracle, server):
    for bad in ("../../../../etc/passwd", "train/../../x", "x" * 300, "train\x00", "\u00e9"):
        code, _ = code_of(env.reset, "alfworld", task_id=bad)
        assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), bad
        code, _ = code_of(oracle.privileged_state, task_ref("alfworld", bad))
        assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), bad
    code, details = code_of(env.reset, "alfworld", task_id="train/nope/trial_x")
    assert code == grpc.StatusCode.NOT_FOUND and "ListTasks" in details
    code, details = code_of(env.reset, "alfworld", split="valid_train")
    assert code == grpc.StatusCode.NOT_FOUND and "valid splits: train (6 tasks)" in details
    r = env.reset("alfworld", split="train", seed=2**62)  # wraps around
    for action in ("\x00", "go to \x00fridge 1", "LOOK", "\U0001f600" * 100):
        obs = env.step(r.session_id, action)
        assert obs.text == "Nothing happens." and not obs.last_action_valid
    assert env.step(r.session_id, "\n\tlook  ").last_action_valid  # ALFWorld strips surrounding whitespace
    assert code_of(env.step, r.session_id, "y" * 5000)[0] == grpc.StatusCode.INVALID_ARGUMENT
    env.close_session(r.session_id)
    task = task_ref("alfworld", next(iter(env.list_tasks("alfworld", "train"))).task.task_id)
    assert oracle.expert_actions(task, ["\x00"] * 300, "planner").next_action
    assert code_of(oracle.expert_actions, task, [], "prior_searcher")[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(oracle.demonstration, task, "planner", horizon=-1)[0] == grpc.StatusCode.INVALID_ARGUMENT
    short = oracle.demonstration(task, "searcher", horizon=1)
    assert len(short.steps) == 1 and short.truncated and not short.won


def test_hostile_options(tmp_path, cache):
    for options, words in [
        ({"nope": "1"}, "unknown alfworld option"),
        ({"train_tasks": "-3"}, "train_tasks must be between"),
        ({"train_tasks": "1e9"}, "not an integer"),
        ({"train_tasks": "9" * 40}, "not an integer"),
        ({"horizon": "0"}, "horizon must be"),
        ({"max_engines": "\uff11"}, "not an integer"),  # a full-width digit
        ({"games": "/tmp/\x00x"}, "NUL"),
        ({"games": str(tmp_path / "missing")}, "not a folder"),
        ({"games": str(tmp_path)}, "no servable ALFWorld game folder"),
        ({"split": "valid_unseen"}, "only for games=DIR"),
        ({"games": str(tmp_path), "split": "../x"}, "split must be one of"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            AlfworldBackend(cache_dir=str(cache), **options)
        assert words in str(err.value), (options, str(err.value))


def _exported_root(tmp_path: Path) -> Path:
    """An official-looking data root: json_2.1.1/{train,valid_unseen}/<task>/<trial>/, plus broken folders."""
    root = tmp_path / "data" / "json_2.1.1"
    tasks = TaskSet(HouseholdConfig())
    for split, n in (("train", 3), ("valid_unseen", 2)):
        for i in range(n):
            scene = tasks.scene(split, i)
            export.write_folder(root / export.folder_of(scene), export.export_scene(scene))
    broken = root / "train" / "pick_and_place_simple-Apple-None-Fridge-1"
    (broken / "trial_not_json").mkdir(parents=True)
    (broken / "trial_not_json" / "traj_data.json").write_text("{not json")
    (broken / "trial_not_json" / "game.tw-pddl").write_text("{}")
    (broken / "trial_no_game").mkdir()
    (broken / "trial_no_game" / "traj_data.json").write_text(json.dumps({"task_type": "pick_and_place_simple",
                                                                          "pddl_params": {"object_target": "Apple"}}))
    good = next((root / "train").rglob("game.tw-pddl")).parent
    unsolvable = broken / "trial_unsolvable"
    shutil.copytree(good, unsolvable)
    data = json.loads((unsolvable / "game.tw-pddl").read_text())
    (unsolvable / "game.tw-pddl").write_text(json.dumps(dict(data, solvable=False)))
    sliced = root / "train" / "pick_and_place_simple-AppleSliced-None-Fridge-1" / "trial_1"
    shutil.copytree(good, sliced)
    # A game whose grammar still says UNKNOWN GOAL (not processed by alfworld-generate): the goal is filled in.
    unknown = root / "valid_unseen" / "look_at_obj_in_light-Book-None-DeskLamp-1" / "trial_unknown_goal"
    look = next(s for s in (tasks.scene("train", i) for i in range(12)) if s.task.task_type == "look_at_obj_in_light")
    files = export.export_scene(look)
    game = json.loads(files["game.tw-pddl"])
    game["grammar"] = game["grammar"].replace(look.task.goal.rstrip("."), "UNKNOWN GOAL")
    files["game.tw-pddl"] = json.dumps(game)
    export.write_folder(unknown, files)
    return tmp_path / "data"


def test_games_folder_with_official_layout(tmp_path):
    root = _exported_root(tmp_path)
    b = AlfworldBackend(games=str(root), max_engines="1")
    try:
        assert b.spec().splits == ("train", "valid_unseen")
        assert b.num_tasks("train") == 3 and b.num_tasks("valid_unseen") == 3
        reasons = dict(b.skipped)
        assert "not readable JSON" in reasons["train/pick_and_place_simple-Apple-None-Fridge-1/trial_not_json"]
        assert "game.tw-pddl is missing" in reasons["train/pick_and_place_simple-Apple-None-Fridge-1/trial_no_game"]
        assert "not marked solvable" in reasons["train/pick_and_place_simple-Apple-None-Fridge-1/trial_unsolvable"]
        assert any("sliced" in why for why in reasons.values())
        unknown = b.task("valid_unseen/look_at_obj_in_light-Book-None-DeskLamp-1/trial_unknown_goal")
        assert unknown.goal.startswith("look at ") and unknown.goal.endswith(" under the desklamp.")
        episode = b.start(unknown.task_id, 0)
        assert f"Your task is to: {unknown.goal}" in episode.reset().text
        with pytest.raises(ResourceExhausted) as err:  # one engine, held by the open episode
            b.start(unknown.task_id, 0)
        assert "max_engines" in str(err.value)
        episode.close()
        for summary in b.list_tasks("train", 0, 10) + b.list_tasks("valid_unseen", 0, 10):
            assert b.demonstration(summary.task_id, "planner", 0).won
        with pytest.raises(NotFound):
            b.task("train/pick_and_place_simple-Apple-None-Fridge-1/trial_unsolvable")
    finally:
        b.close()
    # One split's folder: its name is the split; the split option overrides it.
    single = AlfworldBackend(games=str(root / "json_2.1.1" / "valid_unseen"))
    assert single.spec().splits == ("valid_unseen",) and single.num_tasks("valid_unseen") == 3
    assert AlfworldBackend(games=str(root / "json_2.1.1" / "valid_unseen"), split="train").num_tasks("train") == 3


def test_speedups_change_nothing(backend):
    game = backend.game(backend.list_tasks("valid_unseen", 0, 1)[0].task_id)
    data = games.load_game_data(game)
    plan = backend.privileged_state(game.task_id, []).optimal_actions
    actions = ["look", "go to nowhere", *plan[:3], "inventory", *plan[3:]]

    def play() -> list:
        engine = eng.Engine()
        engine.load(game.task_id, data)
        frames = [engine.reset(facts=True)] + [engine.step(a, facts=True) for a in actions]
        out = [(f.text, f.admissible, f.won, f.valid, sorted(map(str, f.facts))) for f in frames]
        return out + [engine.plan()]

    with eng.speedups_enabled(False):
        slow = play()
    assert play() == slow and slow[-2][2]  # won at the end


def test_export_is_cached_and_atomic(cache):
    folder = next(cache.iterdir())
    assert folder.name == "household-1.0-export1-train6-valid_seen2-valid_unseen4"
    assert not [p for p in cache.iterdir() if p.name.endswith(".partial")]
    before = sorted(str(p) for p in folder.rglob("*"))
    again = AlfworldBackend(cache_dir=str(cache), **SIZES)  # reuses, never rewrites
    assert sorted(str(p) for p in folder.rglob("*")) == before and again.num_tasks("train") == 6


def test_no_privileged_service_without_a_token(backend):
    srv = EnvironmentServer(ServerConfig(port=0), {"alfworld": backend}, token=None)
    srv.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            reflection = channel.unary_unary(f"/{ENVIRONMENT_SERVICE}/ListEnvironments",
                                             request_serializer=None, response_deserializer=None)
            listed = pb.ListEnvironmentsResponse.FromString(reflection(b"", timeout=10))
            assert listed.environments[0].name == "alfworld"
        assert srv.privileged_port is None
    finally:
        srv.stop(grace=0)


def test_a_privileged_replay_stops_at_its_deadline_and_frees_the_replays(env, oracle):
    """A history of thousands of moves replays for minutes, under the lock every privileged call of the
    backend shares: past the caller's deadline it stops (what it reached stays cached), so the next
    call, on another task, is served at once."""
    import time

    tasks = [t.task.task_id for t in env.list_tasks("alfworld", "train")]
    reset = env.reset("alfworld", task_id=tasks[0])
    moves = [c for c in reset.observation.candidates if c.startswith("go to")][:2]
    env.close_session(reset.session_id)
    history = [moves[i % 2] for i in range(3000)]
    started = time.monotonic()
    code, _ = code_of(oracle.privileged_state, task_ref("alfworld", tasks[0]), history, timeout_s=1.0)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    state = oracle.privileged_state(task_ref("alfworld", tasks[1]), timeout_s=60)
    assert state.optimal_actions and time.monotonic() - started < 20  # not the whole replay's minutes
