"""The `textworld` backend: TextWorld games (cooking, treasure hunter, simple, coin collector) generated
offline from a seed (games.py), played by TextWorld's own engine (Jericho running the compiled game).

Episodes. One TextWorld environment per session. The observation text, the admissible commands
(the candidates), `won`, `lost`, the score and the maximum score are the engine's; `Observation.score`
is score / max_score (partial credit), `reward` its change at this step. An episode ends when the game
is won or lost or at the horizon. The first observation drops TextWorld's ASCII-art banner. Any text is
a command for TextWorld's parser; characters outside printable ASCII (newlines included, which the
interpreter would read as a second command) are replaced by spaces before it sees them, and
`last_action_valid` says whether the command was one of the admissible commands.

Expert. `planner`: TextWorld's `policy_commands`, the walkthrough re-planned by the engine from the
current state (it knows the whole game). There is no searcher: nothing in TextWorld searches from
what the agent has seen.

Privileged state after a replayed history (replays are cached per task like the alfworld backend's):
- essential_objects: the things (not rooms, doors, containers or supporters) the plan names;
  all those the walkthrough names once the game is won;
- critical_locations: where those things are (room, container or supporter), then the places the plan
  names (doors, containers, supporters, rooms it goes through), in plan order;
- optimal_actions: the re-planned policy commands;
- facts: sentences from the engine's facts about those things and places ("red apple is in the
  fridge", "the agent is carrying the knife", "fridge is closed", "red apple is sliced");
- secrets: for each essential thing the agent has not perceived (its name in no text it has read,
  the goal included): its location sentence, the place that holds it and its name.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from services.environment.backends import base
from services.environment.backends.options import (
    config_from_options as options_config,
    config_or_options,
    integer_or_text,
)
from services.environment.backends.textworld import games as twg
from services.runtime.deadline import current_deadline
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, quote

log = logging.getLogger("leap.environment.textworld")

NAME = "textworld"
EXPERTS: tuple[str, ...] = (base.PLANNER,)
MAX_TASKS = 100_000
TW_LOCK = threading.RLock()  # TextWorld's generators and interpreter are not known to be thread-safe
GENERIC_REASON = "This is the next step towards the goal."
_PLACE_TYPES = {"r", "d", "c", "s", "P", "I", "oven", "stove", "toaster"}


def engine_version() -> str:
    from importlib.metadata import version

    return f"textworld {version('textworld')}"


def cache_root() -> Path:
    import os

    base_dir = os.environ.get("LEAP_CACHE_DIR") or str(Path.home() / ".cache" / "leap-serve")
    return Path(base_dir) / "textworld"


@dataclass(frozen=True)
class TextWorldConfig:
    """Options of the backend (strings accepted, as from `-o textworld:key=value`)."""

    # Comma-separated challenges taking turns by task index.
    challenges: str = ",".join(twg.DEFAULT_CHALLENGES)
    seed: int = 0
    train_tasks: int = 100
    valid_seen_tasks: int = 20
    valid_unseen_tasks: int = 20
    horizon: int = 50
    cache_dir: str = ""
    replay_cache: int = 8

    def __post_init__(self):
        problems = []
        chosen = self.challenge_list()
        unknown = [c for c in chosen if c not in twg.CHALLENGES]
        if not chosen or unknown:
            problems.append(f"challenges must be a comma-separated list of {', '.join(twg.CHALLENGES)}")
        for name in ("train_tasks", "valid_seen_tasks", "valid_unseen_tasks"):
            if not 1 <= getattr(self, name) <= MAX_TASKS:
                problems.append(f"{name} must be between 1 and {MAX_TASKS}")
        if not 0 <= self.seed < 2**31:
            problems.append("seed must be between 0 and 2**31 - 1")
        if not 1 <= self.horizon <= 10_000:
            problems.append("horizon must be between 1 and 10000")
        if not 1 <= self.replay_cache <= 1024:
            problems.append("replay_cache must be between 1 and 1024")
        if "\x00" in self.cache_dir or len(self.cache_dir) > 4096:
            problems.append("cache_dir must be a path without NUL characters, at most 4096 characters")
        if problems:
            raise InvalidArgument("invalid textworld options: " + "; ".join(problems))

    def challenge_list(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.challenges.split(",") if c.strip())

    def split_size(self, split: str) -> int:
        return {"train": self.train_tasks, "valid_seen": self.valid_seen_tasks,
                "valid_unseen": self.valid_unseen_tasks}[split]


def config_from_options(options: dict[str, Any]) -> TextWorldConfig:
    return options_config(TextWorldConfig, options, NAME, integer_or_text(NAME),
                          quote_key=lambda key: quote(str(key)), invalid=())


def strip_banner(text: str) -> str:
    """The first observation without TextWorld's ASCII-art title."""
    lines = text.split("\n")
    start = 0
    while start < len(lines) and not any(ch.isalnum() for ch in lines[start]):
        start += 1
    return "\n".join(lines[start:]).strip()


