"""Orchestrator logic without services: config, state machine, aggregation, seeds, report."""

from __future__ import annotations

import json

import pytest
import yaml

from orchestrator import datasets as ds
from orchestrator.config import load_config, load_snapshot, preset_names
from orchestrator.episodes import derive_seed, summarize
from services.student.prompts import history_to_send
from orchestrator.loop import LeapRun, phase_names
from orchestrator.state import RunState
from leap.v1 import common_pb2


def test_presets_load_and_validate():
    assert {"default", "smoke"} <= set(preset_names())
    smoke = load_config(preset="smoke")
    assert smoke.iterations == 1 and smoke.environment.eval_tasks == 2
    default = load_config()
    assert default.environment.eval_tasks >= 50 and default.teacher.realizability_level == 50


def test_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("environment:\n  horizn: 3\n")
    with pytest.raises(ValueError, match="horizn.*valid keys"):
        load_config(bad)
    with pytest.raises(ValueError, match="realizability_level"):
        load_config(preset="smoke", overrides={"teacher": {"realizability_level": 33}})
    with pytest.raises(ValueError, match="unknown preset"):
        load_config(preset="nope")


def test_config_snapshot_guards_resume(tmp_path):
    config = load_config(preset="smoke")
    LeapRun.prepare_run_dir(tmp_path, config, resume=False)
    LeapRun.prepare_run_dir(tmp_path, config, resume=True)  # same config: fine
    with pytest.raises(RuntimeError, match="already holds a run"):
        LeapRun.prepare_run_dir(tmp_path, config, resume=False)
    other = load_config(preset="smoke", overrides={"seed": 5})
    with pytest.raises(RuntimeError, match="config differs"):
        LeapRun.prepare_run_dir(tmp_path, other, resume=True)
    # The snapshot round-trips into the same config.
    assert load_snapshot(tmp_path / "config.yaml") == config


def test_a_config_file_without_a_preset_is_layered_over_the_default_preset(tmp_path):
    """`deploy/run/run.yaml` names addresses only; its other keys are the default run's, not built-ins."""
    from orchestrator.config import RunConfig

    default, builtin = load_config(), RunConfig()
    assert default.student.constrain_action != builtin.student.constrain_action  # the test means something
    assert default.environment.demo_tasks != builtin.environment.demo_tasks
    partial = tmp_path / "run.yaml"
    partial.write_text("name: mine\nenvironment:\n  address: env.example:50051\n  eval_tasks: 7\n")
    config = load_config(partial)
    assert (config.name, config.environment.address, config.environment.eval_tasks) == ("mine", "env.example:50051", 7)
    expected = default.to_dict()
    expected["name"] = "mine"
    expected["environment"].update(address="env.example:50051", eval_tasks=7)
    assert config.to_dict() == expected
    # A named preset still wins over the default one, and the file over both.
    smoke = load_config(partial, preset="smoke")
    assert smoke.iterations == load_config(preset="smoke").iterations and smoke.environment.eval_tasks == 7


