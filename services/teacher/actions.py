"""Actions and mistakes in any environment: normalisation, legality, and the mistakes every
environment shares (invalid and repeated actions).

Environment families with a grammar of their own find more kinds of mistakes in their teacher profile
(services/teacher/profiles/: the household/ALFWorld grammar adds wrong objects and wasted search).
Nothing here reads privileged state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

MAX_ACTION_BYTES = 4096


def normalize_action(action: str) -> str:
    """The comparison form of an action: lowercase, single spaces, no trailing period."""
    text = re.sub(r"\s+", " ", (action or "").strip().lower())
    return text[:-1].rstrip() if text.endswith(".") else text


def same_action(a: str, b: str) -> bool:
    return normalize_action(a) == normalize_action(b)


def match_candidate(action: str, candidates: Sequence[str]) -> str | None:
    """The candidate `action` denotes (verbatim, as the environment wrote it), or None."""
    wanted = normalize_action(action)
    for candidate in candidates:
        if normalize_action(candidate) == wanted:
            return candidate
    return None


def legality_error(action: str, candidates: Sequence[str]) -> str | None:
    """Why `action` is not a legal action at a step with these candidates (None when it is)."""
    if not action or not action.strip():
        return "the action is empty"
    if "\n" in action.strip():
        return "the action spans several lines; write one action"
    if len(action.encode("utf-8")) > MAX_ACTION_BYTES:
        return f"the action is longer than {MAX_ACTION_BYTES} bytes"
    if candidates and match_candidate(action, candidates) is None:
        return f"{action!r} is not one of the step's candidate actions"
    return None


# Kinds of mistakes, in the order a summary lists them. INVALID and REPEATED exist in every
# environment; the others are found only by the profiles whose grammar knows them.
INVALID = "invalid"
REPEATED = "repeated"
WRONG_OBJECT = "wrong_object"
WASTED_SEARCH = "wasted_search"
MISTAKE_KINDS = (INVALID, REPEATED, WRONG_OBJECT, WASTED_SEARCH)


@dataclass(frozen=True)
class Mistake:
    """One mistake of the student at step t, described from what the student did and saw."""

    t: int
    kind: str
    action: str
    detail: str


def next_observation(steps, t: int) -> str:
    """What the student saw after acting at step t."""
    step = steps[t]
    if step.next_observation:
        return step.next_observation
    return steps[t + 1].observation if t + 1 < len(steps) else ""


def step_was_invalid(steps, t: int, no_effect: Sequence[str] = ()) -> bool:
    """The student's action at t had no effect: not among the step's candidates, flagged invalid by the
    environment, or answered by one of the environment's `no_effect` texts ("Nothing happens.")."""
    step = steps[t]
    if step.candidates and match_candidate(step.action, step.candidates) is None:
        return True
    if no_effect and normalize_action(next_observation(steps, t)) in {normalize_action(n) for n in no_effect}:
        return True
    return not step.action_valid


def find_mistakes(trajectory, no_effect: Sequence[str] = ()) -> list[Mistake]:
    """The mistakes every environment shares:

    - invalid: the action was not admissible (had no effect);
    - repeated: the same action as the step before, or an action repeated with the same outcome.
    """
    steps = list(trajectory.steps)
    mistakes: list[Mistake] = []
    outcomes: dict[str, str] = {}
    for t, step in enumerate(steps):
        action = normalize_action(step.action)
        outcome = normalize_action(next_observation(steps, t))
        if step_was_invalid(steps, t, no_effect):
            mistakes.append(Mistake(t, INVALID, step.action, "the action was not possible there"))
            continue
        if t > 0 and action == normalize_action(steps[t - 1].action):
            mistakes.append(Mistake(t, REPEATED, step.action, "the same action as the step before"))
        elif action in outcomes and outcomes[action] == outcome:
            mistakes.append(Mistake(t, REPEATED, step.action, "repeated with the same result as before"))
        outcomes[action] = outcome
    return mistakes
