"""InterCode's bash reward, computed from sandbox snapshots instead of `git status` in containers.

InterCode (icalfa 0.3.6, `BashEnv.get_reward`, eval mode `tfidf`) scores a submitted episode as

    0.01
  + file_diff     round(0.33 * (1 - erf(|missing| + |extra|)), 2): the `git status --short` entries of
                  the gold run that the agent's run lacks, and those it has in excess;
  + file_changes  0.33 when the two runs share no untracked entry, else round(0.33 * same / shared, 2):
                  of the shared untracked paths, those whose `md5sum` (paths with a dot) or
                  `md5deep -r` (others) output is the same in both file systems;
  + answer        0.33 when the agent's first command is the gold command, or its last output equals
                  the gold output; else round(0.33 * TF-IDF cosine similarity of the two outputs, 2).

Here `git status --short` is derived from snapshots (see `git_status`: a tracked file deleted `D`,
changed in content or exec bit `M`, changed in type `T`; untracked files listed as git lists them,
collapsed to the topmost directory that holds no tracked file, and nothing for empty directories),
and the TF-IDF similarity is scikit-learn's `TfidfVectorizer()` defaults re-implemented (lowercase,
tokens of two or more word characters, smoothed idf, l2 norm), including InterCode's fallback when
neither output has a token (1 if they are equal, else 0).

Deliberate differences, none of which changes a score for the same behaviour: paths with spaces are
kept whole (InterCode's status parser splits them), and the hashes compare content, not the text of
md5deep's listing (whose order follows the directory order of each file system).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

_TOKEN = re.compile(r"(?u)\b\w\w+\b")
UNTRACKED = "??"
#: Status codes whose paths InterCode hashes (staged adds and copies cannot occur without `git add`).
HASHED_CODES = ("A", UNTRACKED, "C")


def git_status(baseline: Mapping[str, tuple], current: Mapping[str, tuple]) -> set[tuple[str, str]]:
    """`git status --short` of `current` against the commit `baseline`, as (path, code) pairs.

    Both map a path relative to / to ("f", exec_bit, md5) for a regular file or ("l", target) for a
    symlink: what git tracks (directories only through the files in them)."""
    status: set[tuple[str, str]] = set()
    for path, entry in baseline.items():
        now = current.get(path)
        if now is None:
            status.add((path, "D"))
        elif now[0] != entry[0]:
            status.add((path, "T"))
        elif tuple(now) != tuple(entry):
            status.add((path, "M"))
    tracked_dirs = set()
    for path in baseline:
        parts = path.split("/")
        for i in range(1, len(parts)):
            tracked_dirs.add("/".join(parts[:i]))
    for path in current:
        if path in baseline:
            continue
        parts = path.split("/")
        shown = path
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix not in tracked_dirs:  # an untracked directory: git shows it, not its files
                shown = prefix + "/"
                break
        status.add((shown, UNTRACKED))
    return status


def tfidf_similarity(a: str, b: str) -> float:
    """Cosine similarity of the TF-IDF vectors of two texts fitted on just these two (sklearn defaults)."""
    docs = [Counter(_TOKEN.findall(a.lower())), Counter(_TOKEN.findall(b.lower()))]
    vocabulary = set(docs[0]) | set(docs[1])
    if not vocabulary:  # sklearn: "empty vocabulary" ValueError, which InterCode catches
        return 1.0 if a == b else 0.0
    idf = {t: math.log(3 / (1 + (t in docs[0]) + (t in docs[1]))) + 1 for t in vocabulary}
    vectors = []
    for doc in docs:
        weights = {t: count * idf[t] for t, count in doc.items()}
        norm = math.sqrt(sum(w * w for w in weights.values()))
        vectors.append({t: w / norm for t, w in weights.items()} if norm else {})
    return sum(w * vectors[1].get(t, 0.0) for t, w in vectors[0].items())


@dataclass(frozen=True)
class Reward:
    """A scored episode: the total and its three parts (each a multiple of 0.01)."""

    total: float
    file_diff: float
    file_changes: float
    answer: float
    missing: tuple[str, ...] = ()  # gold changes the agent did not make (privileged: never shown)
    extra: tuple[str, ...] = ()  # changes the agent made that the gold command does not
    compared: int = 0  # untracked paths both runs created, whose contents were compared
    same: int = 0

    @property
    def won(self) -> bool:
        return self.total >= 1.0 - 1e-9

    def parts(self) -> dict[str, str]:
        return {"file_diff": f"{self.file_diff:.2f}", "file_changes": f"{self.file_changes:.2f}",
                "answer_similarity": f"{self.answer:.2f}"}


def _fmt(entries: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    return tuple(sorted(f"{code} {path}" for path, code in entries))


def score(*, first_action: str | None, gold_command: str, agent_output: str, gold_output: str,
          agent_status: set[tuple[str, str]], gold_status: set[tuple[str, str]],
          hash_pairs: Callable[[list[str]], list[tuple[str, str]]]) -> Reward:
    """InterCode's reward. `hash_pairs(paths)` answers, for each path, (agent's hash, gold's hash)."""
    missing = gold_status - agent_status
    extra = agent_status - gold_status
    file_diff = round(0.33 * (1 - math.erf(len(missing) + len(extra))), 2)

    shared = sorted(p for p, code in agent_status & gold_status if code in HASHED_CODES)
    file_changes, same = 0.33, 0
    if shared:
        same = sum(1 for mine, theirs in hash_pairs(shared) if mine == theirs)
        file_changes = round(0.33 * (same / len(shared)), 2)

    if first_action is not None and first_action.strip() == gold_command.strip():
        answer = 0.33
    elif agent_output == gold_output:
        answer = 0.33
    else:
        answer = round(0.33 * tfidf_similarity(agent_output, gold_output), 2)
    total = round(0.01 + file_diff + file_changes + answer, 2)
    return Reward(total, file_diff, file_changes, answer, _fmt(missing), _fmt(extra), len(shared), same)