#: Longest command the interpreter reads (Jericho truncates longer input itself, with a warning).
MAX_COMMAND_CHARS = 190


def sanitize(command: str) -> str:
    """What TextWorld's parser receives: printable ASCII only, at most MAX_COMMAND_CHARS (see the module
    docstring)."""
    return "".join(ch if " " <= ch <= "~" else " " for ch in command).strip()[:MAX_COMMAND_CHARS]


#: Commands of the interpreter and of TextWorld's debugging that are no move in the game: they print the
#: hidden world state (`print_state`, `tw-print ...`, "enable print state option" prints it after every
#: move) or restart, undo, save or restore the game behind the episode's back. Never sent to the game.
_META_WORDS = frozenset({"print_state", "restart", "quit", "q", "save", "restore", "script", "unscript",
                         "undo", "transcript", "noscript", "verify", "version"})
_META = re.compile(r"(?:^|[\s.,;])(?:tw-|print_state\b|(?:enable|disable)\b.*\boption\b)", re.IGNORECASE)
META_COMMAND_TEXT = "Nothing happens."


def is_meta_command(command: str) -> bool:
    """Whether a command is one of the interpreter's or TextWorld's own (see _META_WORDS), in any case,
    anywhere in a chain of commands ("look. print_state", "look then undo")."""
    text = sanitize(command).lower()
    if _META.search(text):
        return True
    clauses = (clause.split() for clause in re.split(r"[.,;]|\bthen\b", text))
    return any(words and words[0] in _META_WORDS for words in clauses)


def mentions(text: str, phrase: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(phrase) + r"(?![\w])", text, re.IGNORECASE) is not None


# --- the engine ---------------------------------------------------------------------------------------------

@dataclass
class Frame:
    text: str
    admissible: tuple[str, ...]
    won: bool
    lost: bool
    score: float  # normalised to [0, 1]
    valid: bool = True
    facts: list = field(default_factory=list)
    plan: tuple[str, ...] = ()


def _infos(privileged: bool):
    import textworld  # noqa: PLC0415

    return textworld.EnvInfos(admissible_commands=True, won=True, lost=True, score=True, max_score=True,
                              facts=privileged, policy_commands=privileged)


class Engine:
    """One TextWorld environment playing one game."""

    def __init__(self, game: twg.GameRecord, privileged: bool):
        import textworld  # noqa: PLC0415

        self.game = game
        self.privileged = privileged
        with TW_LOCK, warnings.catch_warnings():
            # Jericho warns that it cannot detect score changes in TextWorld's games; TextWorld tracks them.
            warnings.filterwarnings("ignore", message=".*is not fully supported.*")
            self._env = textworld.start(str(game.game_file), request_infos=_infos(privileged))
        self.frame: Frame | None = None

    def _frame(self, state, valid: bool) -> Frame:
        max_score = state["max_score"] or 1
        return Frame(text=state["feedback"], admissible=tuple(state["admissible_commands"] or ()),
                     won=bool(state["won"]), lost=bool(state["lost"]),
                     score=max(0.0, min(1.0, float(state["score"] or 0) / max_score)), valid=valid,
                     facts=list(state["facts"]) if self.privileged else [],
                     plan=tuple(state["policy_commands"] or ()) if self.privileged else ())

    def reset(self) -> Frame:
        with TW_LOCK:
            self.frame = self._frame(self._env.reset(), True)
        return self.frame

    def step(self, command: str) -> Frame:
        assert self.frame is not None, "reset first"
        if is_meta_command(command):  # the game never sees it: nothing changes, nothing is printed
            self.frame = replace(self.frame, text=META_COMMAND_TEXT, valid=False)
            return self.frame
        valid = command.strip() in self.frame.admissible
        with TW_LOCK:
            state, _, _ = self._env.step(sanitize(command))
            self.frame = self._frame(state, valid)
        return self.frame

    def close(self) -> None:
        with TW_LOCK:
            self._env.close()


