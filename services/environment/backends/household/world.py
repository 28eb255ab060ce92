"""The household world: scenes, states, ALFWorld's command grammar and observation texts.

A `Scene` is fixed for a task (its room, receptacles, objects and their initial places); a `State`
is an immutable snapshot of what changes (where the agent stands, what it holds, which receptacles
are open, where every object is, object states). `transition(scene, state, action)` is a pure
function, so episodes, replays, experts and exhaustive searches all share one set of rules.

Grammar (ALFWorld 0.4; anything else, or anything not possible now, answers "Nothing happens."):

    go to <receptacle>            open <receptacle>          close <receptacle>
    take <object> from <receptacle>                          move <object> to <receptacle>
    heat <object> with <microwave>   cool <object> with <fridge>   clean <object> with <sinkbasin>
    use <lamp>        examine <receptacle or object>         inventory        look

`put <object> in/on <receptacle>` (the pre-0.4 spelling of `move`) is accepted as a synonym but
never offered as a candidate.

What the agent perceives (`Knowledge`) is derived only from observation texts as they are produced:
a receptacle is *searched* once its contents were listed to the agent, and an object is *known*
once it was listed (it then stays known: only the agent moves objects).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from services.environment.backends.household import priors

NOWHERE = -1  # State.loc before the agent went anywhere ("the middle of the room")
NOTHING = -1  # State.holding when the hands are empty
HELD = -1  # State.locs entry of the object in the agent's hands

# Object state bits (State.flags).
CLEAN, HOT, COOL, ON = 1, 2, 4, 8
VERB_FLAG = {"clean": CLEAN, "heat": HOT, "cool": COOL}
FLAG_WORD = ((CLEAN, "clean"), (HOT, "hot"), (COOL, "cool"))

NOTHING_HAPPENS = "Nothing happens."

TASK_TYPES: tuple[str, ...] = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
# The verb a pick_<verb>_then_place task needs.
TASK_VERB = {
    "pick_clean_then_place_in_recep": "clean",
    "pick_heat_then_place_in_recep": "heat",
    "pick_cool_then_place_in_recep": "cool",
}


@dataclass(frozen=True)
class Task:
    """What the agent must achieve. Everything here is public (the goal sentence says it all)."""

    task_id: str
    split: str
    index: int
    task_type: str
    goal: str  # "put a clean apple in fridge."
    obj_kind: str  # the kind of object the task is about
    dest_kind: str = ""  # where it must go ("" for look_at_obj_in_light)
    verb: str = ""  # "heat" / "cool" / "clean" for the pick_<verb>_then_place tasks
    lamp_kind: str = ""  # "desklamp" / "floorlamp" for look_at_obj_in_light
    room: str = ""


@dataclass(frozen=True)
class Layout:
    """The public part of a scene: the task and the receptacles, which the agent sees from the start."""

    task: Task
    receptacles: tuple[str, ...]  # names ("cabinet 1") in the order the room description lists them
    recep_kinds: tuple[str, ...]
    openable: tuple[bool, ...]
    recep_index: dict[str, int] = field(init=False, repr=False, compare=False)
    go_actions: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "recep_index", {name: i for i, name in enumerate(self.receptacles)})
        object.__setattr__(self, "go_actions", tuple(f"go to {name}" for name in self.receptacles))

    def instances(self, kind: str) -> list[int]:
        return [i for i, k in enumerate(self.recep_kinds) if k == kind]

    @property
    def kinds_present(self) -> frozenset[str]:
        return frozenset(self.recep_kinds)


@dataclass(frozen=True)
class Scene:
    """A whole task instance: the public layout plus the objects and where they start (hidden)."""

    layout: Layout
    objects: tuple[str, ...]  # names ("apple 1"), in the order contents are listed
    obj_kinds: tuple[str, ...]
    initial_locs: tuple[int, ...]  # receptacle index of every object at the start
    obj_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "obj_index", {name: i for i, name in enumerate(self.objects)})

    @property
    def task(self) -> Task:
        return self.layout.task

    def initial_state(self) -> "State":
        return State(NOWHERE, NOTHING, 0, self.initial_locs, (0,) * len(self.objects))

    def is_lamp(self, obj: int) -> bool:
        return self.obj_kinds[obj] in priors.LAMPS


class State(NamedTuple):
    """Everything that changes during an episode. Immutable and hashable (exhaustive search uses it)."""

    loc: int  # receptacle index the agent stands at, or NOWHERE
    holding: int  # object index in the agent's hands, or NOTHING
    opened: int  # bit i set: receptacle i is open
    locs: tuple[int, ...]  # per object: receptacle index, or HELD
    flags: tuple[int, ...]  # per object: CLEAN | HOT | COOL | ON bits


class Outcome(NamedTuple):
    """Result of one action: the next state, the feedback text, whether it had an effect, and the
    receptacles whose whole contents the feedback listed."""

    state: State
    text: str
    valid: bool
    shown: tuple[int, ...] = ()


class Knowledge(NamedTuple):
    """What the agent has perceived: objects listed to it and receptacles whose contents it saw."""

    known: int = 0  # bit o: object o was listed in some observation (its place is then known)
    searched: int = 0  # bit r: receptacle r's contents were listed at least once

    def after(self, scene: Scene, outcome: Outcome) -> "Knowledge":
        if not outcome.shown:
            return self
        known, searched = self.known, self.searched
        locs = outcome.state.locs
        for r in outcome.shown:
            searched |= 1 << r
            for o, where in enumerate(locs):
                if where == r:
                    known |= 1 << o
        return Knowledge(known, searched)


# --- texts ----------------------------------------------------------------------------------------------

def listing(names: list[str] | tuple[str, ...]) -> str:
    """ALFWorld's enumerations: "nothing", "a apple 1", "a apple 1, and a egg 2", ..."""
    if not names:
        return "nothing"
    if len(names) == 1:
        return f"a {names[0]}"
    return ", ".join(f"a {n}" for n in names[:-1]) + f", and a {names[-1]}"


