"""The `intercode_bash` backend: InterCode's NL2Bash tasks in a sandboxed shell (see backend.py and README.md)."""

from services.environment.backends.intercode_bash.backend import IntercodeBashBackend, IntercodeConfig

__all__ = ["IntercodeBashBackend", "IntercodeConfig"]
