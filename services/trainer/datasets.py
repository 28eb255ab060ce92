"""Training data files: their schemas, reading and schema checks. No torch here.

A dataset is one or more files, JSON Lines (``.jsonl``, one JSON object per line; blank lines are
ignored) or Parquet (``.parquet``, one row per example). The orchestrator writes them; the trainer
checks every row before a job is accepted, so a bad row fails fast with its file and line.

Schemas (one row per example; unknown extra keys are allowed and ignored)
-----------------------------------------------------------------------

Each method's module in services/trainer/methods/ owns its schema; the ones of today:

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

Limits (`DatasetLimits`, the trainer's --max-dataset-mb / --max-dataset-rows): a file is at most
`max_bytes` bytes (a Parquet file also once decoded: its rows' sizes are computed before they are
decoded) and `max_rows` rows, a JSONL line (a Parquet row's decoded text) at most `max_line_bytes`, a row nested at most
`max_depth` levels. Checking a JSONL file streams it line by line (hashing the same bytes it parses),
so StartJob's memory does not grow with the file; every string must be valid Unicode (a lone
surrogate such as ``"\ud800"`` is refused here rather than failing the tokenizer later). Only regular
files are read (not devices, FIFOs or /proc files).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Iterator

from services.runtime.errors import InvalidArgument, quote
from services.trainer import methods
from services.trainer.methods import RowReader

ROLES = ("system", "user", "assistant")
FORMATS = ("jsonl", "parquet")
MAX_REPORTED_ERRORS = 5
#: Characters of one row's problem shown in an error (five problems fit well inside a gRPC status).
_PROBLEM_CHARS = 300


@dataclass(frozen=True)
class DatasetLimits:
    """Caps on one dataset file (see the module docstring)."""

    max_bytes: int = 512 * 1024 * 1024
    max_rows: int = 1_000_000
    max_line_bytes: int = 8 * 1024 * 1024
    max_depth: int = 32


DEFAULT_LIMITS = DatasetLimits()


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
    #: Rows read (blank JSONL lines excluded); equals the rows behind `examples`, also when they are not kept.
    rows: int = 0


def detect_format(path: str, hint: str = "") -> str:
    """'jsonl' or 'parquet' from the explicit hint, else from the file name."""
    hint = (hint or "").lower().strip()
    if hint in ("jsonl", "json", "ndjson"):
        return "jsonl"
    if hint == "parquet":
        return "parquet"
    if hint:
        raise InvalidArgument(f"dataset format {quote(hint, 40)} is not supported; use one of: {', '.join(FORMATS)}")
    name = path.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise InvalidArgument(
        f"cannot tell the format of dataset {path}: name it *.jsonl or *.parquet, or set ArtifactRef.format"
    )


def read_dataset(path: str | os.PathLike, method: str, fmt: str = "", *, limits: DatasetLimits = DEFAULT_LIMITS,
                 keep_examples: bool = True) -> DatasetFile:
    """Read, hash and schema-check one file for `method`. Raises DatasetError naming the bad rows.

    With keep_examples=False (StartJob's check) the examples are validated and counted, not kept, and
    a JSONL file is streamed: memory stays at about one line whatever the file's size.
    """
    path = str(path)
    fmt = detect_format(path, fmt)
    try:
        # O_NOFOLLOW: the caller resolved the path; a symlink swapped in since is not followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DatasetError(f"dataset {path} cannot be opened ({exc.strerror or type(exc).__name__})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DatasetError(f"dataset {path} is not a regular file")
        if info.st_size > limits.max_bytes:
            raise DatasetError(f"dataset {path} has {info.st_size} bytes, more than this trainer's limit of "
                               f"{limits.max_bytes} bytes (--max-dataset-mb); split it into several files")
        if fmt == "jsonl":
            return _check(_jsonl_rows(f, path, limits), path, method, fmt, limits, keep_examples)
        data = _read_capped(f, path, limits)
    return parse_dataset(data, path, method, fmt, limits=limits, keep_examples=keep_examples)


def parse_dataset(data: bytes, path: str, method: str, fmt: str, *, limits: DatasetLimits = DEFAULT_LIMITS,
                  keep_examples: bool = True) -> DatasetFile:
    """Schema-check the bytes of a dataset file (already read) for `method`."""
    if len(data) > limits.max_bytes:
        raise DatasetError(f"dataset {path} has {len(data)} bytes, more than this trainer's limit of "
                           f"{limits.max_bytes} bytes (--max-dataset-mb); split it into several files")
    if fmt == "jsonl":
        return _check(_jsonl_rows(io.BytesIO(data), path, limits), path, method, fmt, limits, keep_examples)
    return _check(_parquet_rows(data, path, limits), path, method, fmt, limits, keep_examples)


class _Tally:
    """What a row iterator saw besides the rows: the sha256 and size of the bytes it read."""

    def __init__(self):
        self.hash = hashlib.sha256()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.size += len(chunk)


def _check(rows: Iterator, path: str, method: str, fmt: str, limits: DatasetLimits,
           keep_examples: bool) -> DatasetFile:
    tally: _Tally = next(rows)  # every row iterator yields its tally first
    examples: list[Example] = []
    errors: list[str] = []
    bad_rows = total = count = 0
    for where, row, problem in rows:
        total += 1
        if total > limits.max_rows:
            raise DatasetError(f"dataset {path} has more than {limits.max_rows} rows, this trainer's limit "
                               "(--max-dataset-rows); split it into several files")
        if problem is None:
            try:
                found = validate_row(row, method, where, max_depth=limits.max_depth)
                count += len(found)
                if keep_examples:
                    examples.extend(found)
                continue
            except DatasetError as exc:
                problem = exc.message
        bad_rows += 1
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(problem if len(problem) <= _PROBLEM_CHARS else problem[:_PROBLEM_CHARS] + "...")
    if errors:
        more = f" (and {bad_rows - len(errors)} more)" if bad_rows > len(errors) else ""
        raise DatasetError(
            f"dataset {path} does not match the {methods.get(method).title} schema: {bad_rows} of {total} rows are invalid: "
            + "; ".join(errors) + more
        )
    if not count:
        raise DatasetError(f"dataset {path} holds no examples")
    return DatasetFile(path=path, format=fmt, sha256=tally.hash.hexdigest(), size_bytes=tally.size,
                       examples=examples, rows=total)


def _read_capped(f, path: str, limits: DatasetLimits) -> bytes:
    """The whole file, refusing it once it passes max_bytes (a file may grow after its size was read)."""
    data = f.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise DatasetError(f"dataset {path} has more than {limits.max_bytes} bytes, this trainer's limit "
                           "(--max-dataset-mb); split it into several files")
    return data


def _jsonl_rows(f, path: str, limits: DatasetLimits) -> Iterator:
    """The tally, then (where, row, problem) for each non-blank line; problem is a parse error or None."""
    tally = _Tally()
    yield tally
    number = 0
    while True:
        line = f.readline(limits.max_line_bytes + 1)
        if not line:
            return
        tally.add(line)
        number += 1
        if tally.size > limits.max_bytes:
            raise DatasetError(f"dataset {path} has more than {limits.max_bytes} bytes, this trainer's limit "
                               "(--max-dataset-mb); split it into several files")
        where = f"{path}:{number}"
        if len(line) > limits.max_line_bytes and not line.endswith(b"\n"):
            while True:  # skip (and hash) the rest of the overlong line
                rest = f.readline(1 << 20)
                tally.add(rest)
                if tally.size > limits.max_bytes:
                    raise DatasetError(f"dataset {path} has more than {limits.max_bytes} bytes, this trainer's "
                                       "limit (--max-dataset-mb); split it into several files")
                if not rest or rest.endswith(b"\n"):
                    break
            yield where, None, (f"{where}: the line is longer than {limits.max_line_bytes} bytes, this trainer's "
                                "limit for one row")
            continue
        if not line.strip():
            continue
        try:
            yield where, json.loads(line), None
        except RecursionError:
            yield where, None, f"{where}: not valid JSON (nested too deeply; rows nest at most {limits.max_depth} levels)"
        except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of more than 4300 digits
            yield where, None, f"{where}: not valid JSON ({str(exc)[:200]})"


#: Rows decoded at a time from a Parquet file (their sizes are checked before they become Python objects).
PARQUET_BATCH_ROWS = 256


def _arrow_row_bytes(array):
    """The bytes of text (and 8 per other value) each row of an Arrow array holds once decoded, as a numpy
    array, computed without decoding it: a dictionary-encoded value counts in every row that refers to it."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        sizes = _arrow_row_bytes(array.dictionary)
        indices = array.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        out = sizes[indices] if len(sizes) else np.zeros(len(array), dtype=np.int64)
        return np.where(array.is_null().to_numpy(zero_copy_only=False), 0, out)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind):
        return pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        flat = array.flatten()
        parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
        return np.bincount(parents, weights=_arrow_row_bytes(flat), minlength=len(array)).astype(np.int64)
    if pa.types.is_struct(kind):
        total = np.zeros(len(array), dtype=np.int64)
        for child in array.flatten():
            total += _arrow_row_bytes(child)
        return total
    return np.full(len(array), 8, dtype=np.int64)