def contents(scene: Scene, state: State, r: int) -> list[int]:
    return [o for o, where in enumerate(state.locs) if where == r]


def accessible(scene: Scene, state: State, r: int) -> bool:
    """Whether the contents of receptacle r can be seen and used (not a closed openable)."""
    return not scene.layout.openable[r] or bool(state.opened >> r & 1)


def describe(scene: Scene, state: State, r: int) -> str:
    """What the agent sees of a receptacle it stands at."""
    name = scene.layout.receptacles[r]
    if scene.layout.openable[r]:
        if not state.opened >> r & 1:
            return f"The {name} is closed."
        items = listing([scene.objects[o] for o in contents(scene, state, r)])
        return f"The {name} is open. In it, you see {items}."
    items = listing([scene.objects[o] for o in contents(scene, state, r)])
    return f"On the {name}, you see {items}."


def initial_text(scene: Scene) -> str:
    room = listing(scene.layout.receptacles)
    return (f"You are in the middle of a room. Looking quickly around you, you see {room}.\n\n"
            f"Your task is to: {scene.task.goal}")


# --- the rules ------------------------------------------------------------------------------------------

_WS = re.compile(r"\s+")
_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("go", re.compile(r"^go to (.+)$")),
    ("take", re.compile(r"^take (.+?) from (.+)$")),
    ("move", re.compile(r"^move (.+?) to (.+)$")),
    ("move", re.compile(r"^put (.+?) (?:in|on|in/on|into|onto) (.+)$")),
    ("open", re.compile(r"^open (.+)$")),
    ("close", re.compile(r"^close (.+)$")),
    ("heat", re.compile(r"^heat (.+?) with (.+)$")),
    ("cool", re.compile(r"^cool (.+?) with (.+)$")),
    ("clean", re.compile(r"^clean (.+?) with (.+)$")),
    ("use", re.compile(r"^use (.+)$")),
    ("examine", re.compile(r"^examine (.+)$")),
)


def normalize_action(action: str) -> str:
    """Lowercase, trimmed, single-spaced, without a trailing full stop."""
    text = _WS.sub(" ", action.strip().lower())
    return text[:-1].rstrip() if text.endswith(".") else text


def parse(action: str) -> tuple[str, tuple[str, ...]]:
    """("go", ("fridge 1",)), ("take", ("apple 1", "fridge 1")), ("inventory", ()), ... or ("", ())."""
    text = normalize_action(action)
    if text in ("inventory", "look"):
        return text, ()
    for verb, pattern in _PATTERNS:
        match = pattern.match(text)
        if match:
            return verb, match.groups()
    return "", ()


