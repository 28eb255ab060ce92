"""Actions and mistakes: normalisation, legality, the household/ALFWorld grammar, mistake finding.

Nothing here reads privileged state except `find_mistakes`, which uses the task's essential objects
to spot a wrong object; the mistakes it reports are phrased from what the student did and saw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from services.teacher.leak import entity_type

MAX_ACTION_BYTES = 4096
INVALID_OBSERVATION = "nothing happens."


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


@dataclass(frozen=True)
class ParsedAction:
    """An action of the household/ALFWorld grammar split into its parts."""

    verb: str  # go, open, close, take, move, heat, cool, clean, slice, use, examine, look, inventory, other
    obj: str = ""  # the object acted on ("apple 1") or the place visited/opened ("fridge 1")
    place: str = ""  # the receptacle or appliance ("countertop 1", "microwave 1")
    text: str = ""


_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("go", re.compile(r"^go to (?P<obj>.+)$")),
    ("take", re.compile(r"^(?:take|pick up|get) (?P<obj>.+?) from (?P<place>.+)$")),
    ("move", re.compile(r"^(?:move|put|place) (?P<obj>.+?) (?:to|in|on|into|onto|in/on) (?P<place>.+)$")),
    ("heat", re.compile(r"^heat (?P<obj>.+?) with (?P<place>.+)$")),
    ("cool", re.compile(r"^cool (?P<obj>.+?) with (?P<place>.+)$")),
    ("clean", re.compile(r"^clean (?P<obj>.+?) with (?P<place>.+)$")),
    ("slice", re.compile(r"^slice (?P<obj>.+?) with (?P<place>.+)$")),
    ("open", re.compile(r"^open (?P<obj>.+)$")),
    ("close", re.compile(r"^close (?P<obj>.+)$")),
    ("use", re.compile(r"^(?:use|toggle) (?P<obj>.+)$")),
    ("examine", re.compile(r"^examine (?P<obj>.+)$")),
    ("look", re.compile(r"^look$")),
    ("inventory", re.compile(r"^inventory$")),
)


def parse_action(action: str) -> ParsedAction:
    text = normalize_action(action)
    for verb, pattern in _PATTERNS:
        match = pattern.match(text)
        if match:
            parts = match.groupdict()
            return ParsedAction(verb, parts.get("obj") or "", parts.get("place") or "", text)
    return ParsedAction("other", "", "", text)


# Kinds of mistakes, in the order a summary lists them.
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


def _next_observation(steps, t: int) -> str:
    step = steps[t]
    if step.next_observation:
        return step.next_observation
    return steps[t + 1].observation if t + 1 < len(steps) else ""


def step_was_invalid(steps, t: int) -> bool:
    """The student's action at t had no effect: not a candidate, flagged invalid, or "Nothing happens."."""
    step = steps[t]
    if step.candidates and match_candidate(step.action, step.candidates) is None:
        return True
    if normalize_action(_next_observation(steps, t)) == normalize_action(INVALID_OBSERVATION):
        return True
    return not step.action_valid and bool(step.candidates)


# Actions after which going back to an already searched place can make sense again.
_CHANGES_PLANS = {"take", "move", "heat", "cool", "clean", "slice", "use"}


def find_mistakes(trajectory, essential_objects: Sequence[str] = ()) -> list[Mistake]:
    """Invalid actions, repeated actions, wrong objects and wasted search in a trajectory.

    - invalid: the action was not admissible (had no effect);
    - repeated: the same action as the step before, or an action repeated with the same outcome;
    - wrong_object: picking up or processing an object of a type the task does not need;
    - wasted_search: going back to a place already searched when nothing has changed since.
    """
    steps = list(trajectory.steps)
    needed_types = {entity_type(o) for o in essential_objects if o.strip()}
    mistakes: list[Mistake] = []
    outcomes: dict[str, str] = {}
    searched_at: dict[str, int] = {}
    last_change = -1
    for t, step in enumerate(steps):
        action = normalize_action(step.action)
        parsed = parse_action(action)
        outcome = normalize_action(_next_observation(steps, t))
        if step_was_invalid(steps, t):
            mistakes.append(Mistake(t, INVALID, step.action, "the action was not possible there"))
            continue
        if t > 0 and action == normalize_action(steps[t - 1].action):
            mistakes.append(Mistake(t, REPEATED, step.action, "the same action as the step before"))
        elif action in outcomes and outcomes[action] == outcome and parsed.verb != "go":
            mistakes.append(Mistake(t, REPEATED, step.action, "repeated with the same result as before"))
        if needed_types and parsed.verb in ("take", "move", "heat", "cool", "clean", "slice") and parsed.obj:
            if entity_type(parsed.obj) not in needed_types:
                mistakes.append(Mistake(t, WRONG_OBJECT, step.action,
                                        f"a {entity_type(parsed.obj)} is not needed for this task"))
        if parsed.verb == "go" and searched_at.get(parsed.obj, -2) > last_change:
            mistakes.append(Mistake(t, WASTED_SEARCH, step.action,
                                    f"{parsed.obj} was already searched and nothing has changed since"))
        # A place counts as searched once the student saw inside it (arrived at it open, or opened it).
        if (parsed.verb == "go" and "is closed" not in outcome) or parsed.verb == "open":
            searched_at[parsed.obj] = t
        if parsed.verb in _CHANGES_PLANS:
            last_change = t
        outcomes[action] = outcome
    return mistakes


def carried_object(steps, t: int) -> str:
    """What the student carries when it acts at step t, judged from its own valid actions before t."""
    holding = ""
    for i in range(min(t, len(steps))):
        if step_was_invalid(steps, i):
            continue
        parsed = parse_action(steps[i].action)
        if parsed.verb == "take":
            holding = parsed.obj
        elif parsed.verb == "move" and parsed.obj == holding:
            holding = ""
    return holding
