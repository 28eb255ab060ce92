"""The `textworld` backend: TextWorld challenge games generated offline from a seed (games.py) and played
by TextWorld's engine (backend.py). Needs `pip install 'leap-serve[textworld]'`."""

from services.environment.backends.textworld.backend import TextWorldBackend, TextWorldConfig

__all__ = ["TextWorldBackend", "TextWorldConfig"]
