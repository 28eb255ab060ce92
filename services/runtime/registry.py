"""A table of named extensions whose entries are imported on first use.

The environment backends, teacher backends and training methods each keep one: a name maps to the
object itself or to "module:attribute" naming it, and the module is imported only when the name is
first looked up (so serving one environment never imports another's engine).

    METHODS = Registry("training method", {"sft": "services.trainer.methods.sft:METHOD"},
                       check=lambda name, found: isinstance(found, TrainingMethod) and found.name == name)
    METHODS.get("sft")        # imports services.trainer.methods.sft once, then answers from the table
    METHODS.names()           # ("sft",): registration order

Thread-safe: the table is read and written under a lock; an import happens outside it.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Callable, Generic, Mapping, Optional, TypeVar, Union

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries, each an object or the "module:attribute" reference of one.

    `what` names an entry in messages ("training method"). `unknown(name)` builds the error of a name
    that is not registered (default: LookupError naming the registered ones). `check(name, found)` says
    whether an imported object is the entry of that name (TypeError otherwise); `describe(name)` words
    what it should have been in that TypeError (default: "the <what> <name!r>").
    """

    def __init__(self, what: str, entries: Optional[Mapping[str, Union[str, T]]] = None, *,
                 unknown: Optional[Callable[[str], Exception]] = None,
                 check: Optional[Callable[[str, Any], bool]] = None,
                 describe: Optional[Callable[[str], str]] = None):
        self.what = what
        self._entries: dict[str, Union[str, T]] = dict(entries or {})
        self._lock = threading.Lock()
        self._unknown = unknown
        self._check = check
        self._describe = describe

    def register(self, name: str, entry: Union[str, T]) -> None:
        """Add (or replace) the entry of a name: the object, or "module:attribute" naming it."""
        with self._lock:
            self._entries[name] = entry

    def unregister(self, name: str) -> None:
        """Remove a name; an unknown one is ignored."""
        with self._lock:
            self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        with self._lock:
            return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def get(self, name: str) -> T:
        """The entry of a name, imported on first use; `unknown(name)` raised for an unregistered one."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            if self._unknown is not None:
                raise self._unknown(name)
            raise LookupError(f"unknown {self.what} {name!r}; valid: {', '.join(self.names())}")
        if not isinstance(entry, str):
            return entry
        module_name, _, attribute = entry.partition(":")
        found = getattr(importlib.import_module(module_name), attribute)
        if self._check is not None and not self._check(name, found):
            expected = self._describe(name) if self._describe is not None else f"the {self.what} {name!r}"
            raise TypeError(f"{module_name}:{attribute} is not {expected}")
        with self._lock:
            self._entries[name] = found
        return found
