"""The `alfworld` backend: ALFWorld game folders on the real ALFWorld + TextWorld engine (backend.py),
and household tasks exported as ALFWorld game folders (export.py). Needs `pip install 'leap-serve[alfworld]'`."""

from services.environment.backends.alfworld.backend import AlfworldBackend, AlfworldConfig

__all__ = ["AlfworldBackend", "AlfworldConfig"]