def _fail(state: State) -> Outcome:
    return Outcome(state, NOTHING_HAPPENS, False)


def transition(scene: Scene, state: State, action: str) -> Outcome:
    """Apply one action. Inadmissible or unparsable actions leave the state unchanged."""
    verb, args = parse(action)
    layout = scene.layout
    if verb == "go":
        r = layout.recep_index.get(args[0], -1)
        if r < 0 or r == state.loc:
            return _fail(state)
        new = state._replace(loc=r)
        name = layout.receptacles[r]
        return Outcome(new, f"You arrive at {name}. {describe(scene, new, r)}", True,
                       (r,) if accessible(scene, new, r) else ())
    if verb in ("open", "close"):
        r = layout.recep_index.get(args[0], -1)
        if r < 0 or r != state.loc or not layout.openable[r]:
            return _fail(state)
        is_open = bool(state.opened >> r & 1)
        name = layout.receptacles[r]
        if verb == "open":
            if is_open:
                return _fail(state)
            new = state._replace(opened=state.opened | 1 << r)
            items = listing([scene.objects[o] for o in contents(scene, new, r)])
            return Outcome(new, f"You open the {name}. The {name} is open. In it, you see {items}.", True, (r,))
        if not is_open:
            return _fail(state)
        return Outcome(state._replace(opened=state.opened & ~(1 << r)), f"You close the {name}.", True)
    if verb == "take":
        o, r = scene.obj_index.get(args[0], -1), layout.recep_index.get(args[1], -1)
        if (o < 0 or r < 0 or r != state.loc or state.holding != NOTHING or state.locs[o] != r
                or not accessible(scene, state, r) or scene.is_lamp(o)):
            return _fail(state)
        locs = state.locs[:o] + (HELD,) + state.locs[o + 1:]
        return Outcome(state._replace(holding=o, locs=locs),
                       f"You pick up the {scene.objects[o]} from the {layout.receptacles[r]}.", True)
    if verb == "move":
        o, r = scene.obj_index.get(args[0], -1), layout.recep_index.get(args[1], -1)
        if o < 0 or r < 0 or state.holding != o or r != state.loc or not accessible(scene, state, r):
            return _fail(state)
        locs = state.locs[:o] + (r,) + state.locs[o + 1:]
        return Outcome(state._replace(holding=NOTHING, locs=locs),
                       f"You move the {scene.objects[o]} to the {layout.receptacles[r]}.", True)
    if verb in VERB_FLAG:
        o, r = scene.obj_index.get(args[0], -1), layout.recep_index.get(args[1], -1)
        if (o < 0 or r < 0 or state.holding != o or r != state.loc
                or layout.recep_kinds[r] != priors.APPLIANCE[verb] or scene.obj_kinds[o] not in priors.ABLE[verb]):
            return _fail(state)
        flag = state.flags[o] | VERB_FLAG[verb]
        if verb == "heat":
            flag &= ~COOL
        elif verb == "cool":
            flag &= ~HOT
        flags = state.flags[:o] + (flag,) + state.flags[o + 1:]
        return Outcome(state._replace(flags=flags),
                       f"You {verb} the {scene.objects[o]} using the {layout.receptacles[r]}.", True)
    if verb == "use":
        o = scene.obj_index.get(args[0], -1)
        if o < 0 or not scene.is_lamp(o) or state.locs[o] != state.loc or state.loc == NOWHERE \
                or not accessible(scene, state, state.loc):
            return _fail(state)
        flag = state.flags[o] ^ ON
        flags = state.flags[:o] + (flag,) + state.flags[o + 1:]
        word = "on" if flag & ON else "off"
        return Outcome(state._replace(flags=flags), f"You turn {word} the {scene.objects[o]}.", True)
    if verb == "examine":
        target = args[0]
        r = layout.recep_index.get(target, -1)
        if r >= 0:
            if r != state.loc:
                return _fail(state)
            return Outcome(state, describe(scene, state, r), True, (r,) if accessible(scene, state, r) else ())
        o = scene.obj_index.get(target, -1)
        if o < 0 or not (state.holding == o or (state.locs[o] == state.loc != NOWHERE
                                                 and accessible(scene, state, state.loc))):
            return _fail(state)
        return Outcome(state, examine_text(scene, state, o), True)
    if verb == "inventory":
        if state.holding == NOTHING:
            return Outcome(state, "You are not carrying anything.", True)
        return Outcome(state, f"You are carrying: a {scene.objects[state.holding]}.", True)
    if verb == "look":
        if state.loc == NOWHERE:
            return Outcome(state, "You are in the middle of a room. Looking quickly around you, you see nothing.", True)
        return Outcome(state, f"You are facing the {layout.receptacles[state.loc]}. Next to it, you see nothing.", True)
    return _fail(state)


