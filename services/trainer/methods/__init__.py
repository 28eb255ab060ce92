"""The table of training methods: one module per method, registered here by name.

Every place that depends on the method reads this table: the trainer's request validation
(service.py) and proto translation (server.py), the dataset schema checks (datasets.py), the
hyper-parameter defaults (jobs.py), tokenisation and the TRL trainer (training.py), and the
orchestrator's config validation and method -> enum conversion. A method is a `TrainingMethod`
(base.py); its module is imported on first use, and imports torch only inside its trainer hooks.

    get("dpo").proto                       # trainer_pb2.TRAINING_METHOD_DPO
    from_proto(trainer_pb2.TRAINING_METHOD_KTO).name   # "kto"
    names()                                # ("sft", "dpo", "kto"), in registration order

Adding a method: write `services/trainer/methods/<name>.py` defining `METHOD = TrainingMethod(...)`
and add one line to `_REGISTRY` below (CONTRIBUTING.md, "Add a training method").
"""

from __future__ import annotations

from typing import Union

from services.runtime.errors import InvalidArgument, quote
from services.runtime.registry import Registry
from services.trainer.methods.base import IGNORE_INDEX, RowReader, TrainingMethod

# name -> the method, or "module:attribute" naming it (imported on first use). Order is the order
# names() lists them in, and so the order of every "valid: ..." message.
_REGISTRY: Registry[TrainingMethod] = Registry(
    "training method", {
        "sft": "services.trainer.methods.sft:METHOD",
        "dpo": "services.trainer.methods.dpo:METHOD",
        "kto": "services.trainer.methods.kto:METHOD",
    },
    check=lambda name, found: isinstance(found, TrainingMethod) and found.name == name,
    describe=lambda name: f"the TrainingMethod {name!r}")


def register(method: Union[str, TrainingMethod], name: str = "") -> None:
    """Add (or replace) a method: a TrainingMethod, or "module:attribute" naming one (then `name` is required)."""
    name = name or getattr(method, "name", "")
    if not name or not name.isidentifier() or name != name.lower():
        raise ValueError(f"training method names are lower-case identifiers; got {name!r}")
    if isinstance(method, TrainingMethod) and method.name != name:
        raise ValueError(f"method {method.name!r} registered under another name ({name!r})")
    _REGISTRY.register(name, method)


def unregister(name: str) -> None:
    """Remove a method (tests that register a toy one clean up with this)."""
    _REGISTRY.unregister(name)


def names() -> tuple[str, ...]:
    """The registered method names, in registration order."""
    return _REGISTRY.names()


def is_known(name: str) -> bool:
    return name in _REGISTRY


def get(name: str) -> TrainingMethod:
    """The method of a name (case-insensitive), or InvalidArgument naming the valid ones."""
    key = (name or "").strip().lower()
    if key not in _REGISTRY:
        raise InvalidArgument(f"unknown training method {quote(name or 'UNSPECIFIED', 40)}; "
                              f"valid: {', '.join(names())}")
    return _REGISTRY.get(key)


def all_methods() -> list[TrainingMethod]:
    return [get(name) for name in names()]


def from_proto(value: int) -> TrainingMethod:
    """The method of a leap.v1.TrainingMethod number, or InvalidArgument naming the valid ones."""
    for method in all_methods():
        if method.proto == value:
            return method
    raise InvalidArgument(f"training method number {value} is not one this trainer runs; "
                          f"valid: {', '.join(names())}")


def to_proto(name: str) -> int:
    """The leap.v1.TrainingMethod number of a method name (InvalidArgument for an unknown one)."""
    return get(name).proto


__all__ = ["IGNORE_INDEX", "RowReader", "TrainingMethod", "all_methods", "from_proto", "get", "is_known", "names",
           "register", "to_proto", "unregister"]
