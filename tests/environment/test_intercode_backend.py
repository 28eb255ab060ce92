"""intercode_bash through the real gRPC services: tasks, episodes, InterCode's reward, the privileged side."""

from __future__ import annotations

import os
import re

import grpc
import pytest
from google.protobuf import text_format

from leap.v1 import common_pb2
from services.environment.client import task_ref
from tests.environment.intercode_helpers import TOKEN, make_backend, skip_without_tools
from tests.environment.server_helpers import code_of, served

ENV = "intercode_bash"
CALL_S = 30.0  # Reset and submit also start sandboxes and run the gold command


@pytest.fixture(scope="module")
def backend():
    backend = make_backend()
    yield backend
    backend.close()


server, env, oracle = served(ENV, TOKEN, max_sessions=64, timeout_s=CALL_S, max_workers=16)


def play(env, task_id: str, commands: list[str], horizon: int = 0):
    reset = env.reset(ENV, task_id=task_id, horizon=horizon)
    observations = [env.step(reset.session_id, c) for c in commands]
    env.close_session(reset.session_id)
    return reset, observations


def test_spec_and_task_lists(env):
    [info] = env.list_environments()
    assert info.name == ENV and info.action_space == common_pb2.ACTION_SPACE_FREE_FORM
    assert list(info.splits) == ["train", "valid_unseen"] and info.default_horizon == 10
    assert list(info.task_types) == ["fs1", "fs2", "fs3", "fs4", "fs5"]
    assert info.version.startswith("intercode_bash 1.0")
    train = [t.task.task_id for t in env.list_tasks(ENV, "train", page_size=100)]
    valid = [t.task.task_id for t in env.list_tasks(ENV, "valid_unseen", page_size=7)]
    assert len(train) == 239 and len(valid) == 61 and not set(train) & set(valid)  # 20 % of each file system
    assert train == sorted(train) and valid == sorted(valid)
    first = next(t for t in env.list_tasks(ENV, "train") if t.task.task_id == "fs1-003")
    assert first.goal.startswith("create a copy of /testbed/hello.php") and first.task_type == "fs1"


# Gold commands that change the file system in different ways (copy, compress, rename in place, a cpio
# copy, a move to /, a redirect into a new file, symlinks at /) and ones that only print.
GOLD_SAMPLE = ["fs1-003", "fs1-042", "fs1-150", "fs2-009", "fs2-040", "fs3-011", "fs3-019", "fs4-006", "fs5-012",
               "fs5-016", "fs1-092", "fs3-047"]


@pytest.mark.parametrize("task_id", GOLD_SAMPLE)
def test_the_gold_command_wins(backend, env, task_id):
    gold = backend.bash_task(task_id).gold
    skip_without_tools(gold)
    _, (ran, submitted) = play(env, task_id, [gold, "submit"])
    assert ran.step == 1 and not ran.done and ran.text
    assert submitted.done and submitted.won and submitted.score == pytest.approx(1.0), submitted.text
    assert dict(submitted.info) == {"cwd": "/", "file_diff": "0.33", "file_changes": "0.33",
                                    "answer_similarity": "0.33"}


@pytest.mark.parametrize("task_id, wrong, expected", [
    ("fs1-003", "touch /testbed/hello-COPY.php", 0.67),  # right name, wrong content: the hashes differ
    ("fs1-003", "rm -rf /testbed", 0.01 + 0.0 + 0.33 + 0.33),  # everything in the wrong place
    ("fs2-016", "ls /system", None),  # deletes nothing, prints a listing
    ("fs1-007", "echo goodbye", 0.67),  # nothing to change, the wrong words
])
def test_a_wrong_command_scores_low(env, task_id, wrong, expected):
    _, (_, submitted) = play(env, task_id, [wrong, "submit"])
    assert submitted.done and not submitted.won and submitted.score < 0.7, submitted.text
    if expected is not None:
        assert submitted.score == pytest.approx(round(expected, 2))


