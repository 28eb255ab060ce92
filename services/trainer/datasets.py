"""Training data files: their schemas, reading and schema checks. No torch here.

A dataset is one or more files, JSON Lines (``.jsonl``, one JSON object per line; blank lines are
ignored) or Parquet (``.parquet``, one row per example). The orchestrator writes them; the trainer
checks every row before a job is accepted, so a bad row fails fast with its file and line.

Schemas (one row per example; unknown extra keys are allowed and ignored)
-----------------------------------------------------------------------

``messages`` is the prompt as a chat: a non-empty list of ``{"role": "system"|"user"|"assistant",
"content": str}`` whose last message is the user's. The trainer renders it exactly as the student
service does at inference, ``tokenizer.apply_chat_template(messages, add_generation_prompt=True,
tokenize=False)``, and tokenises that text without adding special tokens.

SFT (``method=sft``)::

    {"messages": [...], "completion": "REASON: ...\\nACTION: ...", "meta": {...optional}}

DPO (``method=dpo``): ``chosen`` is the teacher's correction, ``rejected`` the student's original::

    {"messages": [...], "chosen": str, "rejected": str, "meta": {...optional}}

KTO (``method=kto``): a desirable (``label: true``) or undesirable (``false``) completion::

    {"messages": [...], "completion": str, "label": bool, "meta": {...optional}}

A KTO job also accepts DPO rows ("KTO from the same data"): each pair becomes two examples, the
chosen one desirable and the rejected one undesirable.

Targets (``completion``, ``chosen``, ``rejected``) are non-empty strings; the trainer appends the
tokenizer's end-of-sequence token, and the loss covers the target tokens only (prompt tokens are
masked). ``meta`` is an optional object (provenance such as task id, iteration, step) and is not
trained on. ``chosen`` and ``rejected`` must differ.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from services.runtime.errors import InvalidArgument
from services.runtime.files import sha256_bytes

ROLES = ("system", "user", "assistant")
FORMATS = ("jsonl", "parquet")
MAX_REPORTED_ERRORS = 5


class DatasetError(InvalidArgument):
    """A dataset file that does not match its schema (INVALID_ARGUMENT, naming file and line)."""


@dataclass
class Example:
    """One validated training example. `where` is "file:line" (JSONL) or "file:row N" (Parquet)."""

    messages: list[dict[str, str]]
    where: str
    completion: str | None = None
    label: bool | None = None
    chosen: str | None = None
    rejected: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_pair(self) -> bool:
        return self.chosen is not None


@dataclass
class DatasetFile:
    """A parsed dataset file; sha256 is of the exact bytes the examples were parsed from."""

    path: str
    format: str
    sha256: str
    size_bytes: int
    examples: list[Example]


def detect_format(path: str, hint: str = "") -> str:
    """'jsonl' or 'parquet' from the explicit hint, else from the file name."""
    hint = (hint or "").lower().strip()
    if hint in ("jsonl", "json", "ndjson"):
        return "jsonl"
    if hint == "parquet":
        return "parquet"
    if hint:
        raise InvalidArgument(f"dataset format {hint!r} is not supported; use one of: {', '.join(FORMATS)}")
    name = path.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise InvalidArgument(
        f"cannot tell the format of dataset {path}: name it *.jsonl or *.parquet, or set ArtifactRef.format"
    )


def read_dataset(path: str | os.PathLike, method: str, fmt: str = "") -> DatasetFile:
    """Read, hash and schema-check one file for `method`. Raises DatasetError naming the bad rows."""
    path = str(path)
    fmt = detect_format(path, fmt)
    data = Path(path).read_bytes()
    return parse_dataset(data, path, method, fmt)


def parse_dataset(data: bytes, path: str, method: str, fmt: str) -> DatasetFile:
    examples: list[Example] = []
    errors: list[str] = []
    bad_rows = 0
    total = 0
    for where, row, problem in _rows(data, path, fmt):
        total += 1
        if problem is None:
            try:
                examples.extend(validate_row(row, method, where))
                continue
            except DatasetError as exc:
                problem = exc.message
        bad_rows += 1
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(problem)
    if errors:
        more = f" (and {bad_rows - len(errors)} more)" if bad_rows > len(errors) else ""
        raise DatasetError(
            f"dataset {path} does not match the {method.upper()} schema: {bad_rows} of {total} rows are invalid: "
            + "; ".join(errors) + more
        )
    if not examples:
        raise DatasetError(f"dataset {path} holds no examples")
    return DatasetFile(path=path, format=fmt, sha256=sha256_bytes(data), size_bytes=len(data), examples=examples)


def _rows(data: bytes, path: str, fmt: str) -> Iterator[tuple[str, Any, str | None]]:
    """(where, row, problem) for each row; problem is a parse error message or None."""
    if fmt == "jsonl":
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line), None
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield where, None, f"{where}: not valid JSON ({exc})"
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"dataset {path} is not a readable Parquet file: {exc}") from exc
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}:row {number}", row, None


def validate_row(row: Any, method: str, where: str) -> list[Example]:
    """The examples of one row (two for a DPO pair in a KTO job), or DatasetError("where: why")."""

    def fail(reason: str):
        raise DatasetError(f"{where}: {reason}")

    if not isinstance(row, dict):
        fail(f"expected a JSON object, got {type(row).__name__}")
    messages = _messages(row.get("messages"), fail)
    meta = row.get("meta")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        fail(f"'meta' must be an object when present, got {type(meta).__name__}")

    def text(key: str) -> str:
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            fail(f"'{key}' must be a non-empty string" + ("" if key in row else " (missing)"))
        return value

    def pair() -> tuple[str, str]:
        chosen, rejected = text("chosen"), text("rejected")
        if chosen == rejected:
            fail("'chosen' and 'rejected' are identical: the pair carries no preference")
        return chosen, rejected

    if method == "sft":
        return [Example(messages, where, completion=text("completion"), meta=meta)]
    if method == "dpo":
        chosen, rejected = pair()
        return [Example(messages, where, chosen=chosen, rejected=rejected, meta=meta)]
    if method == "kto":
        if "chosen" in row or "rejected" in row:
            chosen, rejected = pair()
            return [Example(messages, where, completion=chosen, label=True, meta=meta),
                    Example(messages, where, completion=rejected, label=False, meta=meta)]
        completion = text("completion")
        label = row.get("label")
        if not isinstance(label, bool):
            fail("'label' must be true (desirable) or false (undesirable)"
                 + ("" if "label" in row else " (missing)"))
        return [Example(messages, where, completion=completion, label=label, meta=meta)]
    raise InvalidArgument(f"unknown training method {method!r}; valid: sft, dpo, kto")


def _messages(value: Any, fail) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        fail("'messages' must be a non-empty list of {role, content} objects"
             + (" (missing)" if value is None else ""))
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            fail(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            fail(f"messages[{i}].role must be one of {', '.join(ROLES)} (got {role!r})")
        if not isinstance(content, str):
            fail(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        fail(f"the last message must be the user's (got {out[-1]['role']!r}): the model answers it")
    return out
