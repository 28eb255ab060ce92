"""The real ALFWorld engine as the backend drives it: TextWorld's PddlEnv with ALFWorld's demangler,
fast-downward's planner, and ALFWorld's hand-coded expert.

An `Engine` is one PddlEnv (each holds its own copy of fast-downward's shared library, so engines
never share planner state) wrapped by ALFWorld's `AlfredDemangler` (the "apple 1" names). The game
text, the admissible commands, `won`, the facts and the planner's plan all come from it.

Thread safety. TextWorld's PDDL path is not thread-safe: fast-downward's translator keeps global
options, swaps `sys.stdout` while it runs and rewrites `sys.argv`; the TatSu parsers are module
globals; the grammar evaluates Python expressions. Every call into an engine therefore holds
`ENGINE_LOCK`, one re-entrant lock per process. Under the GIL this costs no throughput (the work is
Python), only latency when several sessions step at the same instant.

Speed-ups (`install_speedups`, installed once, each a pure cache that changes no result):
- `fast_downward.pddl2sas` is memoised per (domain, problem, optimize): TextWorld translates the
  problem twice on every reset, which is most of a reset's cost. The cached task objects are only
  read by TextWorld. The wrapper also restores `sys.argv`, which the translator overwrites.
- TextWorld re-parses the same grammar templates and logic queries with TatSu on every step
  (`textgen._parse_and_convert`, `textworld.logic._parse_and_convert`); their results are cached
  by argument and handed out as deep copies (callers mutate them), which halves a step's cost.
`speedups_enabled(False)` turns the caches off (tests compare both ways).

The hand-coded expert (ALFWorld's `HandCodedTWAgent`) uses the module-level `random` for two
choices; `ExpertTracker` gives it a private, seeded generator, so a replayed history always gets the
same advice.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import random
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from services.environment.backends.alfworld import paths  # noqa: F401  (sets ALFWORLD_DATA before alfworld loads)

import fast_downward  # noqa: E402
import textworld  # noqa: E402
import textworld.logic as _tw_logic  # noqa: E402
import textworld.envs.pddl.textgen as _tw_textgen  # noqa: E402
from textworld.envs import PddlEnv  # noqa: E402

import alfworld.agents.expert.handcoded_expert as _handcoded  # noqa: E402
from alfworld.agents.environment.alfred_tw_env import AlfredDemangler  # noqa: E402
from alfworld.agents.expert import HandCodedAgentFailed, HandCodedAgentTimeout, HandCodedTWAgent  # noqa: E402

ENGINE_LOCK = threading.RLock()

#: What PddlEnv answers to a command that is not admissible (its state is then unchanged).
NOTHING_HAPPENS = "Nothing happens."
#: The banner TextWorld puts before ALFWorld's first observation; it carries no information.
BANNER = "-= Welcome to TextWorld, ALFRED! =-"
#: Steps after which ALFWorld's expert wrapper gives up (AlfredExpert uses 200).
EXPERT_MAX_STEPS = 200


# --- speed-ups -----------------------------------------------------------------------------------------

class _Memo:
    """A bounded cache in front of a pure function; `copy_out` hands out deep copies."""

    def __init__(self, fn: Callable, key: Callable[..., Any], copy_out: bool, size: int):
        self.fn, self.key, self.copy_out, self.size = fn, key, copy_out, size
        self.cache: OrderedDict[Any, Any] = OrderedDict()
        self.lock = threading.RLock()  # the wrapped parsers are shared module globals

    def __call__(self, *args, **kwargs):
        if not _SPEEDUPS["on"]:
            with self.lock:
                return self.fn(*args, **kwargs)
        key = self.key(*args, **kwargs)
        with self.lock:
            try:
                value = self.cache[key]
                self.cache.move_to_end(key)
            except KeyError:
                value = self.fn(*args, **kwargs)
                self.cache[key] = value
                while len(self.cache) > self.size:
                    self.cache.popitem(last=False)
        return copy.deepcopy(value) if self.copy_out else value


def _args_key(*args, **kwargs):
    return args, tuple(sorted(kwargs.items()))


def _pddl2sas_key(domain: str, problem: str, verbose: bool = False, optimize: bool = False):
    digest = hashlib.sha256(domain.encode("utf-8") + b"\0" + problem.encode("utf-8")).hexdigest()
    return digest, bool(optimize)


def _keep_argv(fn: Callable) -> Callable:
    def call(*args, **kwargs):
        argv = list(sys.argv)
        try:
            return fn(*args, **kwargs)
        finally:
            sys.argv[:] = argv
    return call


_SPEEDUPS = {"installed": False, "on": True}


def install_speedups() -> None:
    """Install the caches described in the module docstring (idempotent)."""
    with ENGINE_LOCK:
        if _SPEEDUPS["installed"]:
            return
        fast_downward.pddl2sas = _Memo(_keep_argv(fast_downward.pddl2sas), _pddl2sas_key, False, 256)
        _tw_textgen._parse_and_convert = _Memo(_tw_textgen._parse_and_convert, _args_key, True, 4096)
        _tw_logic._parse_and_convert = _Memo(_tw_logic._parse_and_convert, _args_key, True, 4096)
        _SPEEDUPS["installed"] = True


@contextlib.contextmanager
def speedups_enabled(on: bool) -> Iterator[None]:
    """Turn the caches on or off for a while (for tests that compare both)."""
    with ENGINE_LOCK:
        before = _SPEEDUPS["on"]
        _SPEEDUPS["on"] = on
        try:
            yield
        finally:
            _SPEEDUPS["on"] = before


# --- the expert's random numbers ----------------------------------------------------------------------

class _ExpertRandom:
    """Stands in for the `random` module inside ALFWorld's hand-coded expert: a seeded generator."""

    def __init__(self):
        self.current = random.Random(0)

    def __getattr__(self, name: str):
        return getattr(self.current, name)


