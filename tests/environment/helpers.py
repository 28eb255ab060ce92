"""Shared helpers of the environment tests: hand-made scenes, expert runs, an exhaustive search."""

from __future__ import annotations

import re

from services.environment.backends.household import priors
from services.environment.backends.household.experts import advise
from services.environment.backends.household.world import (
    Knowledge,
    Layout,
    Scene,
    State,
    Task,
    candidates,
    is_won,
    transition,
)


def make_scene(task_type: str, goal: str, obj_kind: str, receptacles: list[str], objects: dict[str, str],
               dest_kind: str = "", verb: str = "", lamp_kind: str = "", task_id: str = "train-00000") -> Scene:
    """A hand-made scene: receptacle names in room order, {object name: receptacle name}."""
    kinds = [name.rsplit(" ", 1)[0] for name in receptacles]
    task = Task(task_id=task_id, split=task_id.rsplit("-", 1)[0], index=0, task_type=task_type, goal=goal,
                obj_kind=obj_kind, dest_kind=dest_kind, verb=verb, lamp_kind=lamp_kind, room="kitchen")
    layout = Layout(task, tuple(receptacles), tuple(kinds), tuple(k in priors.OPENABLE for k in kinds))
    names = list(objects)
    return Scene(layout, tuple(names), tuple(n.rsplit(" ", 1)[0] for n in names),
                 tuple(layout.recep_index[objects[n]] for n in names))


def play(scene: Scene, actions: list[str]) -> tuple[State, Knowledge, list[str]]:
    state, knowledge, texts = scene.initial_state(), Knowledge(), []
    for action in actions:
        out = transition(scene, state, action)
        state, knowledge = out.state, knowledge.after(scene, out)
        texts.append(out.text)
    return state, knowledge, texts


def run_expert(scene: Scene, expert: str, horizon: int, state: State | None = None,
               knowledge: Knowledge | None = None) -> tuple[bool, list[str]]:
    """Play an expert from a state until it wins or the horizon; (won, actions)."""
    state = state or scene.initial_state()
    knowledge = knowledge or Knowledge()
    actions: list[str] = []
    while len(actions) < horizon:
        if is_won(scene, state):
            return True, actions
        advice = advise(scene, state, knowledge, expert)
        out = transition(scene, state, advice.next_action)
        assert out.valid, f"{expert} chose an inadmissible action {advice.next_action!r}: {out.text}"
        state, knowledge = out.state, knowledge.after(scene, out)
        actions.append(advice.next_action)
    return is_won(scene, state), actions


_STATE_ACTIONS = re.compile(r"^(go to|open|close|take|move|heat|cool|clean|use) ")


def shortest_length(scene: Scene, start: State, limit: int) -> int | None:
    """Exhaustive breadth-first search over the real transition function (every admissible
    state-changing action, ALFWorld's full candidate list): the length of a shortest winning action
    sequence, or None when there is none within `limit` actions."""
    if is_won(scene, start):
        return 0
    frontier, seen = [start], {start}
    for depth in range(1, limit + 1):
        following = []
        for state in frontier:
            for action in candidates(scene, state, verbose=True):
                if not _STATE_ACTIONS.match(action):
                    continue
                out = transition(scene, state, action)
                if not out.valid or out.state in seen:
                    continue
                if is_won(scene, out.state):
                    return depth
                seen.add(out.state)
                following.append(out.state)
        frontier = following
    return None


def feed(monkeypatch, answers: list[str]) -> None:
    """Make input() return these answers in turn, then raise EOFError (end of input), as a player would."""
    it = iter(answers)

    def fake_input(prompt=""):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
