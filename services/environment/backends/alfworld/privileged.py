"""LEAP's privileged state and the experts' rationales, read from the ALFWorld engine's facts.

The definitions mirror the household backend's (services/environment/backends/household/backend.py),
with the engine as the source of truth: its facts after the replayed history (demangled names such
as "apple 2") and fast-downward's plan from that state.

- essential_objects: the task's object instances (its object kind and, for look tasks, its lamp kind)
  that the plan uses, plus, for two-object tasks, one already in a receptacle the plan puts into; all
  of them once the task is won (empty plan).
- critical_locations: where those objects are (unless carried), then the receptacles the plan works
  at: the appliance it heats / cools / cleans with, the receptacle it puts the task object in, the
  receptacle of the lamp it switches on.
- optimal_actions: fast-downward's plan from the replayed state (ALFWorld's planner expert).
- facts: a sentence per object of those kinds: where it is ("apple 2 is in fridge 1", "the agent is
  carrying apple 1") and its state ("apple 1 is hot", "desklamp 1 is switched on").
- secrets: for each such object the agent has not perceived (its name in no observation text so
  far), its location sentence, the receptacle that hides it and its own name. Names are matched as
  whole words, so "cabinet 1" never matches "cabinet 10".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from services.environment.backends.household import priors
from services.environment.backends.household.world import parse

STATE_WORD = {"heat": "hot", "cool": "cool", "clean": "clean"}
VERB_OF_TASK = {
    "pick_heat_then_place_in_recep": "heat",
    "pick_cool_then_place_in_recep": "cool",
    "pick_clean_then_place_in_recep": "clean",
}
APPLIANCE = {"heat": "microwave", "cool": "fridge", "clean": "sinkbasin"}
_FLAG_WORDS = (("ishot", "hot"), ("iscool", "cool"), ("isclean", "clean"))
GENERIC_REASON = "This is the next step towards the goal."


def _kind_of_type(type_name: str) -> str:
    name = type_name.strip().lower()
    return name[:-4] if name.endswith("type") else name


def _names(fact) -> list[str]:
    return [argument.name.strip() for argument in fact.arguments]


@dataclass
class World:
    """What the engine's facts say, by display name."""

    object_kind: dict[str, str] = field(default_factory=dict)
    recep_kind: dict[str, str] = field(default_factory=dict)
    inside: dict[str, str] = field(default_factory=dict)  # object -> receptacle
    held: set[str] = field(default_factory=set)
    flags: dict[str, set[str]] = field(default_factory=dict)  # object -> {"hot", "cool", "clean", "on"}
    recep_location: dict[str, str] = field(default_factory=dict)
    agent_location: str = ""

    @classmethod
    def from_facts(cls, facts: Iterable) -> "World":
        world = cls()
        for fact in facts:
            name = fact.name
            args = _names(fact)
            if name == "objecttype" and len(args) == 2:
                world.object_kind[args[0]] = _kind_of_type(args[1])
            elif name == "receptacletype" and len(args) == 2:
                world.recep_kind[args[0]] = _kind_of_type(args[1])
            elif name == "inreceptacle" and len(args) == 2:
                world.inside[args[0]] = args[1]
            elif name == "holds" and len(args) == 2:
                world.held.add(args[1])
            elif name == "receptacleatlocation" and len(args) == 2:
                world.recep_location[args[0]] = args[1]
            elif name == "atlocation" and len(args) == 2:
                world.agent_location = args[1]
            elif name == "istoggled" and args:
                world.flags.setdefault(args[0], set()).add("on")
            else:
                for predicate, word in _FLAG_WORDS:
                    if name == predicate and args:
                        world.flags.setdefault(args[0], set()).add(word)
        return world

    def here(self) -> list[str]:
        """The receptacles at the agent's location (none in the middle of the room)."""
        return sorted(r for r, loc in self.recep_location.items() if loc == self.agent_location)

    def carrying(self) -> str:
        return sorted(self.held)[0] if self.held else ""


