"""Requests as they arrive from a client that may be careless or hostile: parsing and checks at the edge.

Every server parses its requests here (the runtime interceptor hands each handler raw bytes and
calls `parse_request`), so no service can forget it:

- bytes that are not a valid message, or a string field that is not UTF-8, become INVALID_ARGUMENT
  naming the message (and the field when it can be found), instead of grpc's generic INTERNAL
  "Exception deserializing request!";
- an enum field holding a number its enum does not define (proto3 keeps such values) becomes
  INVALID_ARGUMENT naming the field, the value and the valid names, instead of being read as
  UNSPECIFIED or as whatever a `dict.get` default says.

The helpers below are for fields that service logic parses further: identifiers (`check_id`: printable
ASCII, bounded length) and decimal numbers inside them (`parse_decimal`: ASCII digits only, bounded, so
neither Python's 4,300-digit int() limit nor full-width digits can turn into an INTERNAL error).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Iterable, Iterator

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message

from services.runtime.errors import InvalidArgument, quote

#: Longest identifier (environment name, task id, split, version label) a service accepts.
MAX_ID_CHARS = 256
#: Most digits `parse_decimal` reads (int64 has 19).
MAX_DECIMAL_DIGITS = 18

_FD = _descriptor.FieldDescriptor


# --- raw bytes -> message ---------------------------------------------------------------------------

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _bad_utf8_field(desc: _descriptor.Descriptor, data: bytes, prefix: str = "", depth: int = 0) -> str | None:
    """The dotted name of a string field holding invalid UTF-8, found by walking the wire format."""
    if depth > 32:
        return None
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length, pos = _varint(data, pos)
                chunk, pos = data[pos:pos + length], pos + length
                field = desc.fields_by_number.get(number)
                if field is None:
                    continue
                if field.type == _FD.TYPE_STRING:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return prefix + field.name
                elif field.type == _FD.TYPE_MESSAGE:
                    found = _bad_utf8_field(field.message_type, chunk, prefix + field.name + ".", depth + 1)
                    if found:
                        return found
            else:
                return None
    except ValueError:
        return None
    return None


def parse_request(cls: type[_message.Message], data: bytes) -> _message.Message:
    """Parse raw request bytes, or raise InvalidArgument saying what is wrong with them."""
    name = cls.DESCRIPTOR.full_name
    try:
        message = cls.FromString(data)
    except Exception as exc:  # noqa: BLE001 - DecodeError, and anything else a parser may raise on garbage
        field = _bad_utf8_field(cls.DESCRIPTOR, data) if isinstance(data, (bytes, bytearray)) else None
        if field:
            raise InvalidArgument(f"{name}.{field} is not valid UTF-8") from None
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InvalidArgument(f"the request is not a valid {name} message ({reason})") from None
    check_enums(message, name + ".")
    return message


def request_parser(deserializer: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    """A function that parses raw request bytes as `deserializer` would, raising InvalidArgument on bad
    input; None when there is nothing to parse (the handler takes raw bytes itself)."""
    if deserializer is None:
        return None
    cls = getattr(deserializer, "__self__", None)  # generated code passes `SomeRequest.FromString`
    if isinstance(cls, type) and issubclass(cls, _message.Message):
        return lambda data: parse_request(cls, data)

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - any parser failure is the request's fault
            raise InvalidArgument("the request could not be parsed") from None

    return parse


def parse_stream(parse: Callable[[bytes], object], raw: Iterable[bytes]) -> Iterator[object]:
    """A request stream of raw bytes as parsed messages (each parsed when the handler asks for it)."""
    for data in raw:
        yield parse(data)


# --- enum values --------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _enum_fields(desc: _descriptor.Descriptor) -> tuple[_descriptor.FieldDescriptor, ...]:
    """Fields of `desc` that are enums or lead to messages holding enums (recursion-safe)."""
    return tuple(f for f in desc.fields if _holds_enum(f, frozenset({desc.full_name})))


def _holds_enum(field: _descriptor.FieldDescriptor, seen: frozenset[str]) -> bool:
    if field.type == _FD.TYPE_ENUM:
        return True
    if field.type != _FD.TYPE_MESSAGE:
        return False
    sub = field.message_type
    if sub.full_name in seen:
        return False  # a recursive message: its enums (if any) are found at the outer level
    return any(_holds_enum(f, seen | {sub.full_name}) for f in sub.fields)


def _valid_names(enum: _descriptor.EnumDescriptor) -> str:
    return ", ".join(f"{v.name} ({v.number})" for v in enum.values)


def check_enums(message: _message.Message, prefix: str = "", depth: int = 0) -> None:
    """Raise InvalidArgument when an enum field of `message` (at any depth) holds an undefined number.

    `prefix` starts the field's name in the message (parse_request passes the request's full name)."""
    if depth > 64:
        return
    for field in _enum_fields(message.DESCRIPTOR):
        name = prefix + field.name
        value = getattr(message, field.name)
        if field.type == _FD.TYPE_ENUM:
            values = value if field.is_repeated else [value]
            for number in values:
                if number not in field.enum_type.values_by_number:
                    raise InvalidArgument(
                        f"{name} holds {number}, which is not a {field.enum_type.full_name}; valid values: "
                        f"{_valid_names(field.enum_type)}")
            continue
        if field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, _message.Message):
                    check_enums(item, f"{name}[{quote(key, 40)}].", depth + 1)
            continue
        if field.is_repeated:
            for i, item in enumerate(value):
                check_enums(item, f"{name}[{i}].", depth + 1)
        elif message.HasField(field.name):
            check_enums(value, f"{name}.", depth + 1)


def enum_value_name(enum: _descriptor.EnumDescriptor, number: int, what: str) -> str:
    """The name of an enum number, or InvalidArgument naming the valid ones (for values outside a request)."""
    value = enum.values_by_number.get(number)
    if value is None:
        raise InvalidArgument(f"{what} is {number}, which is not a {enum.full_name}; valid values: "
                              f"{_valid_names(enum)}")
    return value.name


# --- identifiers and numbers inside them ------------------------------------------------------------

def check_id(value: str, what: str, *, required: bool = False, max_chars: int = MAX_ID_CHARS) -> str:
    """`value` when it is a plausible identifier: printable ASCII without spaces, at most `max_chars`.

    Names, task ids, splits and version labels are all of that form; anything else (a 5,000-digit
    number, full-width digits, control characters, NUL) is refused here with INVALID_ARGUMENT before
    service logic or a backend parses it. Empty is allowed unless `required`.
    """
    if not value:
        if required:
            raise InvalidArgument(f"{what} is empty")
        return value
    if len(value) > max_chars:
        raise InvalidArgument(f"{what} is {len(value)} characters long; the limit is {max_chars} "
                              f"(it starts {quote(value, 40)})")
    if not all("!" <= ch <= "~" for ch in value):
        bad = next(ch for ch in value if not "!" <= ch <= "~")
        raise InvalidArgument(f"{what} {quote(value)} holds {bad!r} (U+{ord(bad):04X}); identifiers are printable "
                              "ASCII without spaces")
    return value


def parse_decimal(text: str, what: str, *, max_digits: int = MAX_DECIMAL_DIGITS) -> int:
    """A non-negative integer written in ASCII digits 0-9 (at most `max_digits` of them), else InvalidArgument.

    Unlike int(), it refuses full-width and other Unicode digits, signs, spaces and underscores, and
    never meets Python's limit on the digits of an int (a ValueError that would surface as INTERNAL).
    """
    if not text or len(text) > max_digits or not text.isascii() or not text.isdigit():
        raise InvalidArgument(f"{what} must be a number of 1 to {max_digits} ASCII digits; got {quote(text, 40)}")
    return int(text)
