"""InterCode's NL2Bash tasks as shipped in the PyPI package `icalfa`: queries, gold commands, file systems.

The package is data to us: its `assets/datasets/nl2bash_fs_{1..5}.json` hold 300 records (query,
gold, gold2, difficulty) over five file systems, and `assets/docker/` the setup script, Dockerfile
(for its ENV lines) and .gitignore of each file system. Nothing of `icalfa` is imported (its
package imports docker, openai and scikit-learn); the files are found through the import system's
spec of the package, or in a folder given with the backend's `data_dir` option.

Task ids are `fs<family>-<index>` (`fs1-007`: the 8th record of nl2bash_fs_1.json). Splits are
drawn per file system, deterministically: the records of each family are ordered by sha256 of
their id and the first 20 % (at least one) form `valid_unseen`, the rest `train`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from services.runtime.errors import FailedPrecondition

PACKAGE = "icalfa"
PACKAGE_VERSION = "0.3.6"
FAMILIES = (1, 2, 3, 4, 5)
SPLITS = ("train", "valid_unseen")
VALID_FRACTION = 0.2
# InterCode's bash_env.py IMAGE_TO_SETTINGS: the shell each image runs commands with.
SHELLS = {1: "/bin/bash", 2: "/bin/bash", 3: "/bin/bash", 4: "/bin/bash", 5: "/bin/sh"}
TASK_ID = re.compile(r"fs([1-5])-(\d{3})")
MAX_RECORDS_PER_FAMILY = 1000


@dataclass(frozen=True)
class BashTask:
    """One NL2Bash record: its query (the goal), gold command and the file system it runs on."""

    task_id: str
    family: int
    index: int
    split: str
    query: str
    gold: str
    gold2: str
    difficulty: int


@dataclass(frozen=True)
class Family:
    """One of InterCode's five file systems: how to build it and how its shell is set up."""

    number: int
    setup_script: str  # the script's text
    setup_name: str  # its file name, as the Dockerfile copies it to /
    env: tuple[tuple[str, str], ...]  # the Dockerfile's ENV lines
    shell: str
    gitignore: str


def task_id_of(family: int, index: int) -> str:
    return f"fs{family}-{index:03d}"


def assets_dir(data_dir: str | None = None) -> Path:
    """The folder holding `datasets/` and `docker/`: `data_dir`, else the installed icalfa package's."""
    if data_dir:
        path = Path(data_dir)
    else:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise FailedPrecondition(
                f"the intercode_bash environment needs InterCode's tasks from the PyPI package {PACKAGE}: "
                f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} (its own dependencies are not needed), "
                "or pass -o data_dir=FOLDER holding its assets/ folder")
        path = Path(list(spec.submodule_search_locations)[0]) / "assets"
    if not (path / "datasets").is_dir() or not (path / "docker").is_dir():
        raise FailedPrecondition(f"{path} has no datasets/ and docker/ folders (InterCode's assets)")
    return path


def _env_lines(dockerfile: str) -> tuple[tuple[str, str], ...]:
    """KEY=VALUE pairs of a Dockerfile's ENV instructions (the form InterCode's files use)."""
    pairs: list[tuple[str, str]] = []
    for line in dockerfile.splitlines():
        if line.strip().upper().startswith("ENV "):
            for word in shlex.split(line.strip()[4:]):
                key, sep, value = word.partition("=")
                if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                    pairs.append((key, value))
    return tuple(pairs)


def load_families(assets: Path) -> dict[int, Family]:
    docker = assets / "docker"
    gitignore = (docker / "docker.gitignore").read_text()
    families = {}
    for n in FAMILIES:
        name = f"setup_nl2b_fs_{n}.sh"
        dockerfile = docker / f"nl2bash{n}.Dockerfile"
        families[n] = Family(n, (docker / name).read_text(), name,
                             _env_lines(dockerfile.read_text()) if dockerfile.exists() else (), SHELLS[n], gitignore)
    return families


def _split_of(task_ids: list[str]) -> dict[str, str]:
    order = sorted(task_ids, key=lambda t: hashlib.sha256(f"intercode_bash|{t}".encode()).hexdigest())
    held = max(1, round(VALID_FRACTION * len(order)))
    return {t: ("valid_unseen" if i < held else "train") for i, t in enumerate(order)}


def load_tasks(assets: Path) -> list[BashTask]:
    """Every record of the five files, in id order, with its split."""
    tasks: list[BashTask] = []
    for n in FAMILIES:
        path = assets / "datasets" / f"nl2bash_fs_{n}.json"
        try:
            records = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"cannot read InterCode's tasks from {path}: {exc}") from None
        if not isinstance(records, list) or not 0 < len(records) <= MAX_RECORDS_PER_FAMILY:
            raise FailedPrecondition(f"{path} is not a list of 1..{MAX_RECORDS_PER_FAMILY} records")
        ids = [task_id_of(n, i) for i in range(len(records))]
        splits = _split_of(ids)
        for i, record in enumerate(records):
            if not isinstance(record, dict) or not isinstance(record.get("query"), str) \
                    or not isinstance(record.get("gold"), str) or not record["gold"].strip():
                raise FailedPrecondition(f"{path} record {i} has no query and gold command")
            gold2 = record.get("gold2") if isinstance(record.get("gold2"), str) else ""
            difficulty = record.get("difficulty") if isinstance(record.get("difficulty"), int) else 0
            tasks.append(BashTask(ids[i], n, i, splits[ids[i]], record["query"].strip(), record["gold"], gold2,
                                  difficulty))
    return tasks


def package_version() -> str:
    """The installed icalfa version, or '' when the assets came from a folder."""
    try:
        from importlib.metadata import version

        return version(PACKAGE)
    except Exception:  # noqa: BLE001 - metadata missing: not installed as a distribution
        return ""