def test_a_snapshot_reads_over_the_builtins_not_a_preset(tmp_path):
    """A run started by an older release resumes as it was started, whatever today's presets say."""
    from orchestrator.config import RunConfig

    old = RunConfig().to_dict()
    del old["student"]["constrain_action"]          # a key that did not exist when the run started
    snapshot = tmp_path / "config.yaml"
    snapshot.write_text(yaml.safe_dump(old))
    assert load_snapshot(snapshot).student.constrain_action is RunConfig().student.constrain_action
    assert load_config(snapshot).student.constrain_action is load_config().student.constrain_action
    snapshot.write_text("student: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_snapshot(snapshot)


def test_phase_order():
    names = phase_names(2)
    assert names[:2] == ["baseline.eval", "reference.eval"]
    assert names.index("iter0.train") < names.index("iter0.load") < names.index("iter0.eval") < \
        names.index("iter1.rollout") < names.index("iter1.correct") < names.index("iter2.eval")
    assert names[-1] == "report"


def test_state_persists_and_resumes(tmp_path):
    state = RunState(tmp_path, ["a", "b", "c"])
    state.begin("a")
    out = tmp_path / "x.jsonl"
    out.write_text("{}\n")
    state.finish("a", {"rows_file": str(out)})
    state.values["k"] = 1
    state.save()
    again = RunState(tmp_path, ["a", "b", "c"])
    assert again.is_done("a") and not again.is_done("b")
    assert again.next_pending() == "b"
    assert again.outputs("a")["rows_sha256"] and again.values == {"k": 1}
    assert not list(tmp_path.glob("*.tmp"))


def test_aggregate_subsamples_to_smallest_and_is_seeded():
    a = [{"i": f"a{k}"} for k in range(10)]
    b = [{"i": f"b{k}"} for k in range(3)]
    mixed = ds.aggregate([a, b], seed=1)
    assert len(mixed) == 6
    assert sum(r["i"].startswith("a") for r in mixed) == 3
    assert mixed == ds.aggregate([a, b], seed=1)
    assert ds.aggregate([a, []], seed=1) == ds.aggregate([a], seed=1)
    assert ds.aggregate([[], []], seed=0) == []


def test_aggregate_cap_keeps_equal_shares():
    a = [{"i": f"a{k}"} for k in range(10)]
    b = [{"i": f"b{k}"} for k in range(8)]
    c = [{"i": f"c{k}"} for k in range(9)]
    capped = ds.aggregate([a, b, c], seed=2, max_rows=12)
    assert len(capped) == 12
    assert [sum(r["i"].startswith(p) for r in capped) for p in "abc"] == [4, 4, 4]
    assert len(ds.aggregate([a, b, c], seed=2, max_rows=100)) == 24  # the cap only lowers: smallest wins
    assert len({r["i"] for r in capped}) == 12


def _row(action: str, i: int) -> dict:
    return {"completion": f"REASON: step {i}.\nACTION: {action}", "i": i}


def test_action_kind_reads_the_targets_action_line():
    assert ds.action_kind(_row("go to cabinet 1", 0)) == "go"
    assert ds.action_kind({"completion": "REASON: the action: is below\nACTION: take apple 1 from table 1"}) == "take"
    assert ds.action_kind({"chosen": "REASON: r\nACTION: search[red shoes]", "rejected": "ACTION: click[x]"}) == "search"
    assert ds.action_kind({"completion": "REASON: r\n**Action**: ls -la /tmp"}) == "ls"
    assert ds.action_kind({"completion": ""}) == ""


def _household_row(action: str, holding: str) -> dict:
    user = (f"Your task is: put a cool plate on shelf.\nHolding: {holding}\nSearched: cabinet 1\n"
            "Not searched yet: shelf 1\nCurrent observation: You pick up the plate 1 from the cabinet 1.")
    return {"messages": [{"role": "system", "content": "Holding: nothing"}, {"role": "user", "content": user}],
            "completion": f"REASON: r.\nACTION: {action}"}


def test_action_kind_tells_walking_while_holding_from_searching():
    assert ds.action_kind(_household_row("go to cabinet 2", "nothing")) == "go"
    assert ds.action_kind(_household_row("go to shelf 1", "plate 1")) == "go (holding)"
    assert ds.action_kind(_household_row("move plate 1 to shelf 1", "plate 1 (cool)")) == "move (holding)"
    # Only the user's notes count (not the system prompt, not a prompt without notes).
    bare = _household_row("go to shelf 1", "plate 1")
    bare["messages"][1]["content"] = "Your task is: find a plate.\nCurrent observation: nothing."
    assert ds.action_kind(bare) == "go"
    # In a balanced subsample the delivery walks get a share of their own instead of ~1/5 of "go".
    rows = ([_household_row("go to cabinet 2", "nothing") for _ in range(80)]
            + [_household_row("go to shelf 1", "plate 1") for _ in range(20)]
            + [_household_row("move plate 1 to shelf 1", "plate 1") for _ in range(20)])
    for i, row in enumerate(rows):
        row["i"] = i
    picked = ds.aggregate([rows], seed=1, max_rows=30, balance_actions=True)
    kinds = [ds.action_kind(r) for r in picked]
    assert kinds.count("go") == 15  # sqrt(80) : sqrt(20) : sqrt(20) of 30
    assert sorted([kinds.count("go (holding)"), kinds.count("move (holding)")]) == [7, 8]


def test_balanced_quotas_take_square_root_shares_and_never_more_than_there_is():
    counts = {"go": 324, "open": 118, "take": 46, "move": 39, "cool": 7, "heat": 7, "use": 7, "clean": 6}
    quotas = ds.balanced_quotas(counts, 200)
    assert sum(quotas.values()) == 200
    assert all(0 <= quotas[k] <= counts[k] for k in counts)
    assert [quotas[k] for k in ("cool", "heat", "use", "clean")] == [7, 7, 7, 6]  # rare kinds kept whole
    # Between random sampling (proportional) and equal shares: the commonest kind still leads.
    proportional = {k: 200 * n / sum(counts.values()) for k, n in counts.items()}
    assert quotas["go"] < proportional["go"] and quotas["go"] > max(v for k, v in quotas.items() if k != "go")
    assert quotas["move"] > proportional["move"] and quotas["take"] > proportional["take"]
    assert ds.balanced_quotas({"a": 3, "b": 2}, 10) == {"a": 3, "b": 2}  # asking for more: everything
    assert sum(ds.balanced_quotas({"a": 1, "b": 1, "c": 1}, 2).values()) == 2
    assert ds.balanced_quotas({"a": 0, "b": 4}, 3) == {"a": 0, "b": 3}
    for size in range(0, 60):
        q = ds.balanced_quotas({"a": 40, "b": 9, "c": 2, "d": 1}, size)
        assert sum(q.values()) == min(size, 52) and q["a"] >= q["b"] >= q["c"] >= q["d"]


def test_aggregate_balances_action_kinds_when_asked():
    corrections = [_row("go to shelf 1", i) for i in range(90)] + [_row("take cup 1 from shelf 1", 90 + i) for i in range(10)]
    demos = [_row(a, 200 + i) for i, a in enumerate(["go to desk 1"] * 60 + ["open drawer 1"] * 30 + ["move cup 1 to desk 1"] * 10)]
    plain = ds.aggregate([demos, corrections], seed=3, max_rows=40)
    balanced = ds.aggregate([demos, corrections], seed=3, max_rows=40, balance_actions=True)
    assert len(balanced) == len(plain) == 40
    kinds = [ds.action_kind(r) for r in balanced if r["i"] < 200]
    assert len(kinds) == 20 and kinds.count("take") == 5 and kinds.count("go") == 15  # sqrt(10) : sqrt(90)
    demo_kinds = [ds.action_kind(r) for r in balanced if r["i"] >= 200]
    assert (demo_kinds.count("go"), demo_kinds.count("open"), demo_kinds.count("move")) == (9, 7, 4)
    assert len({r["i"] for r in balanced}) == 40  # no row twice
    assert balanced == ds.aggregate([demos, corrections], seed=3, max_rows=40, balance_actions=True)
    # With room for every row, balancing changes nothing but the order.
    whole = ds.aggregate([demos[:100], corrections], seed=3, balance_actions=True)
    assert sorted(r["i"] for r in whole) == sorted(r["i"] for r in demos + corrections)


def test_seeds_are_stable_and_distinct():
    assert derive_seed(0, "train-1", 3) == derive_seed(0, "train-1", 3)
    assert derive_seed(0, "train-1", 3) != derive_seed(0, "train-1", 4)
    assert 0 <= derive_seed("x") < 2 ** 63


def test_history_sent_to_the_student():
    h = [("o1", "a1"), ("o2", "a2"), ("o3", "a3")]
    assert history_to_send("bash", h, 2) == h[1:]
    assert history_to_send("bash", h, 0) == []
    assert history_to_send("bash", h, -1) == h
    # The household prompt folds its notes from every past observation: the whole episode goes.
    assert history_to_send("household", h, 1) == h


def _traj(won: bool, steps: int, task_type="pick_and_place_simple", valid=True):
    t = common_pb2.Trajectory(won=won, done=True, score=1.0 if won else 0.0, task_type=task_type)
    for k in range(steps):
        t.steps.append(common_pb2.Step(index=k, action="look", action_valid=valid))
    return t


def test_summarize():
    s = summarize([_traj(True, 4), _traj(False, 20, "look_at_obj_in_light", valid=False)])
    assert s["overall"]["success"] == 50.0 and s["overall"]["mean_steps"] == 12.0
    assert s["overall"]["invalid_action_rate"] == 20 / 24
    assert s["by_task_type"]["look_at_obj_in_light"]["success"] == 0.0


def test_trajectory_files_round_trip(tmp_path):
    trajs = [_traj(True, 2), _traj(False, 3)]
    path = ds.write_trajectories(tmp_path / "t.jsonl", trajs)
    assert ds.read_trajectories(path) == trajs
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_progress_outside_a_terminal_prints_plain_lines():
    import io

    from rich.console import Console

    from orchestrator.progress import ProgressReporter

    out = io.StringIO()
    reporter = ProgressReporter(Console(file=out, force_terminal=False, width=200), log_every_s=0.0)
    with reporter.phase("baseline: evaluate on valid_unseen", 3) as bar:
        for k in range(3):
            bar.advance(1, info=f"success {k}%")
    with reporter.phase("iter0: train (sft)", None) as bar:
        bar.update(completed=5, total=10, info="loss 1.234")
    lines = out.getvalue().splitlines()
    assert lines[0] == "baseline: evaluate on valid_unseen: started (3 to do)"
    assert lines[1].startswith("baseline: evaluate on valid_unseen: 1/3  success 0%  ")
    assert lines[4].startswith("baseline: evaluate on valid_unseen: done, 3/3  success 2%  ")
    assert lines[-1].startswith("iter0: train (sft): done, 5/10  loss 1.234  ")
    assert "\x1b[" not in out.getvalue()  # no terminal escapes in a log file


def test_errored_episodes_count_as_failures_never_dropped():
    s = summarize([_traj(True, 4), _traj(True, 6)], errors=2)
    assert s["overall"]["episodes"] == 4 and s["overall"]["errors"] == 2
    assert s["overall"]["success"] == 50.0 and s["overall"]["score"] == 0.5
    assert s["overall"]["mean_steps"] == 5.0  # over the played episodes
    assert summarize([], errors=3)["overall"]["success"] == 0.0


def test_the_results_tables_show_errored_episodes():
    from rich.console import Console

    from orchestrator.report import markdown, results_table

    def results(errors: int) -> dict:
        row = {"name": "iter0", "label": "BC (iter 0)",
               "splits": {"valid_unseen": summarize([_traj(True, 4), _traj(False, 6)], errors=errors)}}
        return {"run": "t", "splits": ["valid_unseen"], "eval_tasks": 2 + errors, "rows": [row]}

    with_errors = markdown(results(2))
    assert "| BC (iter 0) | 25.0 | 0.25 | 5.0 | 2 |" in with_errors and "counted as failures" in with_errors
    assert "| BC (iter 0) | 50.0 | 0.50 | 5.0 |" in markdown(results(0)) and "errors" not in markdown(results(0))
    console = Console(width=200, record=True)
    console.print(results_table(results(2)))
    text = console.export_text()
    assert "errors" in text and "counted as failures" in text


def test_episodes_stopped_at_a_cycle_count_their_horizon_and_get_a_column():
    from orchestrator.report import markdown

    stopped = _traj(False, 5)
    stopped.steps[3].action_valid = False  # in the cycle (steps 2-4), so 6 times in 20 steps
    stopped.steps[0].action_valid = False  # before it: once
    stopped.metadata.update(cycle_start="2", cycle_period="3", steps_at_horizon="20")
    s = summarize([_traj(True, 4), stopped])
    # Steps and invalid actions as the episodes would have taken them to their end.
    assert s["overall"]["cycles"] == 1 and s["overall"]["mean_steps"] == 12.0
    assert s["overall"]["invalid_action_rate"] == 7 / 24 and s["overall"]["success"] == 50.0
    row = {"name": "baseline", "label": "untrained student", "splits": {"valid_unseen": s}}
    text = markdown({"run": "t", "splits": ["valid_unseen"], "eval_tasks": 2, "rows": [row]})
    assert "| untrained student | 50.0 | 0.50 | 12.0 | 1 |" in text and "steps | cycles |" in text
    assert "came back to an earlier state" in text


class _ListEnvironmentsOnly:
    """An environment stub that answers ListEnvironments with the given infos."""

    def __init__(self, *infos):
        from leap.v1 import environment_pb2

        self.response = environment_pb2.ListEnvironmentsResponse(environments=list(infos))

    def ListEnvironments(self, request, timeout=None):
        return self.response


def _run_with_environment(tmp_path, name, infos):
    from types import SimpleNamespace

    from orchestrator.progress import ProgressReporter

    config = load_config(preset="smoke", overrides={"environment": {"name": name}})
    stubs = SimpleNamespace(env=_ListEnvironmentsOnly(*infos), addresses={"environment": "127.0.0.1:1"})
    return LeapRun(config, tmp_path / "run", stubs, ProgressReporter(enabled=False))


def test_demonstrations_follow_the_experts_the_environment_offers(tmp_path):
    from leap.v1 import environment_pb2 as env_pb

    info = lambda name, *experts: env_pb.EnvironmentInfo(name=name, experts=list(experts))  # noqa: E731
    searcher_and_planner = _run_with_environment(
        tmp_path / "a", "webshop", [info("webshop", env_pb.EXPERT_KIND_PLANNER, env_pb.EXPERT_KIND_SEARCHER)])
    assert searcher_and_planner.demonstration_expert() == env_pb.EXPERT_KIND_SEARCHER
    planner_only = _run_with_environment(tmp_path / "b", "intercode_bash",
                                         [info("household"), info("intercode_bash", env_pb.EXPERT_KIND_PLANNER)])
    assert planner_only.demonstration_expert() == env_pb.EXPERT_KIND_PLANNER
    # A server too old to list its experts: LEAP's searching expert, as before the field existed.
    legacy = _run_with_environment(tmp_path / "c", "household", [info("household")])
    assert legacy.demonstration_expert() == env_pb.EXPERT_KIND_SEARCHER
    tutor_only = _run_with_environment(tmp_path / "d", "odd", [info("odd", env_pb.EXPERT_KIND_PRIOR_SEARCHER)])
    with pytest.raises(Exception, match="neither a searcher nor a planner"):
        tutor_only.demonstration_expert()


def test_a_run_on_an_environment_the_server_does_not_serve_stops_with_the_names(tmp_path):
    from leap.v1 import environment_pb2 as env_pb

    leap = _run_with_environment(tmp_path, "webshop", [env_pb.EnvironmentInfo(name="household")])
    with pytest.raises(Exception, match="'webshop', but the environment server at 127.0.0.1:1 serves: household"):
        leap.demonstration_expert()


def _spawned_commands(tmp_path, monkeypatch, config) -> dict[str, list[str]]:
    """The command lines `leap run`'s launcher gives the services it starts (up to its first wait)."""
    from orchestrator.launcher import LocalServices

    launcher = LocalServices(tmp_path)
    spawned = {}
    monkeypatch.setattr(launcher, "_spawn", lambda name, args, env: spawned.setdefault(name, args))

    class Stop(Exception):
        pass

    def stop(names, timeout):
        raise Stop

    monkeypatch.setattr(launcher, "_wait_ports", stop)
    with pytest.raises(Stop):
        launcher.start(config)
    return spawned


def test_environment_options_reach_the_environment_server_command_line(tmp_path, monkeypatch):
    config = load_config(preset="smoke", overrides={"environment": {"name": "alfworld",
                                                                    "options": {"games": "/data/json_2.1.1"}}})
    args = _spawned_commands(tmp_path, monkeypatch, config)["environment"]
    assert args[:3] == ["env", "serve", "--env"] and args[3] == "alfworld"
    assert args[4:6] == ["--env-option", "alfworld:games=/data/json_2.1.1"]


def test_the_prompt_cache_size_reaches_the_student_command_line(tmp_path, monkeypatch):
    args = _spawned_commands(tmp_path, monkeypatch, load_config(preset="default"))["student"]
    assert args[args.index("--prompt-cache-mb") + 1] == "2048"


@pytest.mark.parametrize("text, message", [
    ("environment:\n  eval_splits: valid_unseen\n", "environment.eval_splits must be a list of text items"),
    ("environment:\n  eval_tasks: '50'\n", "environment.eval_tasks must be a whole number"),
    ("environment:\n  eval_tasks: true\n", "environment.eval_tasks must be a whole number"),
    ("trainer:\n  learning_rate: .nan\n", "trainer.learning_rate must be a finite number"),
    ("trainer:\n  epochs: 1e400\n", "trainer.epochs must be a finite number"),
    ("student:\n  constrain_action: 'yes'\n", "student.constrain_action must be true or false"),
    ("student: 3\n", "config key student must be a mapping"),
    ("student:\n  prompt_cache_mb: -1\n", "student.prompt_cache_mb must be >= 0"),
    ("student:\n  prompt_cache_mb: 1.5\n", "student.prompt_cache_mb must be a whole number"),
    ("student:\n  prompt_cache_mb: \"2048\\0\"\n", "student.prompt_cache_mb must be a whole number"),  # NUL
    ("student:\n  prompt_cache_mb: [1, [2]]\n", "student.prompt_cache_mb must be a whole number"),
    ("environment:\n  stop_cycles: 'no'\n", "environment.stop_cycles must be true or false"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_config_types_are_checked_with_the_key_named(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(bad)


def test_config_numbers_are_coerced_only_from_int_to_float(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("trainer:\n  epochs: 2\n  learning_rate: 0.001\n")
    config = load_config(good)
    assert config.trainer.epochs == 2.0 and isinstance(config.trainer.epochs, float)



def test_a_training_jobs_work_keeps_the_tokens_its_shared_prefixes_saved():
    from leap.v1 import trainer_pb2
    from orchestrator.work import training_work

    job = trainer_pb2.Job()
    job.progress.metrics.update({"train_tokens": 1000.0, "train_seconds": 4.5, "steps": 10.0,
                                 "shared_prefix_tokens": 212.0, "backward_layer_share": 0.5, "loss_last": 0.3})
    assert training_work(job) == {"trained_tokens": 1000.0, "train_seconds": 4.5, "train_steps": 10.0,
                                  "shared_prefix_tokens": 212.0, "backward_layer_share": 0.5}
    assert training_work(trainer_pb2.Job()) == {}


# ------------------------------------------------------------------ the shared episode budget
def test_episode_slots_hand_a_freed_slot_to_the_lowest_priority_waiting_first():
    import threading
    import time

    from orchestrator.episodes import EpisodeSlots

    slots = EpisodeSlots(1)
    order: list[str] = []
    release = threading.Event()

    def holder():
        with slots.hold(0):
            release.wait(5)

    def waiter(name: str, priority: int):
        with slots.hold(priority):
            order.append(name)

    first = threading.Thread(target=holder)
    first.start()
    while slots.in_use() == 0:
        time.sleep(0.001)
    waiters = []
    for queued, (name, priority) in enumerate((("rollout-a", 7), ("rollout-b", 7), ("eval-a", 6), ("eval-b", 6)), 1):
        waiters.append(threading.Thread(target=waiter, args=(name, priority)))
        waiters[-1].start()
        _wait_until(lambda: slots.waiting() == queued)  # arrive in this order
    release.set()
    for t in [first, *waiters]:
        t.join(5)
    assert order == ["eval-a", "eval-b", "rollout-a", "rollout-b"]
    assert slots.in_use() == 0


def _wait_until(condition, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_episode_slots_never_hold_more_than_their_size_and_a_closed_budget_starts_nothing_more():
    import threading
    import time

    from orchestrator.episodes import EpisodeSlots, SlotsClosed

    slots = EpisodeSlots(3)
    most = 0
    lock = threading.Lock()

    full = threading.Event()  # set once three episodes hold a slot at the same time

    def episode(priority: int):
        nonlocal most
        with slots.hold(priority):
            with lock:
                most = max(most, slots.in_use())
                if most == 3:
                    full.set()
            # The first holders stay until the slots are full (however slowly the threads start on a
            # busy machine), so the test sees them full; a fourth holder would show as most > 3.
            full.wait(5)
            time.sleep(0.002)

    threads = [threading.Thread(target=episode, args=(k % 2,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert most == 3 and slots.in_use() == 0

    held = threading.Event()
    release = threading.Event()
    outcome: list[str] = []

    def running():
        with slots.hold(0):
            held.set()
            release.wait(5)
        outcome.append("finished")

    def waiting():
        try:
            with slots.hold(0):
                outcome.append("started")
        except SlotsClosed:
            outcome.append("refused")

    small = EpisodeSlots(1)
    slots = small
    busy = threading.Thread(target=running)
    busy.start()
    held.wait(5)
    queued = threading.Thread(target=waiting)
    queued.start()
    _wait_until(lambda: small.waiting() == 1)
    small.close()
    queued.join(5)
    release.set()
    busy.join(5)
    assert outcome == ["refused", "finished"], "the waiter is refused; the running episode ends"
    with pytest.raises(SlotsClosed):
        with small.hold(0):
            pass
    with pytest.raises(ValueError):
        EpisodeSlots(0)


def test_the_work_tables_total_is_wall_time_when_phases_ran_side_by_side():
    from orchestrator.report import _total, wall_seconds

    profile = [
        {"phase": "a", "seconds": 10.0, "started_at": 0.0, "finished_at": 10.0},
        {"phase": "b.eval", "seconds": 30.0, "started_at": 10.0, "finished_at": 40.0, "decoded_tokens": 5},
        {"phase": "c.rollout", "seconds": 25.0, "started_at": 12.0, "finished_at": 37.0, "decoded_tokens": 7},
        {"phase": "d", "seconds": 5.0, "started_at": 45.0, "finished_at": 50.0},
    ]
    assert wall_seconds(profile) == 45.0  # 0-40 and 45-50; the rollout lies inside the evaluation
    assert _total(profile)["seconds"] == 45.0 and _total(profile)["decoded_tokens"] == 12
    assert wall_seconds([{"phase": "old", "seconds": 3.0}, {"phase": "older", "seconds": 4.0}]) == 7.0
    assert wall_seconds([]) == 0.0


def test_reasons_cut_are_counted_per_phase_and_shown_only_when_some_phase_has_them():
    from leap.v1 import student_pb2
    from orchestrator.report import markdown, work_table
    from orchestrator.work import StudentWork

    work = StudentWork()
    for cut in (True, False, True):
        work.add(student_pb2.ActResult(prompt_tokens=10, completion_token_ids=[1, 2], reason_cut=cut))
    assert work.snapshot()["reasons_cut"] == 2 and work.snapshot()["student_steps"] == 3

    def results(cut: int) -> dict:
        profile = [{"phase": "iter0.eval", "seconds": 5.0, "started_at": 0.0, "finished_at": 5.0, "student_steps": 3,
                    "reasons_cut": cut},
                   {"phase": "iter0.train", "seconds": 7.0, "started_at": 5.0, "finished_at": 12.0, "trained_tokens": 9}]
        return {"run": "t", "splits": ["valid_unseen"], "eval_tasks": 1, "rows": [], "profile": profile}

    text = markdown(results(2))
    header = next(line for line in text.splitlines() if line.startswith("| phase |"))
    assert header.endswith("| reasons cut |")
    assert "| iter0.eval | 5.0 | 3 |" in text and text.count("| 2 |") == 2  # the phase and the total
    assert "raise student.max_reason_tokens" in text
    assert work_table(results(2)).columns[-1].header == "reasons cut"
    quiet = markdown(results(0))
    assert "reasons cut" not in quiet and "max_reason_tokens" not in quiet
    assert work_table(results(0)).columns[-1].header == "trained tokens"
