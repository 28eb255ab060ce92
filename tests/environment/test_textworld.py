"""The textworld backend on TextWorld's engine, over real gRPC on loopback.

Games are generated on first use into a temporary cache, once per test module: the quick challenges
(treasure hunter, simple) and one cooking game; each takes one to five seconds to make.
"""

from __future__ import annotations

import re

import grpc
import pytest
from google.protobuf import text_format

from leap.v1 import environment_pb2 as pb
from services.environment.backends.textworld import TextWorldBackend
from services.environment.backends.textworld import backend as twb
from services.environment.backends.textworld import games as twg
from services.environment.client import task_ref
from services.runtime.errors import InvalidArgument
from tests.environment.server_helpers import code_of, served

TOKEN = "textworld-test-token"
OPTIONS = {"challenges": "tw-treasure_hunter,tw-simple", "train_tasks": "2",
           "valid_seen_tasks": "1", "valid_unseen_tasks": "1", "seed": "7"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("textworld-cache")


@pytest.fixture(scope="module")
def backend(cache):
    b = TextWorldBackend(cache_dir=str(cache), **OPTIONS)
    yield b
    b.close()


server, env, oracle = served("textworld", TOKEN, max_sessions=16, timeout_s=120)


def mentions(text: str, phrase: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(phrase) + r"(?![\w])", text, re.IGNORECASE) is not None


def test_spec_lists_and_generation(env, cache):
    [info] = env.list_environments()
    assert info.name == "textworld" and info.version == "textworld 1.7.0"
    assert list(info.splits) == ["train", "valid_seen", "valid_unseen"]
    assert list(info.experts) == [pb.EXPERT_KIND_PLANNER]
    assert list(info.task_types) == ["tw-treasure_hunter", "tw-simple"]
    tasks = list(env.list_tasks("textworld", "train", page_size=2)) + list(env.list_tasks("textworld", "valid_unseen"))
    assert [t.task.task_id for t in tasks] == ["train-00000", "train-00001", "valid_unseen-00000"]
    assert [t.task_type for t in tasks] == ["tw-treasure_hunter", "tw-simple", "tw-treasure_hunter"]
    assert all(t.goal for t in tasks)
    # Games are cached, one folder each, with no leftover temporary folder.
    root = next(cache.iterdir())
    assert sorted(p.name for p in (root / "train").iterdir()) == ["00000", "00001"]
    assert {p.name for p in (root / "train" / "00000").iterdir()} == {"game.z8", "game.json", "meta.json"}
    assert not list(root.rglob("*.partial"))


def test_generation_is_deterministic(tmp_path, backend):
    settings = [twg.settings_for(c, s, i, 7) for c in twg.CHALLENGES for s in twg.SPLITS for i in range(3)]
    assert settings == [twg.settings_for(c, s, i, 7) for c in twg.CHALLENGES for s in twg.SPLITS for i in range(3)]
    assert twg.settings_for("tw-cooking", "valid_unseen", 0, 7)["split"] == "valid"
    assert twg.settings_for("tw-cooking", "train", 0, 7)["split"] == "train"
    # Another cache, the same seed: the same game.
    other = TextWorldBackend(cache_dir=str(tmp_path), **OPTIONS)
    assert other.task("train-00000").goal == backend.task("train-00000").goal
    plan = backend.privileged_state("train-00000", []).optimal_actions
    assert other.privileged_state("train-00000", []).optimal_actions == plan


def test_play_the_walkthrough_over_grpc(env, oracle):
    for task_id in ("train-00000", "train-00001", "valid_unseen-00000"):
        reset = env.reset("textworld", task_id=task_id)
        first = reset.observation
        assert first.text and "$$" not in first.text and first.candidates  # the ASCII-art banner is gone
        plan = oracle.privileged_state(task_ref("textworld", task_id)).optimal_actions
        assert plan
        for action in plan:
            obs = env.step(reset.session_id, action)
            assert obs.last_action_valid, (task_id, action)
        assert obs.won and obs.done and obs.score == 1.0 and not obs.candidates
        env.close_session(reset.session_id)


def test_planner_demonstrations_and_advice(oracle, backend):
    for split, n in (("train", 2), ("valid_seen", 1), ("valid_unseen", 1)):
        for i in range(n):
            task = task_ref("textworld", f"{split}-{i:05d}")
            demo = oracle.demonstration(task, "planner")
            assert demo.won and demo.agent == "planner" and all(s.reason for s in demo.steps)
            actions = [s.action for s in demo.steps]
            assert oracle.expert_actions(task, actions[:1], "planner").next_action == actions[1]
            assert oracle.expert_actions(task, actions, "planner").already_won
            # The game is over once won: actions after the end change nothing.
            after = oracle.privileged_state(task, [*actions, "look", "restart", "go north"])
            assert after.extra["won"] == "true" and not after.optimal_actions
    assert code_of(oracle.expert_actions, task_ref("textworld", "train-00000"), [], "searcher")[0] == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_privileged_state_and_no_leak(env, oracle):
    """Along the planner's path, no EnvironmentService response names a hidden thing before it was seen,
    and no rationale names any secret."""
    found_secret = False
    for task_id in ("train-00001", "valid_unseen-00000", "train-00000"):
        ref = task_ref("textworld", task_id)
        state = oracle.privileged_state(ref)
        assert state.essential_objects and state.critical_locations and state.facts
        reset = env.reset("textworld", task_id=task_id)
        actions: list[str] = []
        for action in state.optimal_actions:
            secrets = oracle.privileged_state(ref, actions).secrets
            found_secret |= bool(secrets)
            things = [s for s in secrets if " is " in s or any(f.startswith(s + " is ") for f in secrets)]
            rationale = oracle.expert_actions(ref, actions, "planner").rationale
            assert not any(mentions(rationale, s) for s in secrets), (rationale, secrets)
            obs = env.step(reset.session_id, action)
            actions.append(action)
            text = text_format.MessageToString(obs, as_utf8=True)
            still = oracle.privileged_state(ref, actions).secrets
            assert not any(mentions(text, s) for s in things if s in still), (task_id, actions)
        env.close_session(reset.session_id)
    assert found_secret  # tw-simple hides its key in a closed chest: the check above is not vacuous


def test_the_games_own_commands_never_reach_it(env, oracle):
    """TextWorld builds its games with debugging commands (`print_state` prints the whole hidden world;
    "enable print state option" prints it after every move; `tw-print`, `tw-extra-infos`) and the
    interpreter obeys restart, undo, save and quit: none reaches the game, in any case or chain."""
    ref = task_ref("textworld", "train-00001")
    state = oracle.privileged_state(ref)
    secrets = list(state.secrets)
    assert secrets  # the hidden key and its trunk: the check below is not vacuous
    reset = env.reset("textworld", task_id="train-00001")
    for command in ("print_state", "PRINT_STATE", "look. print_state", "look then print_state",
                    "enable print state option", "tw-print state", "tw-extra-infos facts", "restart", "undo",
                    "save", "quit", "q"):
        obs = env.step(reset.session_id, command)
        assert obs.text == "Nothing happens." and not obs.last_action_valid and not obs.done, (command, obs.text)
        assert list(obs.candidates) == list(reset.observation.candidates), command
        assert not any(mentions(obs.text, s) for s in secrets)
    # The game went on where it was: the planner's first move is still admissible and valid.
    first = state.optimal_actions[0]
    assert env.step(reset.session_id, first).last_action_valid
    env.close_session(reset.session_id)


def test_hostile_requests(env, oracle):
    for bad in ("train-99999", "train--1", "train-\uff11", "../train-00000", "x" * 300, "valid_unseen-1e3"):
        code, _ = code_of(env.reset, "textworld", task_id=bad)
        assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), bad
    r = env.reset("textworld", split="train", seed=-5)
    for action in ("\x00", "look\ntake all\nquit", "\u00fc\u00df", "x" * 4000, "restart", "quit"):
        obs = env.step(r.session_id, action)
        assert not obs.last_action_valid and not obs.done, action
    assert code_of(env.step, r.session_id, "y" * 5000)[0] == grpc.StatusCode.INVALID_ARGUMENT
    env.close_session(r.session_id)
    ref = task_ref("textworld", "train-00001")
    advice = oracle.expert_actions(ref, ["\x00", "quit", "restart", "xyzzy"] * 20, "planner")
    assert advice.next_action and advice.next_action == oracle.expert_actions(ref, [], "planner").next_action