_EXPERT_RANDOM = _ExpertRandom()
_handcoded.random = _EXPERT_RANDOM


# --- one engine ----------------------------------------------------------------------------------------

@dataclass
class Frame:
    """The engine's state after a reset or a step, as the backend uses it."""

    text: str
    admissible: tuple[str, ...]
    won: bool
    valid: bool = True
    facts: list = field(default_factory=list)  # textworld Propositions (demangled names), when requested
    raw: Any = None  # the GameState, for ALFWorld's expert


def strip_banner(text: str) -> str:
    if text.startswith(BANNER):
        text = text[len(BANNER):]
    return text.strip()


class Engine:
    """One PddlEnv + AlfredDemangler, able to load any game (see the module docstring)."""

    def __init__(self):
        install_speedups()
        with ENGINE_LOCK:
            infos = textworld.EnvInfos(admissible_commands=True, won=True, facts=False)
            self._env = AlfredDemangler(PddlEnv(infos))
        self.game_key: str | None = None
        self.frame: Frame | None = None

    def load(self, key: str, data: dict) -> None:
        """Load a game (its game.tw-pddl content) unless it is the one loaded already."""
        if key == self.game_key:
            return
        with ENGINE_LOCK:
            self.game_key = None
            self._env.load(data)
            self.game_key = key
        self.frame = None

    def _frame(self, state, valid: bool) -> Frame:
        facts = list(state["facts"]) if self._env.request_infos.facts else []
        return Frame(text=state["feedback"], admissible=tuple(state["admissible_commands"]), won=bool(state["won"]),
                     valid=valid, facts=facts, raw=state)

    def reset(self, facts: bool = False) -> Frame:
        with ENGINE_LOCK:
            self._env.request_infos.facts = facts
            state = self._env.reset()
            self.frame = self._frame(state, True)
        return self.frame

    def step(self, command: str, facts: bool = False, shortcut: bool = False) -> Frame:
        """Apply a command as PddlEnv does (exact text after strip(); anything else: nothing happens).

        With `shortcut`, a command that is not admissible is answered without calling the engine:
        PddlEnv leaves its state untouched then and answers "Nothing happens." with the same
        admissible commands, facts and `won`, so the frame is the same (used by replays).
        """
        assert self.frame is not None, "reset first"
        previous = self.frame
        valid = command.strip() in previous.admissible
        if shortcut and not valid and (previous.facts or not facts):
            state = copy.copy(previous.raw)
            state["feedback"] = NOTHING_HAPPENS
            state["last_command"] = command.strip()
            self.frame = Frame(NOTHING_HAPPENS, previous.admissible, previous.won, False, previous.facts, state)
            return self.frame
        with ENGINE_LOCK:
            self._env.request_infos.facts = facts
            state, _, _ = self._env.step(command)
            self.frame = self._frame(state, valid)
        return self.frame

    def plan(self) -> list[str]:
        """fast-downward's plan from the current state (ALFWorld's "planner" expert); [] when won."""
        with ENGINE_LOCK:
            pddl = self._env.unwrapped
            return list(pddl._pddl_state.replan(pddl._entity_infos))  # TextWorld 1.7's replanning call


