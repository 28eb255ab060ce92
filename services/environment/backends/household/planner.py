"""Views of a state and the shortest-plan planner over them.

A `View` is what a planner may use: the public layout, the agent's own situation (where it stands,
what it holds, what it opened) and a set of objects with their places. `full_view` shows every
object (the privileged planner); `agent_view` shows only the objects the agent has perceived, so an
expert that plans over it cannot use anything the agent has not observed: unknown objects are not
in the view at all, not even their names.

`shortest_plan(view)` returns a shortest action sequence that reaches the goal using only the
view's objects, or None when those objects cannot reach it. Why it is shortest: every action costs
one step, all receptacles are one `go to` apart, opened receptacles stay open, and the hand holds
one object. A plan for each task type is therefore a fixed skeleton of unavoidable actions --

    simple         [go, open, (free the hand), take] go, open, move
    clean/heat/cool [go, open, (free the hand), take] [go, apply] go, open, move
    two objects    ([go, open, (free the hand), take] go, open, move) for each object still missing
    look           [go, open, (free the hand), take] go, [use]

-- where each bracketed action is skipped exactly when it is already unnecessary (standing there,
already open, already holding it, already hot, lamp already on). What remains free is the choice of
objects, of instances (which fridge, which cabinet, which lamp) and, for two objects, their order;
the planner enumerates all of them and keeps the shortest (ties: first in object / room order).
Freeing the hand costs one `move` however it is done, and doing it right before the `take` is
always possible. The test suite checks the claim against an exhaustive breadth-first search over the
real transition function.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

from services.environment.backends.household import priors
from services.environment.backends.household.world import (
    HELD,
    NOTHING,
    ON,
    VERB_FLAG,
    Knowledge,
    Layout,
    Scene,
    State,
)


class ObjectInfo(NamedTuple):
    name: str
    kind: str
    loc: int  # receptacle index, or HELD
    flags: int


@dataclass(frozen=True)
class View:
    """What a planner may use. `objects` maps object index -> ObjectInfo for the visible objects."""

    layout: Layout
    loc: int
    holding: int
    opened: int
    objects: dict[int, ObjectInfo]
    searched: int  # bit r: the contents of receptacle r are known
    complete: bool  # True for the privileged full view

    def is_open(self, r: int) -> bool:
        return bool(self.opened >> r & 1)

    def of_kind(self, kind: str) -> list[int]:
        return [o for o, info in self.objects.items() if info.kind == kind]

    def name(self, o: int) -> str:
        return self.objects[o].name

    def recep(self, r: int) -> str:
        return self.layout.receptacles[r]

    def unsearched(self) -> list[int]:
        return [r for r in range(len(self.layout.receptacles)) if not self.searched >> r & 1]


def full_view(scene: Scene, state: State) -> View:
    objects = {o: ObjectInfo(scene.objects[o], scene.obj_kinds[o], state.locs[o], state.flags[o])
               for o in range(len(scene.objects))}
    return View(scene.layout, state.loc, state.holding, state.opened, objects,
                (1 << len(scene.layout.receptacles)) - 1, True)


def agent_view(scene: Scene, state: State, knowledge: Knowledge) -> View:
    """Only what the agent has perceived: objects listed to it (and what it holds)."""
    known = knowledge.known
    if state.holding != NOTHING:
        known |= 1 << state.holding
    objects = {o: ObjectInfo(scene.objects[o], scene.obj_kinds[o], state.locs[o], state.flags[o])
               for o in range(len(scene.objects)) if known >> o & 1}
    return View(scene.layout, state.loc, state.holding, state.opened, objects, knowledge.searched, False)


def view_won(view: View) -> bool:
    """The goal test of world.is_won, over the view's objects."""
    task = view.layout.task
    rkinds = view.layout.recep_kinds
    objs = view.objects
    if task.task_type == "look_at_obj_in_light":
        if view.holding == NOTHING or view.holding not in objs or objs[view.holding].kind != task.obj_kind:
            return False
        return any(info.kind == task.lamp_kind and info.loc == view.loc and info.flags & ON
                   for info in objs.values())
    if task.task_type == "pick_two_obj_and_place":
        counts: dict[int, int] = {}
        for info in objs.values():
            if info.kind == task.obj_kind and info.loc >= 0 and rkinds[info.loc] == task.dest_kind:
                counts[info.loc] = counts.get(info.loc, 0) + 1
        return any(n >= 2 for n in counts.values())
    need = VERB_FLAG.get(task.verb, 0)
    return any(info.kind == task.obj_kind and info.loc >= 0 and rkinds[info.loc] == task.dest_kind
               and info.flags & need == need for info in objs.values())


class Tag(NamedTuple):
    """Why a plan step is there: its purpose, and the object / receptacle it is about."""

    purpose: str
    obj: int = -1
    recep: int = -1


# Purposes of plan steps (experts explain steps from these).
FETCH_GO, FETCH_OPEN, DISPOSE, TAKE = "fetch_go", "fetch_open", "dispose", "take"
PROCESS_GO, PROCESS = "process_go", "process"
PLACE_GO, PLACE_OPEN, PLACE = "place_go", "place_open", "place"
LAMP_GO, LAMP_USE = "lamp_go", "lamp_use"
SEARCH_GO, SEARCH_OPEN = "search_go", "search_open"


@dataclass
class Plan:
    actions: list[str]
    tags: list[Tag]

    def __len__(self) -> int:
        return len(self.actions)

    def extend(self, other: "Plan") -> "Plan":
        return Plan(self.actions + other.actions, self.tags + other.tags)


