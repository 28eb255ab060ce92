"""A backend's options (`--env-option key=value`, or keywords of `create`) read into its config dataclass.

Every backend turns its options into a frozen dataclass the same way: keys name the dataclass's fields
(dashes read as underscores), an unknown key is InvalidArgument listing the valid ones, and each value,
often a string from a command line, is converted to the type of its field's default. What differs is
the conversion, so a backend passes its own (or one of the two below):

    config = config_from_options(HouseholdConfig, options, "household", typed_value("household"))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence, TypeVar

from services.runtime.errors import InvalidArgument, quote

C = TypeVar("C")
# (key as given, field name, raw value, the field's default) -> the field's value; InvalidArgument when it is not one.
Convert = Callable[[Any, str, Any, Any], Any]

_TRUE = ("1", "true", "yes", "on")
_BOOL_WORDS = ("1", "0", "true", "false", "yes", "no", "on", "off")


def config_from_options(config_class: type[C], options: Mapping[str, Any], env: str, convert: Convert, *,
                        quote_key: Callable[[Any], str] = repr, also_valid: Sequence[str] = (),
                        invalid: tuple[type[Exception], ...] = (ValueError,)) -> C:
    """`config_class` from options. An unknown key names the valid ones (the fields, sorted, then
    `also_valid`); an `invalid` exception of the constructor (its own checks) becomes InvalidArgument."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    values: dict[str, Any] = {}
    for key, raw in options.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise InvalidArgument(f"unknown {env} option {quote_key(key)}; "
                                  f"valid options: {', '.join(sorted(fields) + list(also_valid))}")
        values[name] = convert(key, name, raw, fields[name].default)
    try:
        return config_class(**values)
    except invalid as exc:
        raise InvalidArgument(str(exc)) from None


def typed_value(env: str, *, reject_nan: bool = False) -> Convert:
    """Strings converted to the type of the default (booleans: 1/0, true/false, yes/no, on/off); other
    values taken as they are. With `reject_nan`, a NaN is refused."""

    def convert(key: Any, name: str, raw: Any, default: Any) -> Any:
        try:
            if isinstance(raw, str) and not isinstance(default, str):
                if isinstance(default, bool):
                    if raw.lower() not in _BOOL_WORDS:
                        raise ValueError(raw)
                    value: Any = raw.lower() in _TRUE
                else:
                    value = type(default)(raw)
            else:
                value = raw
        except (ValueError, OverflowError):
            raise InvalidArgument(f"{env} option {key}={raw!r} is not a valid {type(default).__name__}") from None
        if reject_nan and isinstance(value, float) and value != value:
            raise InvalidArgument(f"{env} option {key} is not a number")
        return value

    return convert


def integer_or_text(env: str) -> Convert:
    """Integer fields take a decimal integer of at most 12 characters; every other field the text."""

    def convert(key: Any, name: str, raw: Any, default: Any) -> Any:
        if isinstance(default, int):
            text = str(raw).strip()
            if not (text.isascii() and text.lstrip("-").isdigit()) or len(text) > 12:
                raise InvalidArgument(f"{env} option {name}={quote(str(raw))} is not an integer")
            return int(text)
        return str(raw)

    return convert


def config_or_options(config: C | None, options: Mapping[str, Any], parse: Callable[[Mapping[str, Any]], C],
                      article_and_class: str) -> C:
    """A backend's config: the one given, else `parse(options)`; both given is InvalidArgument ("pass
    either a HouseholdConfig or options, not both")."""
    if config is not None and options:
        raise InvalidArgument(f"pass either {article_and_class} or options, not both")
    return config or parse(options)