def mentions(text: str, phrase: str) -> bool:
    """Whether `phrase` occurs in `text` as whole words, case-insensitively."""
    return re.search(r"(?<![\w])" + re.escape(phrase) + r"(?![\w])", text, re.IGNORECASE) is not None


def _sort_key(name: str):
    head, _, number = name.rpartition(" ")
    return (head, int(number)) if number.isdigit() else (name, 0)


@dataclass
class Privileged:
    essential_objects: list[str]
    critical_locations: list[str]
    facts: list[str]
    secrets: list[str]


def privileged(world: World, plan: Sequence[str], kinds: set[str], task_type: str, observed: str) -> Privileged:
    """The privileged fields of the module docstring; `observed` is every text the agent has read."""
    task_objects = sorted((o for o, k in world.object_kind.items() if k in kinds), key=_sort_key)
    parsed = [parse(action) for action in plan]
    essential: list[str] = []
    destinations: list[str] = []
    for verb, args in parsed:
        if verb in ("take", "move", "heat", "cool", "clean", "use", "examine") and args:
            obj = args[0]
            if world.object_kind.get(obj) in kinds and obj not in essential:
                essential.append(obj)
            if verb == "move" and world.object_kind.get(obj) in kinds and len(args) > 1:
                destinations.append(args[1])
    for obj in task_objects:  # two-object tasks: the one already in place belongs to the goal
        if obj not in essential and world.inside.get(obj) in destinations:
            essential.append(obj)
    if not plan:
        essential = list(task_objects)
    critical: list[str] = []
    for obj in essential:
        where = world.inside.get(obj)
        if where and obj not in world.held and where not in critical:
            critical.append(where)
    for verb, args in parsed:
        place = ""
        if verb in ("heat", "cool", "clean") and len(args) > 1:
            place = args[1]
        elif verb == "move" and len(args) > 1 and world.object_kind.get(args[0]) in kinds:
            place = args[1]
        elif verb == "use" and args:
            place = world.inside.get(args[0], "")
        if place and place not in critical:
            critical.append(place)

    facts: list[str] = []
    secrets: list[str] = []
    for obj in task_objects:
        if obj in world.held:
            facts.append(f"the agent is carrying {obj}")
        elif obj in world.inside:
            recep = world.inside[obj]
            fact = f"{obj} is {priors.preposition(world.recep_kind.get(recep, ''))} {recep}"
            facts.append(fact)
            if not mentions(observed, obj):
                secrets.extend(s for s in (fact, recep, obj) if s not in secrets)
        flags = world.flags.get(obj, set())
        if "on" in flags:
            facts.append(f"{obj} is switched on")
        facts.extend(f"{obj} is {word}" for _, word in _FLAG_WORDS if word in flags)
    del task_type  # the definitions are the same for every task type
    return Privileged(essential, critical, facts, secrets)


# --- rationales -------------------------------------------------------------------------------------------

def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


@dataclass
class ReasonContext:
    """What a rationale may use: the task's public kinds and what the agent has seen."""

    task_type: str
    object_kind: str
    parent_kind: str
    toggle_kind: str
    expert: str
    world: World
    secrets: Sequence[str]
    observed: str = ""  # every text the agent has read


def _search_reason(target: str, kind: str, looking_for: str, ctx: ReasonContext) -> str:
    """Why go to a receptacle while something is still to be found, from what the agent knows."""
    world = ctx.world
    seen_there = [o for o, r in world.inside.items()
                  if r == target and world.object_kind.get(o) == looking_for and mentions(ctx.observed, o)]
    if seen_there:
        return f"I saw the {sorted(seen_there, key=_sort_key)[0]} at the {target} earlier, so I go back to get it."
    if ctx.expert == "searcher":
        return f"I have not found {_a(looking_for)} yet, so I search the receptacles one by one."
    present = set(world.recep_kind.values())
    usual = [k for k in priors.usual_places(looking_for, 10) if k in present][:3]
    if kind in usual:
        places = [f"{priors.preposition(k)} the {k}" for k in usual]
        listed = places[0] if len(places) == 1 else ", ".join(places[:-1]) + " or " + places[-1]
        return f"{priors.plural(looking_for).capitalize()} are usually kept {listed}, so I check the {kind}."
    return f"I have not found {_a(looking_for)} yet, so I keep searching the places I have not looked in."


