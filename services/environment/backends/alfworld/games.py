"""Finding and reading ALFWorld game folders.

A game folder holds `traj_data.json` (its `task_type` and `pddl_params`), `game.tw-pddl` (JSON:
`pddl_domain`, `grammar`, `pddl_problem`, `solvable`) and usually `initial_state.pddl` (the problem
that `alfworld-generate` turned into game.tw-pddl). The official data lays them out as
`json_2.1.1/<split>/<task>/<trial>/`.

`discover(root)` finds every game folder under `root` (symbolic links are not followed):
- when `root` (or `root/json_2.1.1`) has split folders (train, valid_seen, valid_unseen, valid_train),
  those are the splits and a task id is `<split>/<task>/<trial>`;
- otherwise every game belongs to one split: the `split` option, else the folder's own name when it
  is a split name (pointing at `json_2.1.1/valid_unseen` serves valid_unseen), else `train`; a task
  id is the folder's path below `root`.
Games are skipped, with the reason logged, exactly where ALFWorld's own loader skips them (no
game.tw-pddl, `solvable` missing or false, "movable" or "Sliced" trajectories, task types outside the
six) and where a file is unreadable, too large or malformed. Within a split, games are ordered by a
hash of their id: a stable order in which any prefix mixes the task types (the official folders sort
by task type, and LEAP takes training tasks from the front of a split).

Game folders are trusted input, like code: TextWorld evaluates the Python expressions in a game's
grammar. Serve only folders you made or got from a source you trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# ALFWorld's six task families, the ones the household world reproduces.
from services.environment.backends.household.world import TASK_TYPES

log = logging.getLogger("leap.environment.alfworld")

SPLIT_FOLDERS: tuple[str, ...] = ("train", "valid_seen", "valid_unseen", "valid_train")
GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
PROBLEM_FILE = "initial_state.pddl"
#: Largest game.tw-pddl / traj_data.json read (the official files are under 2 MB).
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_ID_CHARS = 256
_GOAL = re.compile(r"Your task is to: ([^\"\n]*)")
_ID_CHARS = re.compile(r"^[\x21-\x7e]+$")


class GameError(ValueError):
    """A game folder that cannot be served (the message says why)."""


@dataclass(frozen=True)
class GameInfo:
    """One servable game: where it is and what its task is (all public)."""

    task_id: str
    split: str
    folder: Path
    task_type: str
    goal: str
    object_kind: str  # lower-case kinds from pddl_params: "apple", "microwave", "desklamp"
    parent_kind: str = ""
    toggle_kind: str = ""
    goal_in_grammar: bool = True  # False: the grammar still says UNKNOWN GOAL and is filled at load
    leap: dict = field(default_factory=dict, compare=False)  # the exporter's note, for exported games

    @property
    def game_file(self) -> Path:
        return self.folder / GAME_FILE


def read_json(path: Path) -> dict:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise GameError(f"{path.name} is {size} bytes (the limit is {MAX_FILE_BYTES})")
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, GameError):
            raise
        raise GameError(f"{path.name} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise GameError(f"{path.name} is not a JSON object")
    return data


def templated_goal(task_type: str, params: dict) -> str:
    """ALFWorld's first goal template for a task (used when a grammar still says UNKNOWN GOAL)."""
    import alfworld.gen.goal_library as glib  # noqa: PLC0415 - heavy, only for such games

    template = glib.gdict[task_type]["templates"][0]
    return template.format(obj=params.get("object_target", "").lower(), recep=params.get("parent_target", "").lower(),
                           toggle=params.get("toggle_target", "").lower(),
                           mrecep=params.get("mrecep_target", "").lower()) + "."


