"""Evaluations stop an episode at a cycle: same outcome as playing it to the horizon, fewer steps.

The environment is the real household service over loopback gRPC (its state digests); the student
is scripted in process: each policy is a deterministic function of the prompt the real student
would be given (`render_messages` on the request), which is what a greedy student is.
"""

from __future__ import annotations

import hashlib
import re
from types import SimpleNamespace

import grpc
import pytest

from leap.v1 import environment_pb2_grpc, student_pb2
from orchestrator.episodes import CycleWatch, EpisodeSettings, play_student_episode, summarize
from services.environment.backends import CANDIDATES, Backend, EnvironmentSpec, EpisodeState, Observation, TaskSummary
from services.environment.backends.household import HouseholdBackend
from services.environment.server import EnvironmentServer
from services.runtime.config import ServerConfig
from services.student.prompts import render_messages

HORIZON = 20
WINDOW = 1
TASKS = [f"valid_unseen-{k:05d}" for k in range(12)]


def _pick(text: str, options: list[str]) -> str:
    return options[int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % len(options)]


def by_observation(prompt: list[dict], item) -> str:
    """Acts by the current observation only: comes back to the same places over and over (and now and
    then says something that is no action: "Nothing happens.")."""
    return _pick(item.observation, list(item.candidates) + ["dance"])


def by_prompt(prompt: list[dict], item) -> str:
    """Any action, chosen by the whole prompt."""
    return _pick(prompt[1]["content"], list(item.candidates))


def goal_seeker(prompt: list[dict], item) -> str:
    """A searcher that reads its notes: takes what the task names, carries it to the place the task
    names, opens what is closed, and walks to the places not searched yet (wins the simple tasks)."""
    text = prompt[1]["content"]
    goal = item.goal.lower().rstrip(".").split()
    wanted, target = goal[-3] if goal[-2] in ("in", "on") else goal[-1], goal[-1]
    candidates = list(item.candidates)
    holding = re.search(r"^Holding: (.*)$", text, re.MULTILINE).group(1)
    unsearched = re.search(r"^Not searched yet: (.*)$", text, re.MULTILINE).group(1)
    for c in candidates:
        if (c.startswith(f"move {wanted}") and c.split(" to ")[-1].startswith(target)
                or c.startswith(f"take {wanted}") and holding == "nothing" or c.startswith("open ")):
            return c
    moves = [c for c in candidates if c.startswith("go to ")]
    if holding.startswith(wanted):
        moves = [c for c in moves if c.startswith(f"go to {target}")] or moves
    else:
        places = [p.strip() for p in unsearched.split(",") if p.strip() != "none"]
        moves = [f"go to {p}" for p in places if f"go to {p}" in moves] or moves
    return moves[0] if moves else _pick(text, candidates)


class ScriptedStudent:
    """The StudentService's Act, answered by a policy over the prompt the real student would render."""

    def __init__(self, policy):
        self.policy = policy
        self.calls = 0

    def Act(self, request, timeout=None):
        item = request.items[0]
        self.calls += 1
        prompt = render_messages(item.env, item.goal, list(item.history), item.observation, list(item.candidates),
                                 history_window=WINDOW)
        action = self.policy(prompt, item)
        return student_pb2.ActResponse(results=[student_pb2.ActResult(
            request_id=item.request_id, action=action, raw_output=action, action_valid=True)])


class DoorEpisode(EpisodeState):
    """A door that opens after three waits; nothing the agent sees counts them (hidden state)."""

    def __init__(self, task: TaskSummary, horizon: int):
        self.task, self.horizon, self.waits = task, horizon or HORIZON, 0

    def _view(self) -> str:
        return "The door is open." if self.waits >= 3 else "You wait."

    def reset(self) -> Observation:
        return self._observation("You wait.", ["wait", "go through the door"])

    def step(self, action: str) -> Observation:
        self._begin_step()
        won = action == "go through the door" and self.waits >= 3
        self.waits += action == "wait"
        truncated = self._settle(won=won, score=float(won))
        return self._observation("You are out." if won else self._view(), ["wait", "go through the door"],
                                 reward=float(won), truncated=truncated)

    def state_key(self) -> bytes:
        return str(min(self.waits, 3)).encode()


