"""The webshop backend served by the real environment server over loopback gRPC: episodes, the token-
guarded PrivilegedService, errors, and no privileged string in any EnvironmentService response."""

from __future__ import annotations

import json
import re

import grpc
from google.protobuf import text_format

from leap.v1 import common_pb2
from leap.v1 import environment_pb2 as pb
from services.environment.backends.webshop.backend import WebShopBackend
from services.environment.client import task_ref
from services.environment.server import ENVIRONMENT_SERVICE
from tests.environment.server_helpers import code_of, served

TOKEN = "webshop-test-token"
BACKEND = WebShopBackend(products=1500, train_tasks=50, valid_seen_tasks=20, valid_unseen_tasks=20)


server, env, oracle = served("webshop", TOKEN, max_sessions=64, timeout_s=20, backend=BACKEND,
                             max_message_bytes=1024 * 1024)


def test_lists_the_environment_and_its_tasks(env):
    [info] = env.list_environments()
    assert info.name == "webshop" and info.version.startswith("webshop-synthetic")
    assert list(info.splits) == ["train", "valid_seen", "valid_unseen"] and info.default_horizon == 15
    assert info.action_space == common_pb2.ACTION_SPACE_TEMPLATED
    tasks = list(env.list_tasks("webshop", "valid_unseen", page_size=7))
    assert [t.task.task_id for t in tasks] == [f"valid_unseen-{i:05d}" for i in range(20)]
    assert all("price lower than" in t.goal for t in tasks)


def test_an_episode_over_grpc_with_the_privileged_service(env, oracle):
    task_id = "train-00007"
    ref = task_ref("webshop", task_id)
    state = oracle.privileged_state(ref)
    record = json.loads(state.goal_record_json)
    assert record["instruction_text"] == state.goal and state.extra["target_asin"]
    assert state.optimal_actions[0].startswith("search[") and state.secrets
    reset = env.reset("webshop", task_id=task_id)
    assert list(reset.observation.action_templates) == ["search[<query>]"]
    history: list[str] = []
    for action in state.optimal_actions:
        advice = oracle.expert_actions(ref, history, "planner")
        assert advice.next_action == action and advice.rationale
        obs = env.step(reset.session_id, action)
        history.append(action)
        assert obs.last_action_valid
    assert obs.done and obs.won and obs.score == 1.0
    assert oracle.expert_actions(ref, history, "planner").already_won
    code, details = code_of(env.step, reset.session_id, "click[buy now]")
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    env.close_session(reset.session_id)
    demo = oracle.demonstration(ref, "searcher")
    assert demo.steps and all(s.reason for s in demo.steps) and demo.metadata["engine"].startswith("webshop")
    # Hostile task ids over the wire are NOT_FOUND, never INTERNAL.
    refused = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    for bad in ("train-" + "9" * 5000, "train-１", "train-00001\x00", "valid_unseen-00020"):
        assert code_of(oracle.privileged_state, task_ref("webshop", bad))[0] in refused
        assert code_of(env.reset, "webshop", task_id=bad)[0] in refused
    assert code_of(env.reset, "webshop", task_id="valid_unseen-00020")[0] == grpc.StatusCode.NOT_FOUND
    code, _ = code_of(oracle.expert_actions, ref, ["x" * 5000], "planner")
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_no_privileged_string_in_environment_responses(env, oracle):
    """Every EnvironmentService response along planner, searcher and random play, checked against the
    privileged state of the same history: no goal record, no unseen satisfying title, no page marking
    a product as the right one, no breadcrumb or price bound field."""
    import random

    rng = random.Random(3)

    def dump(message) -> str:
        return text_format.MessageToString(message, as_utf8=True)

    for k in range(9):
        task_id = f"valid_unseen-{k:05d}"
        ref = task_ref("webshop", task_id)
        first = oracle.privileged_state(ref)
        reset = env.reset("webshop", task_id=task_id)
        listed = [dump(m) for m in env.list_tasks("webshop", "valid_unseen", page_size=50)]
        responses = [dump(reset)] + listed
        history: list[str] = []
        obs = reset.observation
        mode = ("planner", "searcher", "random")[k % 3]
        while not obs.done:
            if mode != "random":
                action = oracle.expert_actions(ref, history, mode).next_action
            else:
                action = rng.choice(list(obs.candidates) or ["search[" + first.goal.split(",")[0] + "]"])
            obs = env.step(reset.session_id, action)
            history.append(action)
            text = dump(obs)
            priv = oracle.privileged_state(ref, history)
            assert priv.goal_record_json not in text
            for secret in priv.secrets:
                assert re.search(r"(?<![\w])" + re.escape(secret) + r"(?![\w])", text, re.IGNORECASE) is None, \
                    (task_id, secret)
            responses.append(text)
        env.close_session(reset.session_id)
        record = json.loads(first.goal_record_json)
        everything = "\n".join(responses)
        for field in ("price_upper", "goal_options", "product_category", "goal record", "target"):
            assert field not in everything
        assert record["product_category"] not in everything
        for fact in first.facts:
            assert fact not in everything


def test_garbage_steps_are_invalid_argument_or_invalid_actions(env, server):
    reset = env.reset("webshop", split="train", seed=4)
    for action in ("", "   ", "x" * 5000):
        assert code_of(env.step, reset.session_id, action)[0] == grpc.StatusCode.INVALID_ARGUMENT
    body = pb.StepRequest(session_id=reset.session_id, action="search").SerializeToString()[:-2] + b"\xc3\x28"
    call = env.channel.unary_unary(f"/{ENVIRONMENT_SERVICE}/Step", request_serializer=None, response_deserializer=None)
    assert code_of(call, body, timeout=5)[0] == grpc.StatusCode.INVALID_ARGUMENT
    for action in ("search[\x00\x01]", "click[\u202e]", "search[" + "ｈ" * 1000 + "]", "click[../../etc/passwd]"):
        obs = env.step(reset.session_id, action)
        assert obs.step > 0
    env.close_session(reset.session_id)
