"""The household/ALFWorld teacher profile: the command grammar of both worlds ("go to fridge 1",
"take apple 1 from countertop 2", "move apple 1 to fridge 1", "heat egg 1 with microwave 1", ...) and
the mistakes it lets the teacher name beyond invalid and repeated actions: picking up an object the task
does not need (wrong_object, judged against the task's essential objects) and going back to a place
already searched when nothing has changed since (wasted_search).

The embedded household world and the real ALFWorld engine share this grammar and their "Nothing
happens." answer to an inadmissible command, so both use this profile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from services.teacher.actions import (
    INVALID,
    REPEATED,
    WASTED_SEARCH,
    WRONG_OBJECT,
    Mistake,
    next_observation,
    normalize_action,
    step_was_invalid,
)
from services.teacher.leak import entity_type
from services.teacher.profiles import TeacherProfile

# The environment's answer to an action that had no effect.
NO_EFFECT = ("Nothing happens.",)


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


# Actions after which going back to an already searched place can make sense again.
_CHANGES_PLANS = {"take", "move", "heat", "cool", "clean", "slice", "use"}


def _invalid(steps, t: int) -> bool:
    return step_was_invalid(steps, t, NO_EFFECT)


def find_mistakes(trajectory, essential_objects: Sequence[str] = ()) -> list[Mistake]:
    """Invalid actions, repeated actions, wrong objects and wasted search in a trajectory.

    - invalid: the action was not admissible (had no effect);
    - repeated: the same action as the step before, or an action other than a walk repeated with the
      same outcome (walking back somewhere is judged as search instead);
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
        outcome = normalize_action(next_observation(steps, t))
        if _invalid(steps, t):
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
        if _invalid(steps, i):
            continue
        parsed = parse_action(steps[i].action)
        if parsed.verb == "take":
            holding = parsed.obj
        elif parsed.verb == "move" and parsed.obj == holding:
            holding = ""
    return holding


def reason_context(steps, t: int, action: str, student_action: str) -> dict[str, Any]:
    """The household reason template's variables: both actions parsed, and what the student carries."""
    return {"action": parse_action(action), "student": parse_action(student_action),
            "holding": carried_object(steps, t)}


PROFILE = TeacherProfile(family="household", find_mistakes=find_mistakes, reason_context=reason_context)