def explain(action: str, ctx: ReasonContext) -> str:
    """One or two sentences, as the agent's own thought, for `action`; never names a secret."""
    reason = _explain(action, ctx)
    if any(mentions(reason, secret) for secret in ctx.secrets):
        return GENERIC_REASON
    return reason


def _explain(action: str, ctx: ReasonContext) -> str:
    verb, args = parse(action)
    world = ctx.world
    obj, dest, lamp = ctx.object_kind, ctx.parent_kind, ctx.toggle_kind
    task_verb = VERB_OF_TASK.get(ctx.task_type, "")
    held = world.carrying()
    held_kind = world.object_kind.get(held, "")
    holding_task_object = bool(held) and held_kind == obj
    processed = holding_task_object and (not task_verb or STATE_WORD[task_verb] in world.flags.get(held, set()))
    here = world.here()
    here_kind = world.recep_kind.get(here[0], "") if here else ""
    where = f"I am at the {here_kind}" if here_kind else "I am in the middle of the room"
    state = f"{STATE_WORD[task_verb]} " if task_verb else ""
    if ctx.task_type == "pick_two_obj_and_place":
        want = f"The task wants two {priors.plural(obj)} {priors.preposition(dest)} the {dest}"
    elif dest:
        want = f"The task wants {_a(state + obj)} {priors.preposition(dest)} the {dest}"
    else:
        want = f"The task is to examine {_a(obj)} under the {lamp}"

    if verb == "" and action.strip() == "look":
        return "I look around first, to take stock of the room and of what I can reach."
    if verb == "look":
        return "I look around first, to take stock of the room and of what I can reach."
    if verb == "inventory":
        return "I check what I am carrying before I go on."
    if held and not holding_task_object and verb in ("go", "move"):
        return f"I am carrying the {held_kind}, which the task does not need; I put it back to free my hand."
    if verb == "go" and args:
        kind = world.recep_kind.get(args[0], args[0].rsplit(" ", 1)[0])
        if holding_task_object and task_verb and not processed and kind == APPLIANCE[task_verb]:
            return f"{want}; I have the {obj} but it is not {STATE_WORD[task_verb]} yet, so I go to the {kind}."
        if processed and dest and kind == dest:
            return f"{want}; I have it, so I go to the {kind}."
        if holding_task_object and lamp:
            return f"I have the {obj}; I need the light of the {lamp} to examine it, so I go to the {kind}."
        looking_for = lamp if holding_task_object and lamp else obj
        return _search_reason(args[0], kind, looking_for, ctx)
    if verb == "open" and args:
        kind = world.recep_kind.get(args[0], "receptacle")
        if processed and kind == dest:
            return f"{want}; the {kind} is closed, so I open it to put the {obj} inside."
        return f"The {kind} is closed, and closed places can hide things; I open it to look for {_a(obj)}."
    if verb == "close":
        return "I have seen what is inside; I close it again."
    if verb == "take" and args:
        if lamp:
            return f"{want}; here is the {args[0]}, so I pick it up."
        return f"The task needs {_a(obj)} and here is the {args[0]}, so I pick it up."
    if verb == "move" and args:
        if held_kind == obj:
            return f"{want}; {where}, so I put it here."
        return (f"I am carrying the {held_kind or 'object'}, which the task does not need; "
                "I put it down to free my hand.")
    if verb in STATE_WORD:
        return f"The task wants the {obj} {STATE_WORD[verb]} first; {where}, so I {verb} it now."
    if verb == "use":
        return (f"I am next to the {lamp or 'lamp'} with the {obj} in hand; turning the lamp on lets me examine it "
                "in its light.")
    if verb == "examine":
        return f"I look closely at what is in front of me; {where}."
    return GENERIC_REASON