def read_game(folder: Path, task_id: str, split: str) -> GameInfo:
    """The GameInfo of a folder, or GameError saying why it cannot be served."""
    if not _ID_CHARS.match(task_id) or len(task_id) > MAX_ID_CHARS:
        raise GameError("its path is not printable ASCII of at most 256 characters (task ids must be)")
    if "movable" in task_id or "Sliced" in task_id:
        raise GameError("movable-receptacle and sliced trajectories are not supported by ALFWorld")
    if not (folder / GAME_FILE).is_file():
        raise GameError(f"{GAME_FILE} is missing (alfworld-generate makes it from {PROBLEM_FILE})")
    traj = read_json(folder / TRAJ_FILE)
    task_type = traj.get("task_type")
    params = traj.get("pddl_params")
    if task_type not in TASK_TYPES:
        raise GameError(f"task type {str(task_type)[:60]!r} is not one of ALFWorld's six")
    if not isinstance(params, dict) or not isinstance(params.get("object_target"), str) or \
            not all(isinstance(params.get(k, ""), str) for k in ("parent_target", "toggle_target")):
        raise GameError("pddl_params lacks object_target / parent_target / toggle_target strings")
    game = read_json(folder / GAME_FILE)
    if not all(isinstance(game.get(k), str) for k in ("pddl_domain", "grammar", "pddl_problem")):
        raise GameError(f"{GAME_FILE} lacks pddl_domain, grammar or pddl_problem")
    if game.get("solvable") is not True:
        raise GameError("the game is not marked solvable (ALFWorld skips those)")
    match = _GOAL.search(game["grammar"])
    if match is None:
        raise GameError("the grammar has no 'Your task is to:' rule")
    goal = match.group(1).strip()
    in_grammar = "UNKNOWN GOAL" not in goal
    if not in_grammar:
        goal = templated_goal(task_type, params)
    leap = traj.get("leap") if isinstance(traj.get("leap"), dict) else {}
    return GameInfo(task_id=task_id, split=split, folder=folder, task_type=task_type, goal=goal,
                    object_kind=params["object_target"].lower(), parent_kind=params.get("parent_target", "").lower(),
                    toggle_kind=params.get("toggle_target", "").lower(), goal_in_grammar=in_grammar,
                    leap={k: str(v) for k, v in leap.items()})


def load_game_data(info: GameInfo) -> dict:
    """The game.tw-pddl content to load into an engine (the goal filled in when it was missing)."""
    data = read_json(info.game_file)
    if not info.goal_in_grammar:
        data = dict(data, grammar=data["grammar"].replace("UNKNOWN GOAL", info.goal.rstrip(".")))
    return data


def _game_folders(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        if TRAJ_FILE in filenames:
            found.append(Path(dirpath))
    return found


def order_key(task_id: str) -> str:
    return hashlib.sha256(("alfworld-order|" + task_id).encode("utf-8")).hexdigest()


@dataclass
class Discovery:
    """What `discover` found: games per split and the folders it skipped (with reasons)."""

    root: Path
    splits: dict[str, list[GameInfo]]
    skipped: list[tuple[str, str]]


def discover(root: str | os.PathLike, split: str = "") -> Discovery:
    base = Path(root)
    if not base.is_dir():
        raise GameError(f"{base} is not a folder")
    if (base / "json_2.1.1").is_dir():
        base = base / "json_2.1.1"
    split_dirs = [name for name in SPLIT_FOLDERS if (base / name).is_dir()]
    splits: dict[str, list[GameInfo]] = {}
    skipped: list[tuple[str, str]] = []
    if split_dirs:
        if split:
            raise GameError(f"{base} has split folders ({', '.join(split_dirs)}); the split option is only for a "
                            "folder of games of one split")
        groups = [(name, base / name, base) for name in split_dirs]
    else:
        name = split or (base.name if base.name in SPLIT_FOLDERS else "train")
        groups = [(name, base, base)]
    for name, folder, relative_to in groups:
        games = []
        for game_folder in _game_folders(folder):
            task_id = game_folder.relative_to(relative_to).as_posix()
            try:
                games.append(read_game(game_folder, task_id, name))
            except GameError as exc:
                skipped.append((task_id, str(exc)))
        if games:
            splits[name] = sorted(games, key=lambda g: order_key(g.task_id))
    for task_id, reason in skipped[:20]:
        log.warning("skipped ALFWorld game folder", extra={"task": task_id[:200], "reason": reason})
    if len(skipped) > 20:
        log.warning("skipped more ALFWorld game folders", extra={"count": len(skipped) - 20})
    return Discovery(base, splits, skipped)
