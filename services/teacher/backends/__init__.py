"""Teacher backends, registered by name: `oracle` (the environment's experts) and `llm` (a chat model).

Each backend module defines a `SPEC` (base.BackendSpec: its name, its own flags, how to build it,
and the flags `leap run` passes to it); the registry maps a name to "module:attribute" and imports
the module on first use, as the environment backends' registry does.

    spec("llm").add_arguments(parser)
    backend = create("oracle", options=None, config=teacher_config)

Adding a backend: write `services/teacher/backends/<name>.py` with a `SPEC` and add one line to
`_REGISTRY` (CONTRIBUTING.md, "Add a teacher backend").
"""

from __future__ import annotations

from typing import Any, Union

from services.runtime.registry import Registry
from services.teacher.backends.base import AnnotationJob, BackendSpec, CorrectionJob, TeacherBackend


class UnknownBackend(ValueError):
    """A backend name that is not registered; the message names the registered ones."""


def available() -> list[str]:
    """Registered backend names, sorted."""
    return sorted(_REGISTRY.names())


# name -> the spec, or "module:attribute" naming it (imported on first use).
_REGISTRY: Registry[BackendSpec] = Registry(
    "teacher backend", {
        "oracle": "services.teacher.backends.oracle:SPEC",
        "llm": "services.teacher.backends.llm:SPEC",
    },
    unknown=lambda name: UnknownBackend(f"unknown teacher backend {name!r}; valid: {', '.join(available())}"),
    check=lambda name, found: isinstance(found, BackendSpec) and found.name == name,
    describe=lambda name: f"the BackendSpec of {name!r}")
DEFAULT_BACKEND = "oracle"


def register(spec: Union[str, BackendSpec], name: str = "") -> None:
    """Add (or replace) a backend: a BackendSpec, or "module:attribute" naming one (then `name` is required)."""
    name = name or getattr(spec, "name", "")
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"teacher backend names are letters, digits and underscores; got {name!r}")
    _REGISTRY.register(name, spec)


def unregister(name: str) -> None:
    _REGISTRY.unregister(name)


def spec(name: str) -> BackendSpec:
    """The spec of a registered backend, or UnknownBackend naming the valid ones."""
    return _REGISTRY.get(name)


def specs() -> list[BackendSpec]:
    return [spec(name) for name in available()]


def create(name: str, options: Any = None, config: Any = None) -> TeacherBackend:
    """A new backend of a registered name, from its options (`spec(name).from_args(args)`)."""
    return spec(name).create(options, config)


__all__ = ["AnnotationJob", "BackendSpec", "CorrectionJob", "DEFAULT_BACKEND", "TeacherBackend", "UnknownBackend",
           "available", "create", "register", "spec", "specs", "unregister"]
