"""Environment backends: the interface (base.py) and a registry by name.

A backend registers a factory under its name; the factory is imported only when that backend is
created, so `leap env serve --env household` never imports TextWorld, Docker clients and the like.

    register("webshop", "services.environment.backends.webshop:WebShopBackend")
    backend = create("household", train_tasks="500")      # options: the backend's own keywords

Factories take keyword options (strings are fine: they come from `--env-option key=value`).
"""

from __future__ import annotations

from typing import Any, Callable, Union

from services.environment.backends.base import (
    ACTION_SPACES,
    CANDIDATES,
    FREE_FORM,
    PLANNER,
    PRIOR_SEARCHER,
    SEARCHER,
    TEMPLATED,
    Backend,
    Demonstration,
    DemoStep,
    EnvironmentSpec,
    Episode,
    EpisodeState,
    ExpertAdvice,
    Observation,
    PrivilegedInfo,
    TaskSummary,
)
from services.runtime.errors import NotFound
from services.runtime.registry import Registry

Factory = Callable[..., Backend]


def available() -> list[str]:
    """Registered backend names, sorted."""
    return sorted(_REGISTRY.names())


def _unknown(name: str) -> NotFound:
    return NotFound(f"unknown environment {name!r}; valid names: {', '.join(available())}")


# name -> factory, or "module:attribute" naming one (imported on first use).
_REGISTRY: Registry[Factory] = Registry("environment", {
    "household": "services.environment.backends.household:HouseholdBackend",
    "alfworld": "services.environment.backends.alfworld:AlfworldBackend",
    "textworld": "services.environment.backends.textworld:TextWorldBackend",
    "webshop": "services.environment.backends.webshop:webshop_backend",
    "intercode_bash": "services.environment.backends.intercode_bash:IntercodeBashBackend",
}, unknown=_unknown)


def register(name: str, factory: Union[str, Factory]) -> None:
    """Register (or replace) the factory of a backend name."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"backend names are letters, digits and underscores; got {name!r}")
    _REGISTRY.register(name, factory)


def create(name: str, **options: Any) -> Backend:
    """A new backend instance of a registered name (NotFound naming the valid names otherwise)."""
    return _REGISTRY.get(name)(**options)


__all__ = [
    "ACTION_SPACES", "CANDIDATES", "FREE_FORM", "PLANNER", "PRIOR_SEARCHER", "SEARCHER", "TEMPLATED",
    "Backend", "DemoStep", "Demonstration", "EnvironmentSpec", "Episode", "EpisodeState", "ExpertAdvice", "Observation",
    "PrivilegedInfo", "TaskSummary", "available", "create", "register",
]
