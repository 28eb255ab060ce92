"""The household experts and how they explain themselves.

Three experts, each re-planning from the current state, so they can be asked "what next?" after any
history (LEAP's on-policy corrections need exactly that):

- PLANNER: knows the hidden state; plays a shortest plan (planner.shortest_plan over the full view).
- SEARCHER: sees only the agent's view (planner.agent_view: objects the agent has perceived). When
  the perceived objects suffice it plays the shortest plan over them; otherwise it searches the
  receptacles it has not searched yet in the fixed room order (the order the first observation lists
  them, its current spot first), opening closed ones, like ALFWorld's hand-coded expert. No priors.
- PRIOR_SEARCHER: the same, but it searches in order of the common-sense prior for what it still
  needs (priors.PRIORS): per-receptacle probability divided by the actions a visit costs (1, or 2
  when it must also open it), so the fridge comes first for an apple. Receptacles of the task's
  destination kind come last (an object is never already where the task asks for it).

Searchers take partial steps while searching: with one of two objects found they deliver it first;
with the object of a look task found they carry it while they look for the lamp.

Rationales: every expert returns, with its next action, one or two sentences that justify it as a
general principle and reveal nothing the agent has not observed. They are written from the agent's
view only (never from the full one, not even for the planner): places the agent has not searched are
named by their kind ("a cabinet"), never by instance, and objects only once the agent has seen them.
When the planner heads for a hidden object, the rationale says it is searching (that is all the agent
could know), which is exactly the realizability gap LEAP studies.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.environment.backends.household import priors
from services.environment.backends.household.planner import (
    DISPOSE,
    FETCH_GO,
    FETCH_OPEN,
    LAMP_GO,
    LAMP_USE,
    PLACE,
    PLACE_GO,
    PLACE_OPEN,
    PROCESS,
    PROCESS_GO,
    SEARCH_GO,
    SEARCH_OPEN,
    TAKE,
    Plan,
    Script,
    Tag,
    View,
    agent_view,
    full_view,
    shortest_plan,
    view_won,
)
from services.environment.backends.household.world import Knowledge, Scene, State

PLANNER = "planner"
SEARCHER = "searcher"
PRIOR_SEARCHER = "prior_searcher"
EXPERTS: tuple[str, ...] = (PLANNER, SEARCHER, PRIOR_SEARCHER)


@dataclass(frozen=True)
class Advice:
    """An expert's answer: its next action (empty when the goal is reached), plan and rationale."""

    next_action: str
    plan: tuple[str, ...]
    rationale: str
    already_won: bool


# --- searching --------------------------------------------------------------------------------------------

def _needs(view: View) -> list[str]:
    """Object kinds the view still lacks to finish the task (what a searcher looks for)."""
    task = view.layout.task
    found = view.of_kind(task.obj_kind)
    needs = []
    if task.task_type == "pick_two_obj_and_place":
        if len(found) < 2:
            needs.append(task.obj_kind)
    elif not found:
        needs.append(task.obj_kind)
    if task.lamp_kind and not view.of_kind(task.lamp_kind):
        needs.append(task.lamp_kind)
    return needs


def search_order(view: View, needs: list[str], use_priors: bool) -> list[int]:
    """Unsearched receptacles in the order a searcher visits them (its current spot first)."""
    unsearched = view.unsearched()
    if not use_priors:
        ordered = unsearched
    else:
        layout = view.layout
        present = layout.kinds_present
        dest = layout.task.dest_kind
        count = {kind: len(layout.instances(kind)) for kind in present}
        weights = {kind: priors.prior_weights(kind, present, exclude=dest) for kind in needs}

        def score(r: int) -> tuple[int, float, int]:
            kind = layout.recep_kinds[r]
            p = max((w.get(kind, 0.0) for w in weights.values()), default=0.0) / count[kind]
            cost = 2 if layout.openable[r] and not view.is_open(r) else 1
            return (1 if kind == dest else 0, -p / cost, r)

        ordered = sorted(unsearched, key=score)
    if view.loc in ordered:  # searching where one stands costs at most one `open`
        ordered.remove(view.loc)
        ordered.insert(0, view.loc)
    return ordered


