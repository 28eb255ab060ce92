"""The `intercode_bash` backend: InterCode's 300 NL2Bash tasks, played in a sandboxed shell.

An episode is a shell session in a fresh sandbox of the task's file system (see sandbox.py and
supervisor.py). Each step runs one command (free-form action) and observes its output; `submit`
ends the episode and scores it with InterCode's reward (reward.py) against the gold command run in
another fresh sandbox; reaching the horizon submits too (as InterCode's harness does when its turns
run out), with `truncated` set. `won` means a reward of 1.0.

Privileged state (PrivilegedInfo) after a replayed history:

- gold_command: the task's gold command; gold_output: its output in a fresh sandbox (cached for a
  few minutes per task: outputs that depend on the clock may be stale);
- optimal_actions: the planner's plan from there, [gold, "submit"] or ["submit"];
- facts: what the gold command does to the file system (InterCode's `git status` entries), its exit
  status and the number of lines it prints;
- secrets: the lines of the gold output that the agent has not seen (not in any output of the
  replayed commands, the query, the gold command or the first observation; not a word of four
  letters or fewer): the answer must not be told;
- extra: engine, file system, difficulty, InterCode's second reference command (gold2).

The expert is the planner only: the gold command, then submit (just submit when the last command
was the gold command). Its rationale says what the command's programs and options do, never what
it prints (explain.py).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from services.environment.backends import base
from services.environment.backends.intercode_bash import data, explain
from services.environment.backends.intercode_bash.reward import Reward, git_status, score
from services.environment.backends.intercode_bash.rootfs import Template, Templates
from services.environment.backends.intercode_bash.sandbox import RunResult, Sandbox, SandboxError, SandboxLimits, \
    SandboxPool
from services.environment.backends.options import (
    config_from_options as options_config,
    config_or_options,
    typed_value,
)
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, quote

NAME = "intercode_bash"
VERSION = "1.0"
SUBMIT = "submit"
#: Most actions a privileged call replays in a sandbox (the teacher replays trajectories within the horizon).
MAX_REPLAYED_COMMANDS = 64
#: Wall-clock budget of one replay; commands beyond it are not run (their outputs count as unseen).
REPLAY_BUDGET_S = 60.0
#: Replay sandboxes kept alive so that the next, one-longer prefix costs a single command.
REPLAY_CACHE = 4
MAX_SECRETS = 64
MAX_SECRET_CHARS = 300


@dataclass(frozen=True)
class IntercodeConfig:
    """Options of the backend (`-o key=value`; strings are converted)."""

    horizon: int = 10
    timeout_s: float = 10.0
    output_bytes: int = 64 * 1024
    processes: int = 64
    memory_mb: int = 512
    total_memory_mb: int = 768
    file_mb: int = 16
    disk_mb: int = 64
    inodes: int = 16384
    pool_size: int = 2
    sandbox_uid: int = 65534
    sandbox_gid: int = 65534
    work_dir: str = ""
    data_dir: str = ""
    overlay: str = "auto"
    proc: bool = True
    sys: bool = False
    seccomp: bool = True
    gold_cache_s: float = 300.0

    def __post_init__(self) -> None:
        if not 1 <= self.horizon <= 1000:
            raise ValueError(f"horizon must be between 1 and 1000; got {self.horizon}")
        if not 0 <= self.pool_size <= 64:
            raise ValueError(f"pool_size must be between 0 and 64; got {self.pool_size}")
        if self.overlay not in ("auto", "on", "off"):
            raise ValueError(f"overlay must be auto, on or off; got {self.overlay!r}")
        if not 0 <= self.sandbox_uid < 2**32 - 1 or not 0 <= self.sandbox_gid < 2**32 - 1:
            raise ValueError("sandbox_uid and sandbox_gid must be valid ids")
        if not 0 <= self.gold_cache_s <= 86400:
            raise ValueError(f"gold_cache_s must be between 0 and 86400; got {self.gold_cache_s}")
        self.limits()  # validates the limits

    def limits(self) -> SandboxLimits:
        return SandboxLimits(timeout_s=self.timeout_s, output_bytes=self.output_bytes, processes=self.processes,
                             memory_mb=self.memory_mb, total_memory_mb=self.total_memory_mb, file_mb=self.file_mb,
                             disk_mb=self.disk_mb, inodes=self.inodes)


def config_from_options(options: dict[str, Any]) -> IntercodeConfig:
    return options_config(IntercodeConfig, options, NAME, typed_value(NAME, reject_nan=True),
                          invalid=(ValueError, TypeError))


@dataclass(frozen=True)
class GoldRun:
    """The gold command's run in a fresh sandbox."""

    output: str
    exit_code: int | None
    status: tuple[tuple[str, str], ...]
    at: float