def test_episode_mechanics(env):
    reset = env.reset(ENV, task_id="fs1-000", horizon=6)
    assert reset.task.goal == "list files in the current directory" and reset.observation.info["cwd"] == "/"
    sid = reset.session_id
    moved = env.step(sid, "cd /testbed/dir1")
    assert moved.text == "(no output)" and moved.info["cwd"] == "/testbed/dir1" and moved.last_action_valid
    listed = env.step(sid, "ls && export LEAP_X=1 && (sleep 30 &)")
    assert "textfile1.txt" in listed.text and listed.info["exit_code"] == "0"
    # Variables do not outlive a command (each runs in a new shell, as `docker exec`), nor do jobs.
    after = env.step(sid, "echo \"x=$LEAP_X\"; ps -e -o comm= | grep -c sleep; cd /nonexistent")
    assert after.text.startswith("x=\n0\n") and "No such file" in after.text
    assert after.info["cwd"] == "/testbed/dir1" and after.info["exit_code"] == "1" and not after.last_action_valid
    bad = env.step(sid, "echo a\x00b")
    assert not bad.last_action_valid and "NUL" in bad.text and bad.step == 4
    # The horizon submits: done, truncated, scored.
    env.step(sid, "true")
    last = env.step(sid, "ls")
    assert last.done and last.truncated and last.step == 6 and "step limit" in last.text
    assert code_of(env.step, sid, "ls")[0] == grpc.StatusCode.FAILED_PRECONDITION
    env.close_session(sid)