def test_hostile_options(tmp_path):
    for options, words in [
        ({"nope": "1"}, "unknown textworld option"),
        ({"challenges": "tw-cooking,../../x"}, "challenges must be"),
        ({"challenges": ""}, "challenges must be"),
        ({"seed": "-1"}, "seed must be"),
        ({"seed": "99999999999"}, "seed must be"),
        ({"train_tasks": "0"}, "train_tasks must be"),
        ({"horizon": "x"}, "not an integer"),
        ({"cache_dir": "/tmp/\x00"}, "NUL"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            TextWorldBackend(**{**OPTIONS, "cache_dir": str(tmp_path), **options})
        assert words in str(err.value), (options, str(err.value))


def test_banner_and_sanitizer():
    assert twb.strip_banner("\n  ____  \n |  $$ \\ \n\n-= Kitchen =-\nYou are in a kitchen.") == \
        "-= Kitchen =-\nYou are in a kitchen."
    assert twb.sanitize("look\ntake all\x00\u00fc") == "look take all"


def test_a_cooking_game(tmp_path):
    b = TextWorldBackend(cache_dir=str(tmp_path), challenges="tw-cooking", train_tasks="1", valid_seen_tasks="1",
                         valid_unseen_tasks="1")
    try:
        demo = b.demonstration("valid_unseen-00000", "planner", 0)
        assert demo.won and demo.task.task_type == "tw-cooking" and demo.steps[-1].action == "eat meal"
    finally:
        b.close()