class EnginePool:
    """Engines for episodes: at most `limit` at once, idle ones reused (preferring the same game)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._idle: list[Engine] = []
        self._busy = 0
        self._lock = threading.Lock()

    def acquire(self, key: str) -> Engine | None:
        """An engine (maybe with `key` loaded already), or None when `limit` are busy."""
        with self._lock:
            for i, engine in enumerate(self._idle):
                if engine.game_key == key:
                    self._busy += 1
                    return self._idle.pop(i)
            if self._idle:
                self._busy += 1
                return self._idle.pop()
            if self._busy >= self.limit:
                return None
            self._busy += 1
        try:
            return Engine()
        except BaseException:
            with self._lock:
                self._busy -= 1
            raise

    def release(self, engine: Engine) -> None:
        with self._lock:
            self._busy -= 1
            self._idle.append(engine)

    @property
    def busy(self) -> int:
        with self._lock:
            return self._busy


# --- ALFWorld's hand-coded expert ------------------------------------------------------------------------

class ExpertTracker:
    """ALFWorld's hand-coded expert following a history, as ALFWorld's AlfredExpert wrapper runs it.

    It observes the first text, then after every step (whoever chose the action) updates its memory
    with the action and the new state and proposes the next command. Like the wrapper, it proposes
    "look" first, and "look" again when its proposal is not admissible. When it gives up (it ran out
    of subgoals, or past EXPERT_MAX_STEPS steps) it keeps proposing "look" and says so in `gave_up`.
    """

    def __init__(self, game_file: str, seed: int):
        self.rng = random.Random(seed)
        with self._rng():
            self.agent = HandCodedTWAgent(max_steps=EXPERT_MAX_STEPS)
            self.agent.reset(game_file)  # reads traj_data.json beside the game file
        self.next_action = "look"
        self.gave_up = ""

    @contextlib.contextmanager
    def _rng(self) -> Iterator[None]:
        with ENGINE_LOCK:
            previous, _EXPERT_RANDOM.current = _EXPERT_RANDOM.current, self.rng
            try:
                yield
            finally:
                _EXPERT_RANDOM.current = previous

    @property
    def policy(self):
        return self.agent.policy

    def start(self, frame: Frame) -> None:
        with self._rng():
            self.agent.observe(frame.text)
        self.next_action = "look"

    def after(self, action: str, frame: Frame) -> None:
        if self.gave_up:
            return
        try:
            with self._rng():
                proposal = self.agent.act(frame.raw, 0, frame.won, action.strip())
        except HandCodedAgentTimeout:
            self.gave_up = f"the hand-coded expert stops after {EXPERT_MAX_STEPS} steps"
            proposal = "look"
        except HandCodedAgentFailed:
            self.gave_up = "the hand-coded expert ran out of subgoals without reaching the goal"
            proposal = "look"
        except (IndexError, KeyError, ValueError) as exc:  # its heuristics assume ALFRED-like texts
            self.gave_up = f"the hand-coded expert failed ({type(exc).__name__})"
            proposal = "look"
        self.next_action = proposal if proposal in frame.admissible else "look"

    def subgoal(self) -> str:
        """The expert's current subgoal action ("find", "take", "goto", "heat", "put", "use", ...)."""
        policy = self.agent.policy
        goals = policy.subgoals
        return goals[policy.subgoal_idx]["action"] if 0 <= policy.subgoal_idx < len(goals) else ""


def seed_of(text: str) -> int:
    return int.from_bytes(hashlib.sha256(("alfworld-expert|" + text).encode("utf-8")).digest()[:8], "big")

