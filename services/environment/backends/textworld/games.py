"""TextWorld games generated offline from a seed, one per task, cached on disk.

Task `<split>-<index>` (for example `train-00007`) is one game of TextWorld's challenges, generated
on first use and kept in `<cache>/<key>/<split>/<index>/` (game.z8, TextWorld's game.json beside
it, and meta.json with the settings and the goal). Each game folder is written into a temporary
folder and renamed, so concurrent servers and crashes never leave half a game.

Which game: the challenges (`challenges` option) take turns by index; every setting comes from
sha256(seed, split, index), never from a global random state, so a task is the same game on every
machine (the cache key holds the textworld version, this module's GENERATOR_VERSION, the seed and
the challenge list).

Splits. `train` and `valid_seen` draw from the same distributions with different seeds.
`valid_unseen` draws from TextWorld's held-out distributions where a challenge has them: tw-cooking's
"valid" split (food items never used by its "train" split) and tw-simple's test games; treasure
hunter and coin collector have none, so there it differs only by seed and a harder level range
(medium instead of easy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("leap.environment.textworld")

GENERATOR_VERSION = "1"
SPLITS: tuple[str, ...] = ("train", "valid_seen", "valid_unseen")
CHALLENGES: tuple[str, ...] = ("tw-cooking", "tw-treasure_hunter", "tw-simple", "tw-coin_collector")
DEFAULT_CHALLENGES: tuple[str, ...] = ("tw-cooking", "tw-treasure_hunter", "tw-simple")

_GENERATION_LOCK = threading.Lock()


def derive(seed: int, *parts: object) -> int:
    digest = hashlib.sha256(("textworld-tasks/" + GENERATOR_VERSION + "|" + "|".join(map(str, (seed, *parts))))
                            .encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big")


def settings_for(challenge: str, split: str, index: int, seed: int) -> dict[str, Any]:
    """The challenge settings of a task (see the module docstring)."""
    r = derive(seed, split, index, "settings")
    unseen = split == "valid_unseen"
    if challenge == "tw-cooking":
        recipe = 1 + r % 2
        return {"recipe": recipe, "take": recipe, "go": (1, 6)[(r >> 2) % 2], "open": True,
                "cook": bool((r >> 3) % 2), "cut": bool((r >> 4) % 2), "drop": False,
                "recipe_seed": 1 + derive(seed, split, index, "recipe") % 100_000,
                "split": "valid" if unseen else "train"}
    if challenge == "tw-treasure_hunter":
        return {"level": (11 if unseen else 1) + r % 10}
    if challenge == "tw-simple":
        return {"rewards": ("dense", "balanced", "sparse")[r % 3], "goal": "brief", "test": unseen}
    if challenge == "tw-coin_collector":
        return {"level": (11 if unseen else 1) + r % 10}
    raise ValueError(f"unknown challenge {challenge!r}")


@dataclass(frozen=True)
class GameRecord:
    """One generated game (all public except the walkthrough)."""

    task_id: str
    split: str
    index: int
    challenge: str
    folder: Path
    goal: str
    max_score: int
    walkthrough: tuple[str, ...]

    @property
    def game_file(self) -> Path:
        return self.folder / "game.z8"


def task_id_of(split: str, index: int) -> str:
    return f"{split}-{index:05d}"


def parse_task_id(task_id: str) -> tuple[str, int] | None:
    split, sep, number = task_id.rpartition("-")
    if not sep or not number.isascii() or not number.isdigit() or len(number) > 9:
        return None
    return split, int(number)


def _objective(game) -> str:
    text = " ".join((game.objective or "").split())
    return text or "Find a way to win the game."


def _generate(folder: Path, challenge: str, settings: dict[str, Any], seed: int) -> None:
    import textworld  # noqa: PLC0415
    import textworld.challenges  # noqa: PLC0415
    from textworld import GameOptions  # noqa: PLC0415

    _, make, _ = textworld.challenges.CHALLENGES[challenge]
    options = GameOptions()
    options.seeds = seed
    options.path = str(folder / "game.z8")
    options.force_recompile = True
    game = make(dict(settings), options)
    path = textworld.generator.compile_game(game, options)
    if Path(path) != folder / "game.z8":
        raise RuntimeError(f"TextWorld wrote {path}, not {folder / 'game.z8'}")
    (folder / "game.ni").unlink(missing_ok=True)  # the Inform 7 source: not needed to play
    meta = {"challenge": challenge, "settings": settings, "seed": seed, "goal": _objective(game),
            "max_score": int(game.max_score), "walkthrough": list(game.walkthrough or []),
            "generator_version": GENERATOR_VERSION}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def ensure_game(root: Path, split: str, index: int, challenges: tuple[str, ...], seed: int) -> GameRecord:
    """The game of task (split, index), generated into the cache when missing."""
    folder = root / split / f"{index:05d}"
    challenge = challenges[index % len(challenges)]
    if not (folder / "meta.json").is_file():
        with _GENERATION_LOCK:
            if not (folder / "meta.json").is_file():
                folder.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
                try:
                    _generate(tmp, challenge, settings_for(challenge, split, index, seed),
                              derive(seed, split, index, "game"))
                    for name in os.listdir(tmp):
                        with open(tmp / name, "rb") as f:
                            os.fsync(f.fileno())
                    try:
                        os.rename(tmp, folder)
                    except OSError:
                        if not (folder / "meta.json").is_file():  # not another process finishing first
                            raise
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                log.info("generated a TextWorld game", extra={"task": task_id_of(split, index), "challenge": challenge})
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    return GameRecord(task_id_of(split, index), split, index, meta["challenge"], folder, meta["goal"],
                      int(meta["max_score"]), tuple(meta["walkthrough"]))
