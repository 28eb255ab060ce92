"""Teacher profiles: what the teacher knows of an environment family's actions.

A profile says how to find a student's mistakes in a trajectory and which template family explains a
correction. The teacher picks one by the trajectory's environment name (`profile_for`); environments
without a profile of their own get the generic one, which every environment satisfies:

- mistakes: invalid actions (not among the candidates, or flagged invalid by the environment) and
  repeated actions (services.teacher.actions.find_mistakes);
- reasons: the expert's rationale when it gives one, else "I should do <action>" (templates/oracle/default/).

Templates are looked up by environment name first, then by the profile's family, then `default`:
`templates/oracle/<env>/reason.j2`, `templates/oracle/<family>/reason.j2`, `templates/oracle/default/
reason.j2` (and likewise `templates/llm/<env>/...` for the LLM teacher). So a new environment needs no
profile at all; it may add templates, and a profile only when its grammar lets the teacher name more
kinds of mistakes (the household/ALFWorld profile adds wrong objects and wasted search).

    register("myenv", "mypackage.teacher_profile:PROFILE")   # a TeacherProfile, imported on first use
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

from services.teacher import actions, templates


def _no_context(steps, t: int, action: str, student_action: str) -> dict[str, Any]:
    return {}


def _generic_mistakes(trajectory, essential_objects: Sequence[str]) -> list[actions.Mistake]:
    return actions.find_mistakes(trajectory)


@dataclass(frozen=True)
class TeacherProfile:
    """How the teacher reads one family of environments."""

    #: Template folder under templates/oracle/ and templates/llm/ ("default" for the generic profile).
    family: str
    #: (trajectory, the task's essential objects) -> the student's mistakes, in step order.
    find_mistakes: Callable[[Any, Sequence[str]], list[actions.Mistake]] = _generic_mistakes
    #: (steps, t, teacher action, student action) -> extra variables for the reason template.
    reason_context: Callable[[Any, int, str, str], dict[str, Any]] = _no_context


GENERIC = TeacherProfile(family="default")

_lock = threading.Lock()
_REGISTRY: dict[str, Union[str, TeacherProfile]] = {
    "household": "services.teacher.profiles.household:PROFILE",
    "alfworld": "services.teacher.profiles.household:PROFILE",
}


def register(env: str, profile: Union[str, TeacherProfile]) -> None:
    """Register (or replace) the profile of an environment name ("module:attribute" or a profile)."""
    with _lock:
        _REGISTRY[env] = profile


def profile_for(env: str) -> TeacherProfile:
    """The profile of an environment name; the generic profile for names without one."""
    with _lock:
        entry = _REGISTRY.get(env)
    if entry is None:
        return GENERIC
    if isinstance(entry, str):
        module_name, _, attribute = entry.partition(":")
        entry = getattr(importlib.import_module(module_name), attribute)
        with _lock:
            _REGISTRY[env] = entry
    return entry


def template_for(kind: str, env: str, name: str) -> str:
    """The template `name` of `kind` ("oracle" or "llm") for an environment: its own, its family's, or
    the default one."""
    family = profile_for(env).family
    for folder in (env, family):
        if folder and folder.replace("_", "").isalnum():
            candidate = f"{kind}/{folder}/{name}.j2"
            if templates.exists(candidate):
                return candidate
    return f"{kind}/default/{name}.j2"