def render(result: RunResult, limits: SandboxLimits) -> str:
    """The observation text of a command: its output, with notes on limits that cut it short."""
    text = result.text
    notes = []
    if result.truncated:
        notes.append(f"[output cut at {limits.output_bytes} bytes; the command was stopped]")
    if result.timed_out:
        notes.append(f"[the command was stopped after {limits.timeout_s:g} s]")
    if result.memory_exceeded:
        notes.append(f"[the command was stopped: it used more than {limits.total_memory_mb} MiB of memory]")
    if not text.strip() and not notes:
        return "(no output)"
    if notes:
        text = (text if text.endswith("\n") or not text else text + "\n") + "\n".join(notes)
    return text


def intro_text(task: data.BashTask) -> str:
    """The first observation of an episode."""
    shell = "sh" if task.family == 5 else "bash"
    return (f"You are root in a {shell} shell; the working directory is /. Run one command per step, "
            "and send submit when the task is done.")


class IntercodeEpisode(base.EpisodeState):
    """A shell session on one task, in its own sandbox."""

    def __init__(self, backend: "IntercodeBashBackend", task: data.BashTask, horizon: int):
        self._backend = backend
        self.bash_task = task
        self.task = backend.summary(task)
        self.horizon = horizon
        self.template = backend.template(task.family)
        self.sandbox: Sandbox | None = backend.acquire(task.family)
        self.cwd = "/"
        self.actions: list[str] = []
        self.first_command: str | None = None
        self.last_output = ""
        self.reward: Reward | None = None

    def reset(self) -> base.Observation:
        return base.Observation(text=intro_text(self.bash_task), info={"cwd": self.cwd})

    def step(self, action: str) -> base.Observation:
        self._begin_step()
        self.actions.append(action)
        command = action.strip()
        if command == SUBMIT:
            try:
                return self._finish(truncated=False, before="")
            except ResourceExhausted:  # no sandbox for the gold command now: the client may submit again
                self.actions.pop()
                raise
        if "\x00" in command:
            text = "The command holds a NUL byte, which no shell command can contain; nothing was run."
            return self._after(base.Observation(text=text, step=len(self.actions), last_action_valid=False,
                                                info={"cwd": self.cwd, "exit_code": ""}))
        try:
            result = self._sandbox().run(command, self.cwd)
        except SandboxError as exc:
            return self._broken(str(exc))
        if self.first_command is None:
            self.first_command = command
        self.last_output = result.text
        if result.cwd:
            self.cwd = result.cwd
        exit_code = "" if result.exit_code is None else str(result.exit_code)
        return self._after(base.Observation(
            text=render(result, self._backend.limits), step=len(self.actions),
            last_action_valid=result.exit_code == 0 and not (result.timed_out or result.truncated),
            info={"cwd": self.cwd, "exit_code": exit_code}))

    def _after(self, observation: base.Observation) -> base.Observation:
        if len(self.actions) >= self.horizon:
            try:
                return self._finish(truncated=True, before=observation.text, valid=observation.last_action_valid,
                                    info=observation.info)
            except ResourceExhausted as exc:  # the command ran: the episode cannot go back to before it
                return self._broken(exc.message)
        return observation

    def _sandbox(self) -> Sandbox:
        if self.sandbox is None:
            raise SandboxError("the sandbox is closed")
        return self.sandbox

    def _finish(self, *, truncated: bool, before: str, valid: bool = True,
                info: dict[str, str] | None = None) -> base.Observation:
        try:
            self.reward = self._backend.evaluate(self.bash_task, self._sandbox(), self.first_command, self.last_output)
        except SandboxError as exc:
            return self._broken(str(exc))
        self.close()
        self._done = True
        r = self.reward
        how = "The step limit is reached: the episode is submitted." if truncated else "Submitted."
        text = f"{before}\n{how}" if before else how
        text += f" Score {r.total:.2f} (file system {r.file_diff:.2f}, changed files {r.file_changes:.2f}, " \
                f"output {r.answer:.2f})."
        return base.Observation(text=text, reward=r.total, score=r.total, done=True, won=r.won, truncated=truncated,
                                step=len(self.actions), last_action_valid=valid,
                                info={**(info or {"cwd": self.cwd}), **r.parts()})

    def _broken(self, why: str) -> base.Observation:
        self.close()
        self._done = True
        self.reward = None
        return base.Observation(text=f"The shell is gone ({why}); the episode ends with score 0.", done=True,
                                step=len(self.actions), last_action_valid=False, info={"cwd": self.cwd})

    @property
    def steps(self) -> int:  # the actions so far (a submit the sandbox pool refused is taken back)
        return len(self.actions)

    @property
    def won(self) -> bool:
        return self.reward is not None and self.reward.won

    @property
    def score(self) -> float:
        return self.reward.total if self.reward is not None else 0.0

    def close(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None:
            sandbox.close()


class IntercodeBashBackend(base.Backend):
    """InterCode Bash. Options: IntercodeConfig fields (strings accepted)."""

    name = NAME

    def __init__(self, config: IntercodeConfig | None = None, **options: Any):
        self.config = config_or_options(config, options, config_from_options, "an IntercodeConfig")
        self.limits = self.config.limits()
        assets = data.assets_dir(self.config.data_dir or None)
        self.tasks = data.load_tasks(assets)
        self._by_id = {t.task_id: t for t in self.tasks}
        self._by_split = {s: [t for t in self.tasks if t.split == s] for s in data.SPLITS}
        self.families = data.load_families(assets)
        icalfa = data.package_version()
        self.version = f"{NAME} {VERSION} (icalfa {icalfa})" if icalfa else f"{NAME} {VERSION}"
        self.templates = Templates(self.families, work_dir=self.config.work_dir or None, limits=self.limits,
                                   uid=self.config.sandbox_uid, gid=self.config.sandbox_gid,
                                   overlay=self.config.overlay, seccomp=self.config.seccomp, proc=self.config.proc,
                                   sys=self.config.sys)
        self._pools: dict[int, SandboxPool] = {}
        self._lock = threading.Lock()
        self._gold: dict[str, GoldRun] = {}
        self._replays: OrderedDict[tuple[str, tuple[str, ...]], tuple[Sandbox, list[str], str]] = OrderedDict()
        self._closed = False

    # --- tasks ---------------------------------------------------------------------------------------

    def spec(self) -> base.EnvironmentSpec:
        return base.EnvironmentSpec(
            name=NAME,
            description="InterCode Bash: 300 NL2Bash tasks over five file systems; one shell command per step in a "
                        "sandbox, submit to be scored with InterCode's reward.",
            splits=data.SPLITS, action_space=base.FREE_FORM, default_horizon=self.config.horizon,
            version=self.version, task_types=tuple(f"fs{n}" for n in data.FAMILIES), experts=(base.PLANNER,))

    def summary(self, task: data.BashTask) -> base.TaskSummary:
        return base.TaskSummary(task.task_id, task.split, task.query, f"fs{task.family}")

    def _split(self, split: str) -> list[data.BashTask]:
        tasks = self._by_split.get(split)
        if tasks is None:
            sizes = ", ".join(f"{s} ({len(self._by_split[s])} tasks)" for s in data.SPLITS)
            raise NotFound(f"unknown split {quote(split)} of {NAME}; valid splits: {sizes}")
        return tasks

    def num_tasks(self, split: str) -> int:
        return len(self._split(split))

    def list_tasks(self, split: str, offset: int, limit: int) -> list[base.TaskSummary]:
        tasks = self._split(split)
        return [self.summary(t) for t in tasks[max(0, offset):max(0, offset) + max(0, limit)]]

    def bash_task(self, task_id: str) -> data.BashTask:
        task = self._by_id.get(task_id) if isinstance(task_id, str) else None
        if task is None:
            raise NotFound(f"unknown task {quote(task_id)} of {NAME}; valid task ids: fs1-000..fs1-152, "
                           "fs2-000..fs2-048, fs3-000..fs3-056, fs4-000..fs4-022, fs5-000..fs5-017")
        return task

    def task(self, task_id: str) -> base.TaskSummary:
        return self.summary(self.bash_task(task_id))

    # --- sandboxes -----------------------------------------------------------------------------------

    def template(self, family: int) -> Template:
        return self.templates.get(family)

    def acquire(self, family: int) -> Sandbox:
        """A started sandbox of a file system, from its warm pool."""
        with self._lock:
            if self._closed:
                raise FailedPrecondition(f"the {NAME} backend is closed")
            pool = self._pools.get(family)
            if pool is None:
                pool = self._pools[family] = SandboxPool(self.template(family).spec, self.config.pool_size)
        try:
            return pool.acquire()
        except SandboxError as exc:
            raise ResourceExhausted(f"no sandbox could be started ({exc}); retry later") from None

    def start(self, task_id: str, horizon: int) -> IntercodeEpisode:
        return IntercodeEpisode(self, self.bash_task(task_id), horizon or self.config.horizon)

    def _run_gold(self, task: data.BashTask, sandbox: Sandbox) -> tuple[RunResult, set[tuple[str, str]]]:
        result = sandbox.run(task.gold.strip(), "/")
        state, _ = sandbox.snapshot()
        return result, git_status(self.template(task.family).baseline, state)

    def evaluate(self, task: data.BashTask, sandbox: Sandbox, first_command: str | None, last_output: str) -> Reward:
        """InterCode's reward of the agent's sandbox, against the gold command run in a fresh one."""
        state, _ = sandbox.snapshot()
        agent_status = git_status(self.template(task.family).baseline, state)
        gold_sandbox = self.acquire(task.family)
        # A failure on the gold side is the server's trouble, not the agent's: ResourceExhausted (retry),
        # while a SandboxError of the agent's own sandbox ends its episode.
        unavailable = "the gold command could not be run ({}); submit again later"
        try:
            try:
                gold_result, gold_status = self._run_gold(task, gold_sandbox)
            except SandboxError as exc:
                raise ResourceExhausted(unavailable.format(exc)) from None
            self._remember_gold(task, gold_result, gold_status)

            def hash_pairs(paths: list[str]) -> list[tuple[str, str]]:
                mine = sandbox.hashes(paths)
                try:
                    theirs = gold_sandbox.hashes(paths)
                except SandboxError as exc:
                    raise ResourceExhausted(unavailable.format(exc)) from None
                return list(zip(mine, theirs))

            return score(first_action=first_command, gold_command=task.gold, agent_output=last_output,
                         gold_output=gold_result.text, agent_status=agent_status, gold_status=gold_status,
                         hash_pairs=hash_pairs)
        finally:
            gold_sandbox.close()

    def _remember_gold(self, task: data.BashTask, result: RunResult, status: set[tuple[str, str]]) -> GoldRun:
        run = GoldRun(result.text, result.exit_code, tuple(sorted(status)), time.monotonic())
        with self._lock:
            self._gold[task.task_id] = run
        return run

    def gold(self, task: data.BashTask) -> GoldRun:
        """The gold command's output and file-system changes (from a recent run, else a new one)."""
        with self._lock:
            known = self._gold.get(task.task_id)
        if known is not None and time.monotonic() - known.at <= self.config.gold_cache_s:
            return known
        sandbox = self.acquire(task.family)
        try:
            result, status = self._run_gold(task, sandbox)
        except SandboxError as exc:
            raise ResourceExhausted(f"the gold command could not be run ({exc}); retry later") from None
        finally:
            sandbox.close()
        return self._remember_gold(task, result, status)

    # --- privileged side -----------------------------------------------------------------------------

    @staticmethod
    def _submitted_at(actions: Sequence[str]) -> int | None:
        for i, action in enumerate(actions):
            if action.strip() == SUBMIT:
                return i
        return None

    def replay(self, task: data.BashTask, actions: Sequence[str]) -> tuple[Sandbox, list[str], str, bool]:
        """A sandbox after running `actions` (up to a submit) from the initial state, their outputs, the
        working directory, and whether every command ran (False when the replay's time budget cut it
        short: such a sandbox is not the state of the history, and `_keep_replay` does not keep it). The
        caller owns the sandbox and returns it with `_keep_replay`."""
        commands = [a.strip() for a in actions]
        end = self._submitted_at(commands)
        commands = commands[:end] if end is not None else commands
        if len(commands) > MAX_REPLAYED_COMMANDS:
            raise InvalidArgument(f"{len(commands)} commands to replay; {NAME} replays at most {MAX_REPLAYED_COMMANDS}")
        cached = None
        with self._lock:
            for n in range(len(commands), -1, -1):
                key = (task.task_id, tuple(commands[:n]))
                if key in self._replays:
                    cached = (n, self._replays.pop(key))
                    break
        if cached is not None:
            n, (sandbox, outputs, cwd) = cached
            outputs = list(outputs)
        else:
            n, sandbox, outputs, cwd = 0, self.acquire(task.family), [], "/"
        started = time.monotonic()
        complete = True
        try:
            for command in commands[n:]:
                if "\x00" in command:
                    outputs.append("")
                    continue
                if time.monotonic() - started > REPLAY_BUDGET_S:
                    outputs.append("")
                    complete = False
                    continue
                result = sandbox.run(command, cwd)
                outputs.append(result.text)
                cwd = result.cwd or cwd
        except SandboxError as exc:
            sandbox.close()
            raise ResourceExhausted(f"the history could not be replayed ({exc}); retry later") from None
        return sandbox, outputs, cwd, complete

    def _keep_replay(self, task: data.BashTask, actions: Sequence[str], sandbox: Sandbox, outputs: list[str],
                     cwd: str, complete: bool = True) -> None:
        commands = [a.strip() for a in actions]
        end = self._submitted_at(commands)
        if end is not None or sandbox.dead or not complete:
            sandbox.close()
            return
        evicted = []
        with self._lock:
            if self._closed:
                evicted.append(sandbox)
            else:
                self._replays[(task.task_id, tuple(commands))] = (sandbox, outputs, cwd)
                while len(self._replays) > REPLAY_CACHE:
                    evicted.append(self._replays.popitem(last=False)[1][0])
        for old in evicted:
            old.close()

    @staticmethod
    def plan(task: data.BashTask, actions: Sequence[str]) -> tuple[str, ...]:
        commands = [a.strip() for a in actions]
        if SUBMIT in commands:
            return ()
        if commands and commands[-1] == task.gold.strip():
            return (SUBMIT,)
        return (task.gold.strip(), SUBMIT)

    @staticmethod
    def secrets(task: data.BashTask, gold_output: str, observed: Sequence[str]) -> tuple[str, ...]:
        """Lines of the gold output the agent has not seen (nor been given: the query, the command, the
        first observation). A line of at most four letters ("run", "root", "etc") is no secret: such words
        are everywhere in prose, and the teacher matches secrets as words."""
        known = "\n".join([task.query, task.gold, intro_text(task), *observed])
        found: list[str] = []
        for line in gold_output.splitlines():
            line = line.strip()
            if not line or not re.search(r"\w", line) or len(line) > MAX_SECRET_CHARS or line in found \
                    or re.fullmatch(r"[A-Za-z]{1,4}", line):
                continue
            # Whole words, as the teacher matches secrets: "4" is not seen in "42".
            if re.search(r"(?<!\w)" + re.escape(line) + r"(?!\w)", known, re.IGNORECASE):
                continue
            found.append(line)
            if len(found) >= MAX_SECRETS:
                break
        return tuple(found)

    def privileged_state(self, task_id: str, actions: Sequence[str]) -> base.PrivilegedInfo:
        task = self.bash_task(task_id)
        gold = self.gold(task)
        sandbox, outputs, cwd, complete = self.replay(task, actions)
        self._keep_replay(task, actions, sandbox, outputs, cwd, complete)
        changes = [f"{code} {path}" for path, code in gold.status]
        facts = [
            f"the gold command exits with status {gold.exit_code}" if gold.exit_code is not None
            else "the gold command was stopped by the sandbox's limits",
            f"the gold output has {len(gold.output.splitlines())} lines",
            "the gold command changes the file system (git status --short): " + "; ".join(changes) if changes
            else "the gold command changes no tracked file (InterCode's git status stays clean)",
        ]
        return base.PrivilegedInfo(
            task=self.summary(task),
            optimal_actions=self.plan(task, actions),
            facts=tuple(facts),
            secrets=self.secrets(task, gold.output, outputs),
            gold_command=task.gold.strip(),
            gold_output=gold.output,
            extra={"engine": self.version, "file_system": f"fs{task.family}", "difficulty": str(task.difficulty),
                   "gold2": task.gold2, "replayed_actions": str(len(actions)), "cwd": cwd},
        )

    def expert_advice(self, task_id: str, actions: Sequence[str], expert: str) -> base.ExpertAdvice:
        self._check_expert(expert)
        task = self.bash_task(task_id)
        plan = self.plan(task, actions)
        if not plan:  # submitted: the episode is over; was it won?
            sandbox, outputs, _, _ = self.replay(task, actions)
            try:
                commands = [a.strip() for a in actions[:self._submitted_at(actions)]]
                reward = self.evaluate(task, sandbox, commands[0] if commands else None, outputs[-1] if outputs else "")
            except SandboxError as exc:
                raise ResourceExhausted(f"the history could not be scored ({exc}); retry later") from None
            finally:
                sandbox.close()
            return base.ExpertAdvice("", (), reward.won, "")
        return base.ExpertAdvice(plan[0], plan, False, self.rationale(task, plan[0]))

    def rationale(self, task: data.BashTask, action: str) -> str:
        text = explain.rationale(action)
        # The reason must not tell the answer: a secret that slipped in (a file name the command also
        # prints) replaces it with the generic sentence.
        if action != SUBMIT:
            for secret in self.secrets(task, self.gold(task).output, ()):
                if re.search(r"(?<!\w)" + re.escape(secret) + r"(?!\w)", text, re.IGNORECASE):
                    return explain.GENERIC_RATIONALE
        return text

    def demonstration(self, task_id: str, expert: str, horizon: int) -> base.Demonstration:
        self._check_expert(expert)
        episode = self.start(task_id, horizon)
        try:
            obs = episode.reset()
            steps: list[base.DemoStep] = []
            while not obs.done:
                plan = self.plan(episode.bash_task, episode.actions)
                action = plan[0] if plan else SUBMIT
                nxt = episode.step(action)
                steps.append(base.DemoStep(obs.text, (), action, self.rationale(episode.bash_task, action), nxt.reward,
                                           nxt.last_action_valid, nxt.text))
                obs = nxt
        finally:
            episode.close()
        return base.Demonstration(
            task=episode.task, expert=expert, steps=tuple(steps), done=obs.done, won=episode.won,
            score=episode.score, truncated=obs.truncated,
            metadata={"engine": self.version, "expert": expert, "horizon": str(episode.horizon), "task_id": task_id},
        )

    @staticmethod
    def _check_expert(expert: str) -> None:
        if expert != base.PLANNER:
            raise InvalidArgument(f"unknown expert {expert!r}; {NAME} offers: {base.PLANNER}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pools, self._pools = list(self._pools.values()), {}
            replays, self._replays = [v[0] for v in self._replays.values()], OrderedDict()
        for pool in pools:
            pool.close()
        for sandbox in replays:
            sandbox.close()
        self.templates.close()