def searcher_plan(view: View, use_priors: bool) -> Plan:
    """The searcher's plan under its current knowledge (it may change as it observes more)."""
    if view_won(view):
        return Plan([], [])
    plan = shortest_plan(view)
    if plan is not None:
        return plan
    task = view.layout.task
    script = Script(view)
    found = view.of_kind(task.obj_kind)
    if task.task_type == "pick_two_obj_and_place" and found:
        # Deliver the one object it has, to a destination instance (the cheapest), then search on.
        only = found[0]
        if not (view.objects[only].loc >= 0 and view.layout.recep_kinds[view.objects[only].loc] == task.dest_kind):
            best: Script | None = None
            for r in view.layout.instances(task.dest_kind):
                trial = Script(view)
                trial.take(only)
                trial.place(only, r)
                if best is None or len(trial.actions) < len(best.actions):
                    best = trial
            if best is not None:  # generated scenes always have a destination instance
                script = best
    elif task.task_type == "look_at_obj_in_light" and found and view.holding not in found:
        # Carry the object while looking for the lamp: the lamp can then be used where it is found.
        script.take(found[0])
    # The search itself, from the situation the steps above leave.
    situated = View(view.layout, script.loc, script.holding, script.opened, view.objects, view.searched, False)
    for r in search_order(situated, _needs(view), use_priors):
        script.go(r, SEARCH_GO)
        script.open(r, SEARCH_OPEN)
    if not script.actions:  # nothing left to search (cannot happen in generated tasks)
        return Plan(["look"], [Tag("look")])
    return script.plan()


# --- rationales ---------------------------------------------------------------------------------------------

def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _usual(kind: str, present: frozenset[str], exclude: str = "") -> list[str]:
    """Up to three kinds of receptacle, present in the room, where `kind` is most often kept."""
    return [k for k in priors.usual_places(kind, len(priors.PRIORS.get(kind, ()))) if k in present and k != exclude][:3]