class TextWorldEpisode(base.EpisodeState):
    def __init__(self, engine: Engine, task: base.TaskSummary, horizon: int):
        self._engine: Engine | None = engine
        self.task = task
        self.horizon = horizon

    def _live(self) -> Engine:
        if self._engine is None:
            raise FailedPrecondition("the episode is closed; start a new one")
        return self._engine

    def reset(self) -> base.Observation:
        frame = self._live().reset()
        self._score = frame.score
        return base.Observation(text=strip_banner(frame.text), candidates=frame.admissible, score=frame.score)

    def step(self, action: str) -> base.Observation:
        self._begin_step()
        before = self._score
        frame = self._live().step(action)
        truncated = self._settle(won=frame.won, score=frame.score, ended=frame.lost)
        return self._observation(frame.text, frame.admissible, reward=frame.score - before, truncated=truncated,
                                 valid=frame.valid, info={"lost": "true"} if frame.lost else {})

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()


# --- privileged state -------------------------------------------------------------------------------------------

@dataclass
class _World:
    types: dict[str, str] = field(default_factory=dict)
    holder: dict[str, str] = field(default_factory=dict)  # thing -> room / container / supporter / "I"
    unary: dict[str, list[str]] = field(default_factory=dict)
    places: set[str] = field(default_factory=set)

    @classmethod
    def from_facts(cls, facts) -> "_World":
        world = cls()
        for fact in facts:
            args = [(v.name.strip(), v.type) for v in fact.arguments]
            for name, kind in args:
                world.types.setdefault(name, kind)
            if fact.name in ("at", "in", "on") and len(args) == 2:
                world.holder[args[0][0]] = args[1][0]
                world.places.add(args[1][0])
            elif len(args) == 1:
                world.unary.setdefault(args[0][0], []).append(fact.name)
        world.places |= {n for n, k in world.types.items() if k in _PLACE_TYPES}
        return world

    def where(self, thing: str) -> str:
        holder = self.holder.get(thing, "")
        if holder in ("I", ""):
            return f"the agent is carrying {thing}" if holder == "I" else ""
        if holder == "P":
            return ""
        kind = self.types.get(holder, "")
        prep = "on" if kind == "s" else "in"
        return f"{thing} is {prep} the {holder}"


def _named(commands: Sequence[str], names) -> list[str]:
    text = "\n".join(commands)
    found = [(text.find(n), n) for n in names if n and n not in ("P", "I") and mentions(text, n)]
    return [n for _, n in sorted(found)]


@dataclass
class _Privileged:
    essential: list[str]
    critical: list[str]
    facts: list[str]
    secrets: list[str]


def privileged(world: _World, plan: Sequence[str], walkthrough: Sequence[str], observed: str) -> _Privileged:
    things = [n for n in world.types if n not in world.places]
    essential = _named(plan or walkthrough, things)
    critical: list[str] = []
    for thing in essential:
        holder = world.holder.get(thing, "")
        if holder and holder not in ("I", "P") and holder not in critical:
            critical.append(holder)
    for place in _named(plan, [p for p in world.places if p not in ("I", "P")]):
        if place not in critical:
            critical.append(place)
    facts: list[str] = []
    secrets: list[str] = []
    for thing in essential:
        where = world.where(thing)
        if where:
            facts.append(where)
        facts.extend(f"{thing} is {word}" for word in world.unary.get(thing, []))
        if not mentions(observed, thing):
            holder = world.holder.get(thing, "")
            secrets.extend(s for s in (where, holder, thing) if s and s not in ("I", "P") and s not in secrets)
    for place in critical:
        facts.extend(f"{place} is {word}" for word in world.unary.get(place, [])
                     if word in ("open", "closed", "locked"))
    return _Privileged(essential, critical, facts, secrets)