def test_hostile_requests(env, oracle):
    for task_id, code in [("fs1-153", grpc.StatusCode.NOT_FOUND), ("fs0-000", grpc.StatusCode.NOT_FOUND),
                          ("../fs1-000", grpc.StatusCode.NOT_FOUND), ("FS1-000", grpc.StatusCode.NOT_FOUND),
                          ("fs1-000 ", grpc.StatusCode.INVALID_ARGUMENT),
                          ("x" * 5000, grpc.StatusCode.INVALID_ARGUMENT),
                          ("fs1-000\x00", grpc.StatusCode.INVALID_ARGUMENT)]:
        got, details = code_of(env.reset, ENV, task_id=task_id)
        assert got == code, (task_id, details)
    assert "fs1-000..fs1-152" in code_of(env.reset, ENV, task_id="fs9-001")[1]
    assert code_of(env.reset, ENV, split="test")[0] == grpc.StatusCode.NOT_FOUND
    task = task_ref(ENV, "fs1-007")
    got, details = code_of(oracle.privileged_state, task, ["ls"] * 65)
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "at most 64" in details
    assert code_of(oracle.expert_actions, task, [], "searcher")[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(oracle.demonstration, task, "prior_searcher")[0] == grpc.StatusCode.INVALID_ARGUMENT
    # A seed far beyond the split wraps around; a huge command is refused before it reaches a shell.
    wrapped = env.reset(ENV, split="valid_unseen", seed=2**62)
    assert code_of(env.step, wrapped.session_id, "x" * 5000)[0] == grpc.StatusCode.INVALID_ARGUMENT
    env.close_session(wrapped.session_id)


def test_privileged_state_expert_and_demonstration(oracle):
    task = task_ref(ENV, "fs1-007")  # echo hello world
    state = oracle.privileged_state(task)
    assert state.gold_command == "echo hello world" and state.gold_output == "hello world\n"
    # The output is in the command itself: nothing to hide.
    assert list(state.secrets) == [] and list(state.optimal_actions) == ["echo hello world", "submit"]
    listing = oracle.privileged_state(task_ref(ENV, "fs2-035"))  # find /system -type d | wc -l
    assert listing.secrets and listing.gold_output.strip() in listing.secrets
    seen = oracle.privileged_state(task_ref(ENV, "fs2-035"), ["find /system -type d | wc -l"])
    assert list(seen.secrets) == [] and list(seen.optimal_actions) == ["submit"]
    assert seen.extra["cwd"] == "/" and seen.extra["file_system"] == "fs2"
    changes = oracle.privileged_state(task_ref(ENV, "fs1-003"))
    assert any("?? testbed/hello-COPY.php" in fact for fact in changes.facts)

    advice = oracle.expert_actions(task_ref(ENV, "fs2-035"), [], "planner")
    assert advice.next_action == "find /system -type d | wc -l" and list(advice.plan)[-1] == "submit"
    assert "find, which walks the directory tree" in advice.rationale and "wc, which counts" in advice.rationale
    assert not any(re.search(rf"(?<!\w){re.escape(s)}(?!\w)", advice.rationale) for s in listing.secrets)
    after = oracle.expert_actions(task_ref(ENV, "fs2-035"), ["ls", "find /system -type d | wc -l"], "planner")
    assert after.next_action == "submit" and not after.already_won
    finished = oracle.expert_actions(task_ref(ENV, "fs2-035"), ["find /system -type d | wc -l", "submit"], "planner")
    assert finished.next_action == "" and finished.already_won

    demo = oracle.demonstration(task_ref(ENV, "fs3-011"), "planner")
    assert demo.won and [s.action for s in demo.steps] == [
        "find /workspace -maxdepth 1 -type f -exec mv -t / {} +", "submit"]
    assert all(s.reason for s in demo.steps) and demo.metadata["engine"].startswith("intercode_bash")


def test_replays_follow_the_working_directory(oracle):
    task = task_ref(ENV, "fs1-000")
    state = oracle.privileged_state(task, ["cd /testbed", "cd dir1"])
    assert state.extra["cwd"] == "/testbed/dir1"
    again = oracle.privileged_state(task, ["cd /testbed", "cd dir1", "ls"])  # extends a kept replay
    assert again.extra["cwd"] == "/testbed/dir1" and again.extra["replayed_actions"] == "3"
    # The gold output of `ls` (run in /) lists /; the agent's `ls` in dir1 did not show "testbed".
    assert "testbed" in state.secrets and "testbed" in again.secrets
    assert "run" not in state.secrets  # too short a word to hide (see IntercodeBashBackend.secrets)
    advice = oracle.expert_actions(task, ["cd /testbed"], "planner")
    assert advice.rationale == "To do what the task asks I run ls, which lists directory contents."


def test_a_replay_cut_by_its_time_budget_is_not_kept(backend, monkeypatch):
    """Commands the replay's time budget skipped never ran: a later, longer history must not resume from
    that sandbox as if they had."""
    from services.environment.backends.intercode_bash import backend as module

    task = backend.bash_task("fs1-000")
    history = ["sleep 0.3", "echo made > /tmp/marker"]
    monkeypatch.setattr(module, "REPLAY_BUDGET_S", 0.1)
    sandbox, outputs, cwd, complete = backend.replay(task, history)
    assert outputs == ["", ""] and not complete  # the sleep ran past the budget; the echo was skipped
    backend._keep_replay(task, history, sandbox, outputs, cwd, complete)
    monkeypatch.setattr(module, "REPLAY_BUDGET_S", 60.0)
    sandbox, outputs, _, complete = backend.replay(task, history + ["cat /tmp/marker"])
    try:
        assert complete and outputs[-1] == "made\n", outputs
    finally:
        sandbox.close()


def test_sandboxes_work_past_descriptor_1024(backend):
    """A busy server holds over a thousand descriptors (three per session): a sandbox whose socket and
    pidfd are numbered past 1024 must still run commands and close (select() refuses such numbers)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200 if hard == resource.RLIM_INFINITY else min(hard, 1200)
    if wanted < 1100:
        pytest.skip(f"RLIMIT_NOFILE's hard limit ({hard}) is too low to open 1,100 descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    from services.environment.backends.intercode_bash.sandbox import Sandbox

    spec = backend.template(1).spec
    filler = [os.open("/dev/null", os.O_RDONLY) for _ in range(1030)]
    try:
        sandbox = Sandbox(spec).start()  # started now, not taken from the warm pool
        try:
            assert sandbox._sock.fileno() >= 1024
            assert sandbox.run("echo hi", "/").text == "hi\n"
        finally:
            sandbox.close()
        assert sandbox.dead
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _shows(message, secret: str) -> bool:
    text = text_format.MessageToString(message, as_utf8=True)
    return re.search(r"(?<![\w])" + re.escape(secret) + r"(?![\w])", text, re.IGNORECASE) is not None


@pytest.mark.parametrize("task_id", ["fs2-035", "fs3-014", "fs1-151", "fs5-000"])
def test_no_privileged_fact_in_environment_messages(env, oracle, task_id):
    """Wrong commands and the submission: no agent-facing message names a gold output line the agent has
    not produced itself, nor the gold command; `info` holds only the working directory, the exit status
    and the reward's parts."""
    task = task_ref(ENV, task_id)
    gold = oracle.privileged_state(task).gold_command
    listing = [t for t in env.list_tasks(ENV, "train") if t.task.task_id == task_id] + \
        [t for t in env.list_tasks(ENV, "valid_unseen") if t.task.task_id == task_id]
    reset = env.reset(ENV, task_id=task_id)
    messages = [reset, *listing]
    actions: list[str] = []
    for command in ["pwd", "ls /tmp", "echo done", "submit"]:
        observation = env.step(reset.session_id, command)
        actions.append(command)
        messages.append(observation)
        assert set(observation.info) <= {"cwd", "exit_code", "file_diff", "file_changes", "answer_similarity"}
    env.close_session(reset.session_id)
    secrets = oracle.privileged_state(task, actions[:-1]).secrets
    assert secrets, task_id  # these gold commands print something the agent did not see
    for message in messages:
        assert not any(_shows(message, s) for s in secrets), (task_id, message)
        assert gold not in text_format.MessageToString(message, as_utf8=True)


@pytest.mark.parametrize("options", [{"overlay": "off"}, {"proc": "false"}])
def test_fallbacks_still_score_gold_commands(options):
    """Without overlayfs the template is copied into the sandbox's tmpfs; without a /proc of its own
    (a container that masks /proc) the sandbox runs without one. Both still play InterCode."""
    backend = make_backend(pool_size="0", **options)
    try:
        sandbox = backend.acquire(1)
        try:
            if "overlay" in options:
                assert sandbox.info["fs"] == "copy"
                assert sandbox.run("rm -rf /testbed && ls /testbed", "/").exit_code == 2
            else:
                assert sandbox.info["proc"] is False
                assert sandbox.run("ls /proc | wc -l", "/").text == "0\n"
        finally:
            sandbox.close()
        for task_id in ("fs1-003", "fs2-009"):
            demo = backend.demonstration(task_id, "planner", 0)
            assert demo.won, (task_id, demo.steps[-1].next_observation)
    finally:
        backend.close()


def test_failures_of_the_server_side_are_retryable_and_a_dead_shell_ends_the_episode(backend, monkeypatch):
    from services.runtime.errors import ResourceExhausted

    episode = backend.start("fs1-007", 0)
    try:
        episode.reset()
        episode.step("echo hello world")
        real = backend.acquire

        def busy(family):
            raise ResourceExhausted("no sandbox could be started (test); retry later")

        monkeypatch.setattr(backend, "acquire", busy)
        with pytest.raises(ResourceExhausted):
            episode.step("submit")  # the gold command has nowhere to run: the client may submit again
        assert episode.steps == 1 and not episode.done
        monkeypatch.setattr(backend, "acquire", real)
        assert episode.step("submit").won
    finally:
        episode.close()

    episode = backend.start("fs1-007", 0)
    episode.reset()
    episode.sandbox.close()  # as if its supervisor had died
    gone = episode.step("ls")
    assert gone.done and not gone.won and gone.score == 0 and "The shell is gone" in gone.text