class DoorBackend(Backend):
    name = "door"
    _task = TaskSummary("test-0", "test", "Leave the room.", "door")

    def spec(self):
        return EnvironmentSpec("door", "a door that opens after three waits", ("test",), CANDIDATES, HORIZON, "door 1")

    def num_tasks(self, split):
        return 1

    def list_tasks(self, split, offset, limit):
        return [self._task][offset:offset + limit]

    def task(self, task_id):
        return self._task

    def start(self, task_id, horizon):
        return DoorEpisode(self._task, horizon)


@pytest.fixture(scope="module")
def environment():
    server = EnvironmentServer(ServerConfig(port=0), {"household": HouseholdBackend(), "door": DoorBackend()})
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield environment_pb2_grpc.EnvironmentServiceStub(channel)
    channel.close()
    server.stop(grace=0)


def settings(stop: bool, temperature: float = 0.0) -> EpisodeSettings:
    return EpisodeSettings(env="household", horizon=HORIZON, temperature=temperature, max_new_tokens=8,
                           history_window=WINDOW, seed=0, stop_cycles=stop)


def play_all(environment, policy, stop: bool, temperature: float = 0.0):
    student = ScriptedStudent(policy)
    stubs = SimpleNamespace(env=environment, student=student)
    return [play_student_episode(stubs, task, settings(stop, temperature)) for task in TASKS], student.calls


def test_a_stopped_cycle_ends_as_playing_it_to_the_horizon_would(environment):
    cycled = wins = invalid = 0
    for policy in (by_observation, by_prompt, goal_seeker):
        full, full_calls = play_all(environment, policy, stop=False)
        stopped, stopped_calls = play_all(environment, policy, stop=True)
        for whole, short in zip(full, stopped):
            assert (short.done, short.won, short.score, short.truncated) == (
                whole.done, whole.won, whole.score, whole.truncated), (policy.__name__, whole.task.task_id)
            # The steps played before the stop are the first steps of the whole episode.
            assert [s.action for s in short.steps] == [s.action for s in whole.steps][:len(short.steps)]
            if "cycle_start" in short.metadata:
                cycled += 1
                first, period = int(short.metadata["cycle_start"]), int(short.metadata["cycle_period"])
                assert len(short.steps) == first + period < len(whole.steps) == HORIZON
                # From the first visit on, the whole episode goes round the cycle.
                cycle = [s.action for s in whole.steps[first:first + period]]
                assert [s.action for s in whole.steps[first:]] == (cycle * HORIZON)[:HORIZON - first]
            else:
                assert len(short.steps) == len(whole.steps)
        wins += sum(t.won for t in full)
        invalid += sum(not s.action_valid for t in full for s in t.steps)
        assert summarize(stopped)["overall"] | {"cycles": 0} == summarize(full)["overall"]
        assert stopped_calls <= full_calls
    assert cycled >= 10 and wins >= 2 and invalid >= 3  # the comparison saw every kind of episode


def test_sampled_episodes_and_unstopped_evaluations_play_to_the_end(environment):
    for stop, temperature in ((False, 0.0), (True, 0.3)):
        trajectories, _ = play_all(environment, by_observation, stop=stop, temperature=temperature)
        assert not any("cycle_start" in t.metadata for t in trajectories)
        assert all(t.won or len(t.steps) == HORIZON for t in trajectories)