def explain(command: str, secrets: Sequence[str]) -> str:
    """One sentence for a planner step, as the agent's own thought; never names a secret."""
    words = command.split()
    verb = words[0] if words else ""
    rest = " ".join(words[1:])
    reason = GENERIC_REASON
    if verb == "go" and rest:
        reason = f"What the task needs lies {rest} of here, so I go {rest}."
    elif verb == "take" and rest:
        reason = f"The task needs the {rest.split(' from ')[0]}, so I take it."
    elif verb == "open" and rest:
        reason = f"The {rest} is closed; I open it to get at what is behind or inside it."
        if any(mentions(reason, s) for s in secrets):
            reason = "It is closed, and closed things can hide what the task needs, so I open it."
    elif verb == "unlock" and rest:
        target, _, key = rest.partition(" with ")
        reason = f"The {target} is locked and I have the {key or 'key'}, so I unlock it."
    elif verb in ("put", "insert") and rest:
        match = re.match(r"(.+?) (on|into|in) (.+)$", rest)
        if match:
            reason = f"The task wants the {match.group(1)} {match.group(2)} the {match.group(3)}, so I put it there."
    elif verb == "cook" and rest:
        thing, _, tool = rest.partition(" with ")
        reason = f"The recipe wants the {thing} cooked, so I cook it with the {tool}." if tool else GENERIC_REASON
    elif verb in ("slice", "dice", "chop") and rest:
        thing, _, tool = rest.partition(" with ")
        done = {"slice": "sliced", "dice": "diced", "chop": "chopped"}[verb]
        reason = f"The recipe wants the {thing} {done}, so I {verb} it with the {tool}."
    elif command == "prepare meal":
        reason = "I have everything the recipe asks for, so I prepare the meal."
    elif command == "eat meal":
        reason = "The meal is ready; eating it completes the task."
    elif verb in ("examine", "read") and rest:
        reason = f"I read the {rest} to learn what the task requires."
    elif verb == "drop" and rest:
        reason = f"The task wants the {rest} left here, so I drop it."
    elif command == "inventory":
        reason = "I check what I am carrying before I go on."
    elif command == "look":
        reason = "I look around to see where I am and what is here."
    if any(mentions(reason, s) for s in secrets):
        return GENERIC_REASON
    return reason


class _Replay:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.actions: list[str] = []
        self.texts: list[str] = []

    def restart(self) -> None:
        frame = self.engine.reset()
        self.actions, self.texts = [], [frame.text]

    def advance(self, action: str) -> Frame:
        """One action of the history. Once the game is won or lost it is over (TextWorld's interpreter
        has printed "*** The End ***" and tracks nothing more), so later actions change nothing, as an
        episode refuses them."""
        frame = self.engine.frame
        if frame is not None and (frame.won or frame.lost):
            self.actions.append(action)
            return frame
        frame = self.engine.step(action)
        self.actions.append(action)
        self.texts.append(frame.text)
        return frame


# --- the backend ----------------------------------------------------------------------------------------------