def _parquet_rows(data: bytes, path: str, limits: DatasetLimits) -> Iterator:
    """Rows of a Parquet file, under the caps a JSONL file of the same rows has: each row at most
    max_line_bytes and all rows together at most max_bytes of decoded text. Text columns are read
    dictionary-encoded and every row's decoded size is computed before it becomes Python objects, so a
    small file whose rows repeat one huge value (a few kB that decode to gigabytes) is refused without
    ever being decoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tally = _Tally()
    tally.add(data)
    yield tally
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        metadata = parquet.metadata
        if metadata.num_rows > limits.max_rows:
            raise DatasetError(f"dataset {path} has {metadata.num_rows} rows, more than this trainer's "
                               f"limit of {limits.max_rows} rows (--max-dataset-rows); split it into several files")
        stored = sum(max(0, metadata.row_group(g).column(c).total_uncompressed_size)
                     for g in range(metadata.num_row_groups) for c in range(metadata.num_columns))
        if stored > limits.max_bytes:  # decompressed pages (a dictionary page holds each value once)
            raise DatasetError(f"dataset {path} decompresses to {stored} bytes, more than this trainer's limit of "
                               f"{limits.max_bytes} bytes (--max-dataset-mb); split it into several files")
        text_columns = [parquet.schema.column(i).path for i in range(metadata.num_columns)
                        if parquet.schema.column(i).physical_type == "BYTE_ARRAY"]
        parquet = pq.ParquetFile(io.BytesIO(data), read_dictionary=text_columns)
        number = decoded = 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            sizes = sum((_arrow_row_bytes(column) for column in batch.columns), start=0)
            if isinstance(sizes, int):  # a batch without columns
                sizes = [0] * batch.num_rows
            fits = [i for i, size in enumerate(sizes) if size <= limits.max_line_bytes]
            decoded += int(sum(sizes[i] for i in fits))
            if decoded > limits.max_bytes:
                raise DatasetError(f"dataset {path} holds more than {limits.max_bytes} bytes of decoded rows, this "
                                   "trainer's limit (--max-dataset-mb); split it into several files")
            try:
                rows = iter(batch.take(pa.array(fits, type=pa.int64())).to_pylist() if len(fits) < batch.num_rows
                            else batch.to_pylist())
            except (OverflowError, ValueError) as exc:  # e.g. a date past Python's year 9999
                raise DatasetError(f"dataset {path}: rows {number + 1}-{number + batch.num_rows} hold a value "
                                   f"Python cannot represent ({str(exc)[:200]})") from None
            fitting = set(fits)
            for i in range(batch.num_rows):
                number += 1
                where = f"{path}:row {number}"
                if i not in fitting:
                    yield where, None, (f"{where}: the row holds {int(sizes[i])} bytes once decoded, more than "
                                        f"{limits.max_line_bytes}, this trainer's limit for one row")
                    continue
                yield where, next(rows), None
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"dataset {path} is not a readable Parquet file: {str(exc)[:300]}") from None


def _depth_and_text(value: Any, max_depth: int) -> str | None:
    """A problem with a parsed row's structure or text (too deep, a lone surrogate), or None."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return f"nested deeper than {max_depth} levels"
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError as exc:
                return (f"holds a lone surrogate ({node[exc.start]!r}), which is not Unicode text: the file was "
                        "written with a broken encoder")
        elif isinstance(node, dict):
            stack.extend((key, depth) for key in node)
            stack.extend((item, depth + 1) for item in node.values())
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
    return None


def validate_row(row: Any, method: str, where: str, *, max_depth: int = DEFAULT_LIMITS.max_depth) -> list[Example]:
    """The examples of one row (two for a DPO pair in a KTO job), or DatasetError("where: why").

    The shared fields (messages, meta, depth, text) are checked here; the method's own fields by
    its `examples` (services.trainer.methods)."""

    def fail(reason: str):
        raise DatasetError(f"{where}: {reason}")

    spec = methods.get(method)
    if not isinstance(row, dict):
        fail(f"expected a JSON object, got {type(row).__name__}")
    problem = _depth_and_text(row, max_depth)
    if problem is not None:
        fail(problem)
    messages = _messages(row.get("messages"), fail)
    meta = row.get("meta")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        fail(f"'meta' must be an object when present, got {type(meta).__name__}")

    return spec.examples(RowReader(row, where, messages, meta, fail))


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
            fail(f"messages[{i}].role must be one of {', '.join(ROLES)} (got {quote(role, 40)})")
        if not isinstance(content, str):
            fail(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        fail(f"the last message must be the user's (got {out[-1]['role']!r}): the model answers it")
    return out