def examine_text(scene: Scene, state: State, o: int) -> str:
    name = scene.objects[o]
    if scene.is_lamp(o):
        return f"The {name} is {'on' if state.flags[o] & ON else 'off'}."
    words = [word for bit, word in FLAG_WORD if state.flags[o] & bit]
    if words:
        return f"This is a {' and '.join(words)} {name}."
    return f"There's nothing special about {name}."


# --- candidates -----------------------------------------------------------------------------------------

def candidates(scene: Scene, state: State, verbose: bool = False) -> list[str]:
    """The admissible actions offered to the agent, in a fixed order.

    Order: `go to` every other receptacle (room order), open/close here, take what is visible here,
    move what is held to here, heat/cool/clean the held object when this is the right appliance,
    use a lamp here, examine the held object, inventory, look.

    Compact by default (what a small student reads every step): `examine <receptacle>` (the arrival
    text already says what is there) and `examine <visible object>` (always "nothing special"
    before the agent changed it) are left out; `verbose=True` offers them as ALFWorld does. Every
    action of the grammar works whether it is offered or not.
    """
    layout = scene.layout
    here = state.loc
    out = [a for r, a in enumerate(layout.go_actions) if r != here]
    if here != NOWHERE:
        name = layout.receptacles[here]
        if layout.openable[here]:
            out.append(f"close {name}" if state.opened >> here & 1 else f"open {name}")
        if accessible(scene, state, here):
            visible = contents(scene, state, here)
            if state.holding == NOTHING:
                out.extend(f"take {scene.objects[o]} from {name}" for o in visible if not scene.is_lamp(o))
            else:
                out.append(f"move {scene.objects[state.holding]} to {name}")
            out.extend(f"use {scene.objects[o]}" for o in visible if scene.is_lamp(o))
            if verbose:
                out.append(f"examine {name}")
                out.extend(f"examine {scene.objects[o]}" for o in visible)
        if state.holding != NOTHING:
            held_kind = scene.obj_kinds[state.holding]
            kind = layout.recep_kinds[here]
            for verb, appliance in priors.APPLIANCE.items():
                if kind == appliance and held_kind in priors.ABLE[verb]:
                    out.append(f"{verb} {scene.objects[state.holding]} with {name}")
    if state.holding != NOTHING:
        out.append(f"examine {scene.objects[state.holding]}")
    out.append("inventory")
    out.append("look")
    return out


# --- goals ----------------------------------------------------------------------------------------------

def is_won(scene: Scene, state: State) -> bool:
    task = scene.task
    kinds = scene.obj_kinds
    rkinds = scene.layout.recep_kinds
    if task.task_type == "look_at_obj_in_light":
        if state.holding == NOTHING or kinds[state.holding] != task.obj_kind or state.loc == NOWHERE:
            return False
        return any(kinds[o] == task.lamp_kind and state.locs[o] == state.loc and state.flags[o] & ON
                   for o in range(len(kinds)))
    if task.task_type == "pick_two_obj_and_place":
        counts: dict[int, int] = {}
        for o, where in enumerate(state.locs):
            if kinds[o] == task.obj_kind and where >= 0 and rkinds[where] == task.dest_kind:
                counts[where] = counts.get(where, 0) + 1
                if counts[where] >= 2:
                    return True
        return False
    need = VERB_FLAG.get(task.verb, 0)
    return any(kinds[o] == task.obj_kind and where >= 0 and rkinds[where] == task.dest_kind
               and state.flags[o] & need == need for o, where in enumerate(state.locs))