class Script:
    """Writes a plan while simulating the agent's own situation (place, hand, opened receptacles)."""

    def __init__(self, view: View):
        self.view = view
        self.loc = view.loc
        self.holding = view.holding
        self.opened = view.opened
        self.switched: dict[int, bool] = {}
        self.moved: dict[int, int] = {}  # objects whose place the script changed
        self.actions: list[str] = []
        self.tags: list[Tag] = []

    def plan(self) -> Plan:
        return Plan(self.actions, self.tags)

    def _emit(self, action: str, tag: Tag) -> None:
        self.actions.append(action)
        self.tags.append(tag)

    def go(self, r: int, purpose: str, obj: int = -1) -> None:
        if self.loc != r:
            self._emit(f"go to {self.view.recep(r)}", Tag(purpose, obj, r))
            self.loc = r

    def open(self, r: int, purpose: str, obj: int = -1) -> None:
        if self.view.layout.openable[r] and not self.opened >> r & 1:
            self._emit(f"open {self.view.recep(r)}", Tag(purpose, obj, r))
            self.opened |= 1 << r

    def visit(self, r: int, purpose_go: str, purpose_open: str, obj: int = -1) -> None:
        self.go(r, purpose_go, obj)
        self.open(r, purpose_open, obj)

    def where(self, o: int) -> int:
        """Where object o is at this point of the script (HELD when in hand)."""
        return self.moved.get(o, self.view.objects[o].loc)

    def take(self, o: int) -> None:
        """Pick up object o (nothing to do when it is already in hand)."""
        if self.holding == o:
            return
        r = self.where(o)
        self.visit(r, FETCH_GO, FETCH_OPEN, o)
        if self.holding != NOTHING:
            self._emit(f"move {self.view.name(self.holding)} to {self.view.recep(r)}", Tag(DISPOSE, self.holding, r))
            self.moved[self.holding] = r
        self._emit(f"take {self.view.name(o)} from {self.view.recep(r)}", Tag(TAKE, o, r))
        self.holding = o
        self.moved[o] = HELD

    def apply(self, verb: str, o: int, appliance: int) -> None:
        self.go(appliance, PROCESS_GO, o)
        self._emit(f"{verb} {self.view.name(o)} with {self.view.recep(appliance)}", Tag(PROCESS, o, appliance))

    def place(self, o: int, r: int) -> None:
        self.visit(r, PLACE_GO, PLACE_OPEN, o)
        self._emit(f"move {self.view.name(o)} to {self.view.recep(r)}", Tag(PLACE, o, r))
        self.holding = NOTHING
        self.moved[o] = r

    def light(self, lamp: int) -> None:
        info = self.view.objects[lamp]
        self.go(info.loc, LAMP_GO, lamp)
        if not self.switched.get(lamp, bool(info.flags & ON)):
            self._emit(f"use {info.name}", Tag(LAMP_USE, lamp, info.loc))
            self.switched[lamp] = True


def _better(best: Plan | None, plan: Plan) -> Plan:
    return plan if best is None or len(plan) < len(best) else best


def _plan_simple_or_state(view: View) -> Plan | None:
    task = view.layout.task
    dests = view.layout.instances(task.dest_kind)
    need = VERB_FLAG.get(task.verb, 0)
    appliances = view.layout.instances(priors.APPLIANCE[task.verb]) if task.verb else [-1]
    best: Plan | None = None
    for o in view.of_kind(task.obj_kind):
        info = view.objects[o]
        ready = info.flags & need == need
        for a in ([-1] if ready else appliances):
            for r in dests:
                script = Script(view)
                script.take(o)
                if not ready:
                    script.apply(task.verb, o, a)
                script.place(o, r)
                best = _better(best, script.plan())
    return best


def _plan_two(view: View) -> Plan | None:
    task = view.layout.task
    objects = view.of_kind(task.obj_kind)
    best: Plan | None = None
    for r in view.layout.instances(task.dest_kind):
        inside = [o for o in objects if view.objects[o].loc == r]
        missing = 2 - len(inside)
        outside = [o for o in objects if view.objects[o].loc != r]
        for order in itertools.permutations(outside, missing):
            script = Script(view)
            for o in order:
                script.take(o)
                script.place(o, r)
            best = _better(best, script.plan())
    return best


def _plan_look(view: View) -> Plan | None:
    task = view.layout.task
    best: Plan | None = None
    for lamp in view.of_kind(task.lamp_kind):
        for o in view.of_kind(task.obj_kind):
            script = Script(view)
            script.take(o)
            script.light(lamp)
            best = _better(best, script.plan())
    return best


def shortest_plan(view: View) -> Plan | None:
    """A shortest plan to the goal using only the view's objects; [] when already won; None when the
    view's objects cannot achieve the goal (an expert must search first)."""
    if view_won(view):
        return Plan([], [])
    task_type = view.layout.task.task_type
    if task_type == "look_at_obj_in_light":
        return _plan_look(view)
    if task_type == "pick_two_obj_and_place":
        return _plan_two(view)
    return _plan_simple_or_state(view)


def plan_for(scene: Scene, state: State) -> Plan:
    """The privileged planner: the shortest plan with full knowledge of the hidden state."""
    plan = shortest_plan(full_view(scene, state))
    if plan is None:  # generated tasks always have their objects; a broken scene is a bug
        raise RuntimeError(f"task {scene.task.task_id} cannot be solved from this state")
    return plan
