"""The transport-free session manager and privileged oracle (no gRPC)."""

from __future__ import annotations

import threading
import time

import pytest

from leap.v1 import common_pb2
from services.environment import backends, convert
from services.environment.backends import Backend, EnvironmentSpec, Episode, Observation, TaskSummary
from services.environment.backends.household import HouseholdBackend
from services.environment.service import EnvironmentSessions, PrivilegedOracle, validate_action
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def household():
    return HouseholdBackend(valid_seen_tasks=20)


def make(household, **kw):
    return EnvironmentSessions({"household": household}, **kw)


def test_session_limit_names_the_count_and_close_frees_a_slot(household):
    sessions = make(household, max_sessions=2)
    a = sessions.reset("household", split="train", seed=1)
    sessions.reset("household", split="train", seed=2)
    with pytest.raises(ResourceExhausted, match=r"2 open, the limit is 2.*Close"):
        sessions.reset("household", split="train", seed=3)
    assert sessions.close(a.session_id).steps == 0
    sessions.reset("household", split="train", seed=3)
    assert sessions.open_sessions == 2


def test_idle_sessions_expire_after_the_ttl(household):
    clock = FakeClock()
    sessions = make(household, max_sessions=2, idle_ttl_s=60, clock=clock)
    a = sessions.reset("household", split="train", seed=1)
    clock.now += 30
    b = sessions.reset("household", split="train", seed=2)
    clock.now += 31  # a idle for 61 s, b for 31 s
    assert sessions.reap() == 1
    with pytest.raises(NotFound, match="idle for more than 60s"):
        sessions.step(a.session_id, "look")
    sessions.step(b.session_id, "look")  # activity keeps a session alive
    clock.now += 59
    assert sessions.reap() == 0
    # A full server reaps expired sessions before refusing a Reset.
    sessions.reset("household", split="train", seed=3)
    clock.now += 61
    sessions.reset("household", split="train", seed=4)
    assert sessions.open_sessions == 1


def test_steps_refused_on_a_finished_episode_do_not_keep_its_session_alive(household):
    """A finished session is only waiting for its Close: a client stepping it again and again (each
    refused) must not keep it, and its memory, from expiring."""
    clock = FakeClock()
    sessions = make(household, max_sessions=4, idle_ttl_s=60, clock=clock)
    done = sessions.reset("household", split="train", seed=1, horizon=1)
    sessions.step(done.session_id, "look")
    for _ in range(3):
        clock.now += 30
        with pytest.raises(FailedPrecondition, match="is done"):
            sessions.step(done.session_id, "look")
    assert sessions.reap() == 1


def test_the_reaper_thread_evicts_in_the_background(household):
    sessions = make(household, idle_ttl_s=0.2, reap_interval_s=0.05)
    sessions.start_reaper()
    try:
        sessions.reset("household", split="train", seed=1)
        deadline = time.monotonic() + 10
        while sessions.open_sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sessions.open_sessions == 0
    finally:
        sessions.stop()


def test_errors_are_clear(household):
    sessions = make(household)
    with pytest.raises(NotFound, match="unknown environment 'nope'; valid names: household"):
        sessions.reset("nope", split="train")
    with pytest.raises(NotFound, match="valid splits: train"):
        sessions.reset("household", split="test")
    with pytest.raises(NotFound, match="valid task ids"):
        sessions.reset("household", task_id="train-99999")
    with pytest.raises(InvalidArgument, match="belongs to split 'train'"):
        sessions.reset("household", task_id="train-00001", split="valid_seen")
    with pytest.raises(InvalidArgument, match="task_id, or a split"):
        sessions.reset("household")
    with pytest.raises(InvalidArgument, match="horizon"):
        sessions.reset("household", split="train", horizon=-1)
    with pytest.raises(NotFound, match="unknown session"):
        sessions.step("nope", "look")
    with pytest.raises(InvalidArgument, match="session_id is empty"):
        sessions.step("", "look")
    r = sessions.reset("household", split="train", seed=0, horizon=1)
    for bad, message in ((b"", "empty"), ("   ", "empty"), (b"go to \xff", "not valid UTF-8"),
                         ("\udcff", "not valid UTF-8"), ("x" * 4097, "4097 bytes"), ("\u00e9" * 2049, "4098 bytes")):
        with pytest.raises(InvalidArgument, match=message):
            sessions.step(r.session_id, bad)
    obs = sessions.step(r.session_id, "look")
    assert obs.done and obs.truncated and not obs.won and obs.step == 1 and obs.candidates == ()
    with pytest.raises(FailedPrecondition, match="reached its horizon after 1 steps.*Close it"):
        sessions.step(r.session_id, "look")
    assert sessions.close(r.session_id).won is False
    with pytest.raises(NotFound):
        sessions.close(r.session_id)
    assert validate_action(b"look") == "look" and validate_action("\u00e9" * 2048) == "\u00e9" * 2048