def _or_list(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _search_reason(view: View, tag: Tag, expert: str) -> str:
    """Why look in (or open) a receptacle whose contents the agent does not know."""
    layout = view.layout
    kind = layout.recep_kinds[tag.recep]
    needs = _needs(view) or [layout.task.obj_kind]
    thing = _a(needs[0]) if len(needs) == 1 else f"{_a(needs[0])} and {_a(needs[1])}"
    opening = tag.purpose == SEARCH_OPEN
    if expert != SEARCHER:
        present = layout.kinds_present
        dest = layout.task.dest_kind
        liked = sorted((k for k in needs if kind in _usual(k, present, dest)),
                       key=lambda k: -priors.PRIORS[k].get(kind, 0))  # the need this place serves best
        if liked:
            wanted = liked[0]
            places = _or_list([f"{priors.preposition(p)} the {p}" for p in _usual(wanted, present, dest)])
            hint = f"{priors.plural(wanted).capitalize()} are usually kept {places}"
            if opening:
                return f"{hint}, so this {kind} is a likely place; it is closed, so I open it to look inside."
            if len(layout.instances(kind)) == 1:
                return f"{hint}, so I check the {kind}."
            return f"{hint}, so I check {_a(kind)} I have not searched yet."
    if opening:
        return f"The {kind} is closed, and closed places can hide things; I open it to look for {thing}."
    if expert == SEARCHER:
        return f"I have not found {thing} yet, so I search the receptacles one by one, in order."
    return f"I have not found {thing} yet, so I keep searching the places I have not looked in."


def explain(view: View, tag: Tag, expert: str) -> str:
    """A rationale for a step with `tag`, from the agent's view (reveals nothing unobserved)."""
    layout = view.layout
    task = layout.task
    objs = view.objects
    purpose = tag.purpose
    known = tag.obj in objs  # the agent has perceived the object the step is about
    if purpose in (SEARCH_GO, SEARCH_OPEN) or (purpose in (FETCH_GO, FETCH_OPEN, LAMP_GO) and not known):
        return _search_reason(view, Tag(SEARCH_OPEN if purpose in (SEARCH_OPEN, FETCH_OPEN) else SEARCH_GO,
                                        tag.obj, tag.recep), expert)
    name = objs[tag.obj].name if known else task.obj_kind
    rkind = layout.recep_kinds[tag.recep] if tag.recep >= 0 else ""
    if purpose == FETCH_GO:
        return f"I saw the {name} earlier at the {layout.receptacles[tag.recep]}, so I go back to get it."
    if purpose == FETCH_OPEN:
        return f"The {name} is inside the closed {rkind}; I open it to reach it."
    if purpose == DISPOSE:
        return f"I am carrying the {name}, which the task does not need; I put it down here to free my hand."
    if purpose == TAKE:
        if task.task_type == "look_at_obj_in_light":
            return (f"The task is to examine {_a(task.obj_kind)} under the {task.lamp_kind}; "
                    f"I found the {name}, so I pick it up.")
        return f"The task needs {_a(task.obj_kind)} and here is the {name}, so I pick it up."
    # Carrying the object to where the task wants it (and processing it on the way): every reason
    # first restates the want, then where the agent stands, then the step. A small student makes its
    # decision in its reason's first words; written this way, "go" or "put" comes right after the two
    # places it depends on, instead of from a template it fills with the place it happens to be at.
    # Places by kind only: an instance ("sinkbasin 1") can be a critical location the agent never saw.
    here = f"I am at the {layout.recep_kinds[view.loc]}" if view.loc >= 0 else "I am in the middle of the room"
    if purpose in (PROCESS_GO, PROCESS):
        want = f"The task wants the {name} {priors.STATE_WORD[task.verb]} first; {here}"
        if purpose == PROCESS_GO:
            return f"{want}, so I go to the {rkind}."
        return f"{want}, so I {task.verb} it now."
    if purpose in (PLACE_GO, PLACE_OPEN, PLACE):
        dest = f"{priors.preposition(task.dest_kind)} the {task.dest_kind}"
        if task.task_type == "pick_two_obj_and_place":
            want = f"The task wants two {priors.plural(task.obj_kind)} {dest}; {here}"
        else:
            state = f"{priors.STATE_WORD[task.verb]} " if task.verb else ""
            want = f"The task wants the {name} {state}{dest}; {here}"
        if purpose == PLACE_GO:
            return f"{want}, so I go to the {rkind}."
        if purpose == PLACE_OPEN:
            return f"{want}, which is closed, so I open it."
        return f"{want}, so I put it there."
    if purpose == LAMP_GO:
        lamp = objs[tag.obj]
        held = objs[view.holding].name if view.holding in objs else task.obj_kind
        return (f"I have the {held}; I saw the {lamp.name} at the {layout.receptacles[lamp.loc]}, "
                f"and I need its light to examine the {task.obj_kind}.")
    if purpose == LAMP_USE:
        return (f"I am next to the {task.lamp_kind} with the {task.obj_kind} in hand; "
                f"turning the lamp on lets me examine it in its light.")
    return "This is the next step towards the goal."


# --- the experts ------------------------------------------------------------------------------------------

def advise(scene: Scene, state: State, knowledge: Knowledge, expert: str) -> Advice:
    """What `expert` would do next from (state, knowledge), its plan from there, and why."""
    seen = agent_view(scene, state, knowledge)
    if expert == PLANNER:
        view = full_view(scene, state)
        if view_won(view):
            return Advice("", (), "", True)
        plan = shortest_plan(view)
        if plan is None:
            raise RuntimeError(f"task {scene.task.task_id} cannot be solved from this state")
    elif expert in (SEARCHER, PRIOR_SEARCHER):
        if view_won(seen):
            return Advice("", (), "", True)
        plan = searcher_plan(seen, use_priors=expert == PRIOR_SEARCHER)
    else:
        raise ValueError(f"unknown expert {expert!r}; valid experts: {', '.join(EXPERTS)}")
    rationale = explain(seen, plan.tags[0], expert) if plan.actions else ""
    return Advice(plan.actions[0] if plan.actions else "", tuple(plan.actions), rationale, False)


__all__ = ["Advice", "EXPERTS", "PLANNER", "PRIOR_SEARCHER", "SEARCHER", "advise", "explain", "search_order",
           "searcher_plan"]