def test_a_cycles_end_is_the_score_it_would_have_at_the_horizon():
    def ended(first: int, step: int, scores: list[float], horizon: int):
        watch = CycleWatch(EpisodeSettings(env="household", horizon=horizon, temperature=0.0, max_new_tokens=8,
                                           history_window=1, seed=0, stop_cycles=True))
        watch.scores = scores
        trajectory = SimpleNamespace(metadata={})
        watch.end(trajectory, first, step)
        return trajectory

    # Scores after actions 0..4; step 5 repeats step 2, so actions 2, 3, 4 repeat: action 9 (the
    # last of 10) is action 2 + (9 - 2) % 3 = 3.
    t = ended(2, 5, [0.0, 0.1, 0.2, 0.3, 0.4], 10)
    assert (t.done, t.won, t.truncated, t.score) == (True, False, True, 0.3)
    assert t.metadata == {"cycle_start": "2", "cycle_period": "3", "steps_at_horizon": "10"}
    assert ended(2, 5, [0.0, 0.1, 0.2, 0.3, 0.4], 11).score == 0.4
    assert ended(0, 1, [0.5], 20).score == 0.5  # standing still


def test_the_watch_keeps_out_of_sampled_episodes_unknown_horizons_and_digestless_environments():
    def watch(**kw):
        base = dict(env="household", horizon=20, temperature=0.0, max_new_tokens=8, history_window=1, seed=0,
                    stop_cycles=True)
        return CycleWatch(EpisodeSettings(**(base | kw)))

    obs = SimpleNamespace(text="You arrive at fridge 1.", candidates=["look"], state_digest="d" * 32)
    assert watch().revisits(0, "goal", [], obs) is None and watch().active
    on = watch()
    on.revisits(0, "goal", [], obs)
    assert on.revisits(1, "goal", [], obs) == 0
    for off in (watch(temperature=0.3), watch(horizon=0), watch(stop_cycles=False)):
        off.revisits(0, "goal", [], obs)
        assert not off.active and off.revisits(1, "goal", [], obs) is None
    bare = watch()
    no_digest = SimpleNamespace(text=obs.text, candidates=obs.candidates, state_digest="")
    bare.revisits(0, "goal", [], no_digest)
    assert bare.revisits(1, "goal", [], no_digest) is None


def test_a_student_view_that_repeats_over_a_changed_hidden_state_is_no_cycle(environment):
    def patient(prompt: list[dict], item) -> str:
        return "go through the door" if "open" in item.observation else "wait"

    student = ScriptedStudent(patient)
    door = EpisodeSettings(env="door", horizon=HORIZON, temperature=0.0, max_new_tokens=8, history_window=WINDOW,
                           seed=0, stop_cycles=True)
    # Steps 1 and 2 look the same to the student ("You wait." after "wait"); the door's count differs.
    won = play_student_episode(SimpleNamespace(env=environment, student=student), "test-0", door)
    assert won.won and [s.action for s in won.steps] == ["wait"] * 3 + ["go through the door"]
    assert "cycle_start" not in won.metadata

    def stubborn(prompt: list[dict], item) -> str:
        return "wait"

    stuck = play_student_episode(SimpleNamespace(env=environment, student=ScriptedStudent(stubborn)), "test-0", door)
    # The door is open from step 3 on, and waiting changes nothing more; step 4 is the first whose last
    # turn shown (the open door, "wait") comes back at step 5.
    assert not stuck.won and stuck.metadata["cycle_start"] == "4" and stuck.metadata["cycle_period"] == "1"
    assert len(stuck.steps) == 5 and stuck.truncated


def test_the_state_digest_never_reaches_the_student(environment):
    digests: list[str] = []

    class Recording:
        """The environment stub, noting every digest it hands the orchestrator."""

        def __getattr__(self, name):
            call = getattr(environment, name)

            def recorded(request, timeout=None):
                response = call(request, timeout=timeout)
                observation = getattr(response, "observation", None)
                if observation is not None and observation.state_digest:
                    digests.append(observation.state_digest)
                return response

            return recorded

    items = []

    class Auditing(ScriptedStudent):
        def Act(self, request, timeout=None):
            items.append(request.SerializeToString())
            return super().Act(request, timeout)

    stubs = SimpleNamespace(env=Recording(), student=Auditing(by_observation))
    for task in TASKS[:4]:
        play_student_episode(stubs, task, settings(stop=True))
    assert digests and items
    assert not any(d.encode() in item for d in digests for item in items)
