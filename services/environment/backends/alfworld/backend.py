"""The `alfworld` backend: ALFWorld game folders played by the real ALFWorld + TextWorld engine.

Tasks. With `games=DIR` it serves every game folder under DIR (games.py says how folders, splits and
task ids are found). Without it, it serves household tasks exported as ALFWorld game folders
(export.py) into a cache folder made on first use: `<cache_dir>/household-<version>-export<v>-
train<N>-valid_seen<M>-valid_unseen<K>/json_2.1.1/<split>/...`, written whole into a temporary
folder and renamed, so concurrent first uses and crashes never leave half a cache.

Episodes. Each session holds one engine (engine.py) from a pool of `max_engines`; its observations,
admissible commands (the candidates, sorted as the engine sorts them) and `won` are the engine's.
The first observation drops TextWorld's "-= Welcome to TextWorld, ALFRED! =-" banner. A command is
applied exactly as ALFWorld does: its text after strip() must be one of the admissible commands,
anything else answers "Nothing happens." (`last_action_valid` false).

Experts. `planner`: fast-downward's plan from the engine's state (ALFWorld's PLANNER expert type,
which uses everything). `searcher`: ALFWorld's hand-coded expert (HANDCODED), which decides from the
observation texts it has read plus the engine's facts about what the agent itself holds and whether
that object is already hot / cool / clean, as ALFWorld's AlfredExpert wrapper runs it: "look" first,
then its proposal after every step, "look" when that is not admissible or when it has given up.

Privileged side, replayed. `privileged_state`, `expert_advice` and `demonstration` replay a history
from the task's initial state on an engine of their own. Replays are cached per task (the
`replay_cache` most recent tasks): a history that extends the cached one only steps the new
actions, so the oracle teacher's calls for t = 0, 1, 2, ... of a trajectory cost one step each; any
other history resets and replays (a non-admissible action costs no engine call: it changes nothing).
The expert's state and its seeded random choices are part of the replay, so the same history
always gets the same advice. privileged.py defines the privileged fields.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from services.environment.backends import base
from services.environment.backends.alfworld import engine as eng
from services.environment.backends.alfworld import export, games, paths
from services.environment.backends.alfworld import privileged as priv
from services.environment.backends.household.generator import VERSION as HOUSEHOLD_VERSION
from services.environment.backends.household.generator import HouseholdConfig, TaskSet
from services.environment.backends.options import (
    config_from_options as options_config,
    config_or_options,
    integer_or_text,
)
from services.runtime.deadline import current_deadline
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, quote
from services.runtime.files import atomic_directory

log = logging.getLogger("leap.environment.alfworld")

NAME = "alfworld"
EXPERTS: tuple[str, ...] = (base.PLANNER, base.SEARCHER)
SPLIT_ORDER = ("train", "valid_seen", "valid_unseen", "valid_train")
MAX_TASKS = 100_000


def engine_version() -> str:
    from importlib.metadata import version

    return f"alfworld {version('alfworld')} (textworld {version('textworld')})"


@dataclass(frozen=True)
class AlfworldConfig:
    """Options of the backend (strings accepted, as from `-o alfworld:key=value`)."""

    # A folder of ALFWorld game folders (or the official data's root); empty: exported household tasks.
    games: str = ""
    # For a folder of games of one split: the split they form (default: the folder's name when it is
    # a split name, else train).
    split: str = ""
    # Where exported household tasks are cached (default $LEAP_CACHE_DIR/alfworld or
    # ~/.cache/leap-serve/alfworld).
    cache_dir: str = ""
    # How many household tasks of each split are exported when `games` is not given.
    train_tasks: int = 300
    valid_seen_tasks: int = 60
    valid_unseen_tasks: int = 60
    # Maximum actions per episode when a Reset asks for none (ALFWorld's usual budget).
    horizon: int = 50
    # Engines for sessions (each open session holds one), and tasks whose replays are kept.
    max_engines: int = 64
    replay_cache: int = 8

    def __post_init__(self):
        problems = []
        for name in ("train_tasks", "valid_seen_tasks", "valid_unseen_tasks"):
            if not 1 <= getattr(self, name) <= MAX_TASKS:
                problems.append(f"{name} must be between 1 and {MAX_TASKS}")
        if not 1 <= self.horizon <= 10_000:
            problems.append("horizon must be between 1 and 10000")
        if not 1 <= self.max_engines <= 4096:
            problems.append("max_engines must be between 1 and 4096")
        if not 1 <= self.replay_cache <= 1024:
            problems.append("replay_cache must be between 1 and 1024")
        for name in ("games", "split", "cache_dir"):
            value = getattr(self, name)
            if "\x00" in value or len(value) > 4096:
                problems.append(f"{name} must be a path without NUL characters, at most 4096 characters")
        if self.split and self.split not in SPLIT_ORDER:
            problems.append(f"split must be one of {', '.join(SPLIT_ORDER)}")
        if problems:
            raise InvalidArgument("invalid alfworld options: " + "; ".join(problems))


def config_from_options(options: dict[str, Any]) -> AlfworldConfig:
    return options_config(AlfworldConfig, options, NAME, integer_or_text(NAME), quote_key=lambda key: quote(str(key)),
                          invalid=())


def cache_folder(config: AlfworldConfig) -> Path:
    root = Path(config.cache_dir) if config.cache_dir else paths.cache_root()
    key = (f"household-{HOUSEHOLD_VERSION}-export{export.EXPORT_VERSION}-train{config.train_tasks}-"
           f"valid_seen{config.valid_seen_tasks}-valid_unseen{config.valid_unseen_tasks}")
    return root / key


def ensure_exported(config: AlfworldConfig) -> Path:
    """The cache folder of exported household tasks, made on first use (atomically)."""
    final = cache_folder(config)
    if final.is_dir():
        return final
    sizes = {"train": config.train_tasks, "valid_seen": config.valid_seen_tasks,
             "valid_unseen": config.valid_unseen_tasks}
    tasks = TaskSet(HouseholdConfig(train_tasks=sizes["train"], valid_seen_tasks=sizes["valid_seen"],
                                    valid_unseen_tasks=sizes["valid_unseen"]))
    log.info("exporting household tasks as ALFWorld game folders", extra={"folder": str(final), **sizes})
    try:
        with atomic_directory(final) as tmp:
            export.write_tree(tmp / "json_2.1.1", [tasks.scene(s, i) for s, n in sizes.items() for i in range(n)])
    except (FileExistsError, OSError):
        if not final.is_dir():  # not another process finishing first: a real failure
            raise
    return final


# --- episodes -----------------------------------------------------------------------------------------------

class AlfworldEpisode(base.EpisodeState):
    def __init__(self, backend: "AlfworldBackend", engine: eng.Engine, game: games.GameInfo, horizon: int):
        self._backend = backend
        self._engine: eng.Engine | None = engine
        self.game = game
        self.task = backend.summary(game)
        self.horizon = horizon

    def _live(self) -> eng.Engine:
        if self._engine is None:
            raise FailedPrecondition("the episode is closed; start a new one")
        return self._engine

    def reset(self) -> base.Observation:
        frame = self._backend.guard(self.game, self._live().reset)
        self._won, self._score = frame.won, 1.0 if frame.won else 0.0
        return base.Observation(text=eng.strip_banner(frame.text), candidates=frame.admissible)

    def step(self, action: str) -> base.Observation:
        self._begin_step()
        frame = self._backend.guard(self.game, self._live().step, action)
        truncated = self._settle(won=frame.won, score=1.0 if frame.won else 0.0)
        return self._observation(frame.text, frame.admissible, reward=self._score, truncated=truncated,
                                 valid=frame.valid)

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            self._backend.pool.release(engine)


# --- replays ------------------------------------------------------------------------------------------------

class _Replay:
    """One task's engine with a known history, its texts and ALFWorld's expert following it."""

    def __init__(self, engine: eng.Engine, game: games.GameInfo):
        self.engine = engine
        self.game = game
        self.actions: list[str] = []
        self.texts: list[str] = []
        self.frame: eng.Frame | None = None
        self.tracker: eng.ExpertTracker | None = None

    def restart(self) -> None:
        self.frame = self.engine.reset(facts=True)
        self.actions, self.texts = [], [self.frame.text]
        self.tracker = eng.ExpertTracker(str(self.game.game_file), eng.seed_of(self.game.task_id))
        self.tracker.start(self.frame)

    def advance(self, action: str) -> eng.Frame:
        self.frame = self.engine.step(action, facts=True, shortcut=True)
        self.actions.append(action)
        self.texts.append(self.frame.text)
        self.tracker.after(action, self.frame)
        return self.frame


# --- the backend ----------------------------------------------------------------------------------------------

class AlfworldBackend(base.Backend):
    """ALFWorld game folders on the real engine (see the module docstring). Options: AlfworldConfig."""

    name = NAME

    def __init__(self, config: AlfworldConfig | None = None, **options: Any):
        self.config = config_or_options(config, options, config_from_options, "an AlfworldConfig")
        eng.install_speedups()
        if self.config.games:
            root = Path(self.config.games)
            try:
                found = games.discover(root, self.config.split)
            except games.GameError as exc:
                raise InvalidArgument(f"alfworld games={quote(self.config.games)}: {exc}") from None
            except (OSError, ValueError) as exc:
                raise InvalidArgument(f"alfworld games={quote(self.config.games)} cannot be read "
                                      f"({type(exc).__name__})") from None
        else:
            if self.config.split:
                raise InvalidArgument("the split option is only for games=DIR")
            found = games.discover(ensure_exported(self.config))
        if not found.splits:
            reasons = "; ".join(f"{task}: {why}" for task, why in found.skipped[:3])
            raise InvalidArgument(f"no servable ALFWorld game folder under {quote(str(found.root))} "
                                  f"({len(found.skipped)} skipped{': ' + reasons if reasons else ''})")
        self.root = found.root
        self.skipped = found.skipped
        self._splits = {s: found.splits[s] for s in SPLIT_ORDER if s in found.splits}
        self._by_id = {g.task_id: g for gs in self._splits.values() for g in gs}
        self.pool = eng.EnginePool(self.config.max_engines)
        self._replays: OrderedDict[str, _Replay] = OrderedDict()
        self._replay_lock = threading.Lock()
        self._version = engine_version()

    # --- tasks -----------------------------------------------------------------------------------------

    def spec(self) -> base.EnvironmentSpec:
        source = f"game folders under {self.root}" if self.config.games else "household tasks exported as game folders"
        return base.EnvironmentSpec(
            name=NAME,
            description=f"ALFWorld (TextWorld engine, ALFWorld's PDDL domain and grammar) playing {source}.",
            splits=tuple(self._splits), action_space=base.CANDIDATES, default_horizon=self.config.horizon,
            version=self._version, task_types=games.TASK_TYPES, experts=EXPERTS,
        )

    def _check_split(self, split: str) -> list[games.GameInfo]:
        found = self._splits.get(split)
        if found is None:
            sizes = ", ".join(f"{s} ({len(g)} tasks)" for s, g in self._splits.items())
            raise NotFound(f"unknown split {quote(split)} of {NAME}; valid splits: {sizes}")
        return found

    def num_tasks(self, split: str) -> int:
        return len(self._check_split(split))

    @staticmethod
    def summary(game: games.GameInfo) -> base.TaskSummary:
        return base.TaskSummary(game.task_id, game.split, game.goal, game.task_type)

    def game(self, task_id: str) -> games.GameInfo:
        found = self._by_id.get(task_id)
        if found is None:
            example = next(iter(self._splits.values()))[0].task_id
            raise NotFound(f"unknown task {quote(task_id)} of {NAME}; task ids are game folder paths such as "
                           f"{example!r} (ListTasks lists them)")
        return found

    def task(self, task_id: str) -> base.TaskSummary:
        return self.summary(self.game(task_id))

    def list_tasks(self, split: str, offset: int, limit: int) -> list[base.TaskSummary]:
        found = self._check_split(split)
        return [self.summary(g) for g in found[max(0, offset):max(0, offset) + max(0, limit)]]

    def guard(self, game: games.GameInfo, call, *args, **kwargs):
        """Run an engine call; an engine failure on a broken game becomes FailedPrecondition."""
        try:
            return call(*args, **kwargs)
        except games.GameError as exc:
            raise FailedPrecondition(f"game {quote(game.task_id)} cannot be played: {exc}") from None
        except (FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted):
            raise
        except Exception as exc:  # noqa: BLE001 - TextWorld / fast-downward raise anything on a bad game
            log.exception("the ALFWorld engine failed", extra={"task": game.task_id})
            raise FailedPrecondition(f"the ALFWorld engine failed on game {quote(game.task_id)} "
                                     f"({type(exc).__name__})") from None

    def _load(self, engine: eng.Engine, game: games.GameInfo) -> None:
        self.guard(game, lambda: engine.load(game.task_id, games.load_game_data(game)))

    def start(self, task_id: str, horizon: int) -> AlfworldEpisode:
        game = self.game(task_id)
        engine = self.pool.acquire(task_id)
        if engine is None:
            raise ResourceExhausted(f"all {self.config.max_engines} ALFWorld engines are held by open sessions; "
                                    "Close finished sessions (or serve with -o alfworld:max_engines=N)")
        try:
            self._load(engine, game)
        except BaseException:
            self.pool.release(engine)
            raise
        return AlfworldEpisode(self, engine, game, horizon or self.config.horizon)

    # --- replays -------------------------------------------------------------------------------------------

    def _replay(self, game: games.GameInfo, actions: Sequence[str]) -> _Replay:
        """The task's replay advanced to exactly `actions` (caller holds _replay_lock)."""
        replay = self._replays.get(game.task_id)
        if replay is None:
            if len(self._replays) >= self.config.replay_cache:
                _, evicted = self._replays.popitem(last=False)
                engine = evicted.engine  # reuse its engine for the new task
            else:
                engine = self.guard(game, eng.Engine)
            replay = _Replay(engine, game)
            self._load(engine, game)
            self._replays[game.task_id] = replay
        self._replays.move_to_end(game.task_id)
        done = replay.actions
        if replay.frame is None or len(done) > len(actions) or list(actions[:len(done)]) != done:
            self.guard(game, replay.restart)
        deadline = current_deadline()
        for action in actions[len(replay.actions):]:
            deadline.check("replaying the history")  # the replay keeps what it reached; others wait on the lock
            self.guard(game, replay.advance, action)
        return replay

    def _context(self, replay: _Replay, expert: str, secrets: Sequence[str]) -> priv.ReasonContext:
        game = replay.game
        return priv.ReasonContext(game.task_type, game.object_kind, game.parent_kind, game.toggle_kind, expert,
                                  priv.World.from_facts(replay.frame.facts), secrets, "\n".join(replay.texts))

    def _kinds(self, game: games.GameInfo) -> set[str]:
        return {game.object_kind, game.toggle_kind} - {""}

    def _privileged(self, replay: _Replay, plan: Sequence[str]) -> priv.Privileged:
        world = priv.World.from_facts(replay.frame.facts)
        return priv.privileged(world, plan, self._kinds(replay.game), replay.game.task_type, "\n".join(replay.texts))

    def privileged_state(self, task_id: str, actions: Sequence[str]) -> base.PrivilegedInfo:
        game = self.game(task_id)
        with self._replay_lock:
            replay = self._replay(game, actions)
            plan = self.guard(game, replay.engine.plan)
            info = self._privileged(replay, plan)
            won = replay.frame.won
        extra = {"engine": self._version, "replayed_actions": str(len(actions)), "optimal_length": str(len(plan)),
                 "won": str(won).lower(), "planner": "fast-downward (ALFWorld's PLANNER expert)"}
        extra.update({f"leap_{k}": v for k, v in game.leap.items()})
        return base.PrivilegedInfo(
            task=self.summary(game), essential_objects=tuple(info.essential_objects),
            critical_locations=tuple(info.critical_locations), optimal_actions=tuple(plan), facts=tuple(info.facts),
            secrets=tuple(info.secrets), extra=extra)

    def _advice(self, replay: _Replay, expert: str) -> base.ExpertAdvice:
        if replay.frame.won:
            return base.ExpertAdvice("", (), True, "")
        if expert == base.PLANNER:
            plan = tuple(self.guard(replay.game, replay.engine.plan))
            if not plan:
                raise FailedPrecondition(f"the planner finds no plan for task {quote(replay.game.task_id)} from here")
        else:
            plan = (replay.tracker.next_action,)
        secrets = self._privileged(replay, plan if expert == base.PLANNER else ()).secrets
        rationale = priv.explain(plan[0], self._context(replay, expert, secrets))
        return base.ExpertAdvice(plan[0], plan, False, rationale)

    def expert_advice(self, task_id: str, actions: Sequence[str], expert: str) -> base.ExpertAdvice:
        self._check_expert(expert)
        game = self.game(task_id)
        with self._replay_lock:
            return self._advice(self._replay(game, actions), expert)

    def demonstration(self, task_id: str, expert: str, horizon: int) -> base.Demonstration:
        self._check_expert(expert)
        game = self.game(task_id)
        horizon = horizon or self.config.horizon
        steps: list[base.DemoStep] = []
        with self._replay_lock:
            replay = self._replay(game, [])
            observation = eng.strip_banner(replay.frame.text)
            candidates = replay.frame.admissible
            while not replay.frame.won and len(steps) < horizon:
                advice = self._advice(replay, expert)
                frame = self.guard(game, replay.advance, advice.next_action)
                score = 1.0 if frame.won else 0.0
                steps.append(base.DemoStep(observation, candidates, advice.next_action, advice.rationale, score,
                                           frame.valid, frame.text))
                observation, candidates = frame.text, frame.admissible
            won = replay.frame.won
            gave_up = replay.tracker.gave_up if expert == base.SEARCHER else ""
        metadata = {"engine": self._version, "expert": expert, "horizon": str(horizon), "task_id": task_id}
        if gave_up:
            metadata["expert_gave_up"] = gave_up
        truncated = not won and len(steps) >= horizon
        return base.Demonstration(task=self.summary(game), expert=expert, steps=tuple(steps), done=won or truncated,
                                  won=won, score=1.0 if won else 0.0, truncated=truncated, metadata=metadata)

    @staticmethod
    def _check_expert(expert: str) -> None:
        if expert not in EXPERTS:
            raise InvalidArgument(f"unknown expert {quote(expert)}; valid experts: {', '.join(EXPERTS)}")

    def close(self) -> None:
        with self._replay_lock:
            self._replays.clear()


__all__ = ["AlfworldBackend", "AlfworldConfig", "AlfworldEpisode", "EXPERTS", "NAME", "config_from_options",
           "ensure_exported"]