def test_a_won_episode_is_done_and_scored(household):
    sessions = make(household)
    r = sessions.reset("household", task_id="train-00001")
    plan = household.privileged_state("train-00001", []).optimal_actions
    for action in plan:
        obs = sessions.step(r.session_id, action)
    assert obs.done and obs.won and not obs.truncated and obs.score == 1.0 and obs.reward == 1.0
    with pytest.raises(FailedPrecondition, match="was won"):
        sessions.step(r.session_id, "look")
    summary = sessions.close(r.session_id)
    assert (summary.steps, summary.won, summary.score) == (len(plan), True, 1.0)


def test_paging_with_opaque_tokens(household):
    sessions = make(household)
    ids, token, pages = [], "", 0
    while True:
        page = sessions.list_tasks("household", "valid_seen", 7, token)
        assert page.total == 20
        ids += [t.task_id for t in page.tasks]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3 and ids == [f"valid_seen-{i:05d}" for i in range(20)]
    assert len(sessions.list_tasks("household", "train", 0).tasks) == 100
    assert len(sessions.list_tasks("household", "train", 5000).tasks) == 1000
    other = sessions.list_tasks("household", "train", 5).next_page_token
    with pytest.raises(InvalidArgument, match="another env or split"):
        sessions.list_tasks("household", "valid_seen", 5, other)
    for garbage in ("xyz", "!!!", "eyJvIjoxfQ"):
        with pytest.raises(InvalidArgument, match="page_token"):
            sessions.list_tasks("household", "valid_seen", 5, garbage)
    with pytest.raises(InvalidArgument, match="page_size"):
        sessions.list_tasks("household", "valid_seen", -1)


