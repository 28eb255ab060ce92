"""Realizability levels: how much the teacher may use and reveal the privileged state.

The oracle teacher places its experts on one axis and every level on a point of it:

    level   0  SEARCHER          uses only what the student observed; searches in a fixed order
    level  50  PRIOR_SEARCHER    uses only what the student observed; searches in order of
                                 common-sense priors (fruit in the fridge first): realizable
    level 100  PLANNER           knows the hidden state and goes straight for it

A level between two anchors mixes its neighbours step by step: the step of task T at index t is
corrected by the upper neighbour when a stable hash of (env, task id, t) falls below the level's
share of the way from the lower anchor to the upper one, and by the lower neighbour otherwise.
Level 25 takes half of its steps from PRIOR_SEARCHER and half from SEARCHER; level 75 half from
PLANNER and half from PRIOR_SEARCHER. The choice depends only on the task and the step index, so it
is the same on every machine, in every process and on every retry, and a policy that follows the
teacher from step t on keeps choosing the same way.

An environment that lacks an anchor's expert (ListEnvironments / PrivilegedState `experts`) keeps the
others at their places, and levels are placed between the anchors it has: with a searcher and a
planner only (no prior searcher), level 50 takes half its steps from each; with a planner only, every
level is corrected by the planner (its reasons are still leak-checked below 75).

Reasons at levels below 75 must not reveal any privileged fact the student has not observed (the
service refuses such a correction); at 75 and 100 they may.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.runtime.experts import (
    DEFAULT_REALIZABILITY_LEVEL,
    PLANNER,
    PRIOR_SEARCHER,
    REALIZABILITY_LEVELS,
    SEARCHER,
)

LEVELS: tuple[int, ...] = REALIZABILITY_LEVELS
DEFAULT_LEVEL = DEFAULT_REALIZABILITY_LEVEL
# Below this level a reason that reveals an unobserved privileged fact is refused.
LEAK_FREE_BELOW = 75

# Anchors of the axis, in order of privilege.
_ANCHORS: tuple[tuple[int, str], ...] = ((0, SEARCHER), (50, PRIOR_SEARCHER), (100, PLANNER))


def check_level(level: int) -> int:
    """Return the level, or raise InvalidArgument naming the valid ones."""
    if level not in LEVELS:
        raise InvalidArgument(
            f"realizability_level {level} is not supported; use one of {', '.join(map(str, LEVELS))}"
        )
    return level


def must_be_leak_free(level: int) -> bool:
    return level < LEAK_FREE_BELOW


def step_fraction(env: str, task_id: str, t: int) -> float:
    """A number in [0, 1) fixed by (env, task id, step index): the same everywhere, forever."""
    digest = hashlib.sha256(f"{env}\x1f{task_id}\x1f{t}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class ExpertChoice:
    """Which expert corrects one step, and why (for logs and reports)."""

    expert: str
    level: int
    fraction: float


def anchors_for(available: Iterable[str] = ()) -> tuple[tuple[int, str], ...]:
    """The anchors of the axis whose experts are available (all of them when `available` is empty:
    an environment that does not say which experts it has)."""
    available = set(available)
    if not available:
        return _ANCHORS
    kept = tuple((level, expert) for level, expert in _ANCHORS if expert in available)
    if not kept:
        raise FailedPrecondition(
            f"the environment offers none of the oracle teacher's experts ({', '.join(e for _l, e in _ANCHORS)}); "
            f"it offers: {', '.join(sorted(available))}")
    return kept


def expert_for_step(level: int, env: str, task_id: str, t: int, available: Iterable[str] = ()) -> ExpertChoice:
    """The expert whose next action is the correction of step t of task (env, task_id) at `level`,
    among the `available` experts of the environment (empty: all three)."""
    check_level(level)
    anchors = anchors_for(available)
    fraction = step_fraction(env, task_id, t)
    if level <= anchors[0][0]:
        return ExpertChoice(anchors[0][1], level, fraction)
    for (low_level, low), (high_level, high) in zip(anchors, anchors[1:]):
        if level == low_level:
            return ExpertChoice(low, level, fraction)
        if low_level < level < high_level:
            share_of_upper = (level - low_level) / (high_level - low_level)
            return ExpertChoice(high if fraction < share_of_upper else low, level, fraction)
    return ExpertChoice(anchors[-1][1], level, fraction)