class TextWorldBackend(base.Backend):
    """TextWorld games generated from a seed (see the module docstring). Options: TextWorldConfig."""

    name = NAME

    def __init__(self, config: TextWorldConfig | None = None, **options: Any):
        self.config = config_or_options(config, options, config_from_options, "a TextWorldConfig")
        self._challenges = self.config.challenge_list()
        from importlib.metadata import version  # noqa: PLC0415

        key = (f"textworld-{version('textworld')}-gen{twg.GENERATOR_VERSION}-seed{self.config.seed}-"
               + "+".join(c.removeprefix("tw-") for c in self._challenges))
        self.root = (Path(self.config.cache_dir) if self.config.cache_dir else cache_root()) / key
        self._version = engine_version()
        self._replays: OrderedDict[str, _Replay] = OrderedDict()
        self._replay_lock = threading.Lock()

    def spec(self) -> base.EnvironmentSpec:
        return base.EnvironmentSpec(
            name=NAME,
            description=f"TextWorld games generated offline from seed {self.config.seed} "
                        f"({', '.join(self._challenges)}), played by TextWorld's engine.",
            splits=twg.SPLITS, action_space=base.CANDIDATES, default_horizon=self.config.horizon,
            version=self._version, task_types=self._challenges, experts=EXPERTS)

    def _check_split(self, split: str) -> int:
        if split not in twg.SPLITS:
            sizes = ", ".join(f"{s} ({self.config.split_size(s)} tasks)" for s in twg.SPLITS)
            raise NotFound(f"unknown split {quote(split)} of {NAME}; valid splits: {sizes}")
        return self.config.split_size(split)

    def num_tasks(self, split: str) -> int:
        return self._check_split(split)

    def record(self, task_id: str) -> twg.GameRecord:
        parsed = twg.parse_task_id(task_id)
        if parsed is None or parsed[0] not in twg.SPLITS or not 0 <= parsed[1] < self.config.split_size(parsed[0]):
            ranges = ", ".join(f"{twg.task_id_of(s, 0)}..{twg.task_id_of(s, self.config.split_size(s) - 1)}"
                               for s in twg.SPLITS)
            raise NotFound(f"unknown task {quote(task_id)} of {NAME}; valid task ids: {ranges}")
        return self._game(*parsed)

    def _game(self, split: str, index: int) -> twg.GameRecord:
        try:
            with TW_LOCK:
                return twg.ensure_game(self.root, split, index, self._challenges, self.config.seed)
        except Exception as exc:  # noqa: BLE001 - TextWorld's generator raises anything
            log.exception("generating a TextWorld game failed", extra={"task": twg.task_id_of(split, index)})
            raise FailedPrecondition(f"TextWorld could not generate task {twg.task_id_of(split, index)} "
                                     f"({type(exc).__name__}: {str(exc)[:200]})") from None

    def summary(self, record: twg.GameRecord) -> base.TaskSummary:
        return base.TaskSummary(record.task_id, record.split, record.goal, record.challenge)

    def task(self, task_id: str) -> base.TaskSummary:
        return self.summary(self.record(task_id))

    def list_tasks(self, split: str, offset: int, limit: int) -> list[base.TaskSummary]:
        size = self._check_split(split)
        start = max(0, offset)
        deadline = current_deadline()
        summaries = []
        for i in range(start, min(size, start + max(0, limit))):
            # A game not generated yet takes seconds under the process-wide TextWorld lock: stop when the
            # caller has given up (the games made so far stay on disk for the next call).
            deadline.check(f"generating the games of {split}")
            summaries.append(self.summary(self._game(split, i)))
        return summaries

    @staticmethod
    def _engine(record: twg.GameRecord, privileged: bool) -> Engine:
        try:
            return Engine(record, privileged)
        except Exception as exc:  # noqa: BLE001 - TextWorld / Jericho raise anything on a damaged game file
            log.exception("TextWorld could not start a game", extra={"task": record.task_id})
            raise FailedPrecondition(f"TextWorld could not start the game of task {record.task_id} "
                                     f"({type(exc).__name__}); remove {record.folder} to regenerate it") from None

    def start(self, task_id: str, horizon: int) -> TextWorldEpisode:
        record = self.record(task_id)
        return TextWorldEpisode(self._engine(record, False), self.summary(record), horizon or self.config.horizon)

    # --- privileged side -------------------------------------------------------------------------------

    def _replay(self, record: twg.GameRecord, actions: Sequence[str]) -> _Replay:
        replay = self._replays.get(record.task_id)
        if replay is None:
            if len(self._replays) >= self.config.replay_cache:
                _, evicted = self._replays.popitem(last=False)
                evicted.engine.close()
            replay = _Replay(self._engine(record, True))
            self._replays[record.task_id] = replay
        self._replays.move_to_end(record.task_id)
        done = replay.actions
        if replay.engine.frame is None or len(done) > len(actions) or list(actions[:len(done)]) != done:
            replay.restart()
        deadline = current_deadline()
        for action in actions[len(replay.actions):]:
            deadline.check("replaying the history")  # the replay keeps what it reached; others wait on the lock
            replay.advance(action)
        return replay

    def _privileged(self, record: twg.GameRecord, replay: _Replay) -> _Privileged:
        frame = replay.engine.frame
        observed = "\n".join([record.goal, *replay.texts])
        return privileged(_World.from_facts(frame.facts), frame.plan, record.walkthrough, observed)

    def privileged_state(self, task_id: str, actions: Sequence[str]) -> base.PrivilegedInfo:
        record = self.record(task_id)
        with self._replay_lock:
            replay = self._replay(record, actions)
            frame = replay.engine.frame
            info = self._privileged(record, replay)
        return base.PrivilegedInfo(
            task=self.summary(record), essential_objects=tuple(info.essential), critical_locations=tuple(info.critical),
            optimal_actions=frame.plan if not frame.won else (), facts=tuple(info.facts), secrets=tuple(info.secrets),
            extra={"engine": self._version, "challenge": record.challenge, "replayed_actions": str(len(actions)),
                   "optimal_length": str(len(frame.plan)), "won": str(frame.won).lower(),
                   "lost": str(frame.lost).lower(), "score": f"{frame.score:g}",
                   "walkthrough_length": str(len(record.walkthrough))})

    def _advice(self, record: twg.GameRecord, replay: _Replay) -> base.ExpertAdvice:
        frame = replay.engine.frame
        if frame.won:
            return base.ExpertAdvice("", (), True, "")
        if not frame.plan:
            raise FailedPrecondition(f"the game of task {record.task_id} cannot be won from here (lost: "
                                     f"{str(frame.lost).lower()})")
        secrets = self._privileged(record, replay).secrets
        return base.ExpertAdvice(frame.plan[0], frame.plan, False, explain(frame.plan[0], secrets))

    def expert_advice(self, task_id: str, actions: Sequence[str], expert: str) -> base.ExpertAdvice:
        self._check_expert(expert)
        record = self.record(task_id)
        with self._replay_lock:
            return self._advice(record, self._replay(record, actions))

    def demonstration(self, task_id: str, expert: str, horizon: int) -> base.Demonstration:
        self._check_expert(expert)
        record = self.record(task_id)
        horizon = horizon or self.config.horizon
        steps: list[base.DemoStep] = []
        with self._replay_lock:
            replay = self._replay(record, [])
            frame = replay.engine.frame
            observation, candidates, before = strip_banner(frame.text), frame.admissible, frame.score
            while not (frame.won or frame.lost) and len(steps) < horizon:
                advice = self._advice(record, replay)
                frame = replay.advance(advice.next_action)
                steps.append(base.DemoStep(observation, candidates, advice.next_action, advice.rationale,
                                           frame.score - before, frame.valid, frame.text))
                observation, candidates, before = frame.text, frame.admissible, frame.score
        truncated = not (frame.won or frame.lost) and len(steps) >= horizon
        return base.Demonstration(
            task=self.summary(record), expert=expert, steps=tuple(steps), done=frame.won or frame.lost or truncated,
            won=frame.won, score=frame.score, truncated=truncated,
            metadata={"engine": self._version, "expert": expert, "horizon": str(horizon), "task_id": task_id,
                      "challenge": record.challenge})

    @staticmethod
    def _check_expert(expert: str) -> None:
        if expert not in EXPERTS:
            raise InvalidArgument(f"unknown expert {quote(expert)}; valid experts: {', '.join(EXPERTS)}")

    def close(self) -> None:
        with self._replay_lock:
            for replay in self._replays.values():
                replay.engine.close()
            self._replays.clear()