def test_concurrent_sessions_from_many_threads(household):
    sessions = make(household, max_sessions=64)
    errors: list[BaseException] = []
    won = []

    def player(seed: int) -> None:
        try:
            for k in range(3):
                task_id = f"train-{seed * 3 + k:05d}"
                r = sessions.reset("household", task_id=task_id)
                for action in household.privileged_state(task_id, []).optimal_actions:
                    obs = sessions.step(r.session_id, action)
                won.append(obs.won)
                sessions.close(r.session_id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=player, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(won) == 48 and all(won)
    assert sessions.open_sessions == 0

    # One session hammered from several threads: steps are serialised, none is lost.
    r = sessions.reset("household", split="train", seed=0, horizon=400)
    done = []

    def hammer():
        for _ in range(50):
            done.append(sessions.step(r.session_id, "look").step)

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(done) == list(range(1, 301))


class EchoEpisode(Episode):
    """A free-form episode: any text is an action; score grows by 0.25 per 'progress'."""

    def __init__(self, task):
        self.task, self.horizon, self._steps, self._score = task, 3, 0, 0.0

    def reset(self):
        return Observation(text="$ ", action_templates=("<shell command>",))

    def step(self, action):
        self._steps += 1
        if action == "progress":
            self._score += 0.25
        return Observation(text=f"ran {action}", score=self._score, done=self._steps >= self.horizon,
                           truncated=self._steps >= self.horizon, step=self._steps,
                           action_templates=("<shell command>",))

    steps = property(lambda self: self._steps)
    done = property(lambda self: self._steps >= self.horizon)
    won = property(lambda self: False)
    score = property(lambda self: self._score)


class EchoBackend(Backend):
    name = "echo"

    def spec(self):
        return EnvironmentSpec("echo", "free-form test backend", ("test",), backends.FREE_FORM, 3, "echo 0")

    def num_tasks(self, split):
        if split != "test":
            raise NotFound("valid splits: test")
        return 1

    def list_tasks(self, split, offset, limit):
        return [TaskSummary("test-0", "test", "echo things")][offset:offset + limit]

    def task(self, task_id):
        if task_id != "test-0":
            raise NotFound("valid task ids: test-0")
        return TaskSummary("test-0", "test", "echo things")

    def start(self, task_id, horizon):
        return EchoEpisode(self.task(task_id))


def test_the_interface_allows_free_form_backends_and_partial_scores():
    backends.register("echo_test", EchoBackend)
    assert "echo_test" in backends.available()
    sessions = EnvironmentSessions({"echo": backends.create("echo_test"), "household": HouseholdBackend()})
    assert [s.name for s in sessions.list_environments()] == ["echo", "household"]
    r = sessions.reset("echo", split="test", seed=5)
    assert r.observation.candidates == ()
    obs = sessions.step(r.session_id, "ls -la | grep 'x y'")
    obs = sessions.step(r.session_id, "progress")
    message = convert.observation(obs)
    assert message.score == 0.25 and list(message.action_templates) == ["<shell command>"] and not message.candidates
    assert convert.environment_info(sessions.list_environments()[0]).action_space == common_pb2.ACTION_SPACE_FREE_FORM
    oracle = PrivilegedOracle({"echo": EchoBackend()})
    with pytest.raises(FailedPrecondition, match="no privileged state"):
        oracle.privileged_state("echo", "test-0")
    with pytest.raises(InvalidArgument, match="it offers: none"):
        oracle.expert_advice("echo", "test-0", expert="planner")
    with pytest.raises(NotFound, match="valid names: .*household"):
        backends.create("nope")
    with pytest.raises(ValueError):
        backends.register("bad name!", EchoBackend)


def test_privileged_oracle_validates_its_inputs(household):
    oracle = PrivilegedOracle({"household": household})
    with pytest.raises(InvalidArgument, match="unspecified; household offers: planner, searcher, prior_searcher"):
        oracle.expert_advice("household", "train-00001")
    with pytest.raises(InvalidArgument, match=r"actions\[1\] is not valid UTF-8"):
        oracle.privileged_state("household", "train-00001", actions=["look", b"\xff"])
    with pytest.raises(InvalidArgument, match="task_id is empty"):
        oracle.privileged_state("household", "")
    with pytest.raises(InvalidArgument, match="belongs to split"):
        oracle.privileged_state("household", "train-00001", "valid_seen")
    demo = oracle.demonstration("household", "train-00002", expert="searcher", horizon=50)
    assert demo.won and demo.steps and all(s.reason for s in demo.steps)
    short = oracle.demonstration("household", "train-00002", expert="searcher", horizon=2)
    assert short.truncated and not short.won and len(short.steps) == 2


def test_state_digests_repeat_with_the_state_inside_a_session_only(household):
    sessions = make(household)
    task = "train-00001"
    first = sessions.reset("household", task_id=task)
    places = [c for c in first.observation.candidates if c.startswith("go to ")]
    a, b = places[0], places[1]
    digests = [first.observation.state_digest]
    for action in (a, b, a, b):
        digests.append(sessions.step(first.session_id, action).state_digest)
    assert all(len(d) == 32 for d in digests)
    # start, at a, at b, at a, at b: the state comes back, and with it the digest (the step count differs).
    assert digests[1] == digests[3] and digests[2] == digests[4]
    assert len({digests[0], digests[1], digests[2]}) == 3
    # Opening something changes the state although the agent stands where it stood.
    at_fridge = sessions.step(first.session_id, "go to fridge 1")
    assert "open fridge 1" in at_fridge.candidates
    opened = sessions.step(first.session_id, "open fridge 1").state_digest
    assert opened not in digests + [at_fridge.state_digest]
    assert sessions.step(first.session_id, "close fridge 1").state_digest == at_fridge.state_digest
    # Another session of the same task in the same state: another digest (keyed per session).
    second = sessions.reset("household", task_id=task)
    assert second.observation.state_digest != digests[0]
    assert sessions.step(second.session_id, a).state_digest != digests[1]
    # The message carries it; a done episode has none.
    assert convert.observation(sessions.step(second.session_id, b)).state_digest
    plan = household.privileged_state(task, []).optimal_actions
    third = sessions.reset("household", task_id=task)
    for action in plan:
        obs = sessions.step(third.session_id, action)
    assert obs.done and obs.state_digest == ""


def test_backends_that_cannot_vouch_for_their_state_send_no_digest():
    sessions = EnvironmentSessions({"echo": EchoBackend()})
    r = sessions.reset("echo", split="test", seed=5)
    assert r.observation.state_digest == "" and sessions.step(r.session_id, "ls").state_digest == ""
