"""Checkpoint manifests: the one reader and verifier the trainer and the student share (torch-free).

A checkpoint directory holds ``manifest.json`` beside its files::

    {"files": {relative name: sha256, ...}, "base_model": ..., "version": ..., ...}

A checkpoint's identity (CheckpointRef.sha256) is the sha256 of the manifest's bytes, and the
manifest lists the sha256 of every other file. Checks (every one a FailedPrecondition, because the
files on disk are not in the state the caller's reference needs):

- the manifest is larger than its cap, not a regular file, not JSON, nested deeper than
  MAX_JSON_DEPTH, or not a JSON object;
- the reference carries a sha256 that differs from the manifest's, or carries one and there is no
  manifest to check it against;
- `files` is missing, empty or not a map of name -> sha256; an entry is malformed (not text, a NUL,
  longer than MAX_NAME_CHARS); a listed name lies outside the checkpoint (``..``, an absolute path,
  a symlink out); a file the caller requires (the adapter's config and weights) is not listed;
- a listed file is missing, or its sha256 differs from the manifest's.

A missing checkpoint directory or adapter file is the caller's NOT_FOUND, not checked here.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Iterable, Mapping

from services.runtime.errors import FailedPrecondition, NotFound, quote
from services.runtime.files import sha256_bytes

MANIFEST_FILE = "manifest.json"
#: JSON nesting accepted in a manifest (and in the other JSON files of a checkpoint).
MAX_JSON_DEPTH = 32
#: Largest manifest read (it lists file names and digests, a few kB in practice).
MAX_MANIFEST_BYTES = 1024 * 1024
#: Longest file name a manifest may list.
MAX_NAME_CHARS = 1024


def load_json(data: bytes, where: str) -> object:
    """Parsed JSON of a checkpoint file, or FailedPrecondition (never a RecursionError or a stack trace)."""
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise FailedPrecondition(f"{where} is nested too deeply to be a checkpoint file") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise FailedPrecondition(f"{where} is not valid JSON: {str(exc)[:200]}") from None
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise FailedPrecondition(f"{where} is nested deeper than {MAX_JSON_DEPTH} levels: not a checkpoint file")
        if isinstance(node, dict):
            stack.extend((item, depth + 1) for item in node.values())
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
    return value


def parse_manifest(data: bytes, where: str) -> dict:
    """The manifest of its bytes (`where` names the file in errors)."""
    manifest = load_json(data, where)
    if not isinstance(manifest, dict):
        raise FailedPrecondition(f"{where} is not a valid manifest (not a JSON object)")
    return manifest


def read_file(path: Path, max_bytes: int, shown: Path | None = None) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (a symlink at `path` itself is not followed).

    Errors name `shown` (default: `path`), e.g. the path a client gave rather than what it resolved to."""
    opened, path = path, shown if shown is not None else path
    try:
        fd = os.open(opened, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None
    except OSError as exc:
        raise FailedPrecondition(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise FailedPrecondition(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise FailedPrecondition(f"{path} has {info.st_size} bytes, more than the {max_bytes} accepted for it")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FailedPrecondition(f"{path} has more than the {max_bytes} bytes accepted for it")
    return data


def read_manifest(directory: str | os.PathLike, max_bytes: int = MAX_MANIFEST_BYTES) -> tuple[dict, str] | None:
    """(manifest, sha256 of its bytes) of a checkpoint directory, or None when it has no manifest."""
    path = Path(directory) / MANIFEST_FILE
    if not path.exists() and not path.is_symlink():
        return None
    data = read_file(path, max_bytes)
    return parse_manifest(data, str(path)), sha256_bytes(data)


def check_reference(expected_sha256: str, manifest_sha256: str | None, what: str) -> None:
    """FailedPrecondition unless a reference's sha256 (empty: none) matches the manifest's
    (None: the checkpoint has no manifest). `what` names the checkpoint in messages."""
    if not expected_sha256:
        return
    if manifest_sha256 is None:
        raise FailedPrecondition(f"{what} has no {MANIFEST_FILE}, so the reference's sha256 "
                                 f"{quote(expected_sha256, 64)} cannot be verified")
    if expected_sha256.lower() != manifest_sha256:
        raise FailedPrecondition(
            f"{what} does not match its reference: its {MANIFEST_FILE} has sha256 {manifest_sha256}, the reference "
            f"expects {quote(expected_sha256, 64)}; refusing a checkpoint that is not the one asked for")


def verify_files(directory: str | os.PathLike, manifest: Mapping, *, required: Iterable[str] = (),
                 already_read: Mapping[str, bytes] | None = None) -> None:
    """FailedPrecondition unless every file the manifest lists is inside the checkpoint, present and
    unchanged, and the `required` names are listed. Files in `already_read` (name -> bytes) are
    hashed from those bytes, so what was verified is what the caller loads."""
    root = Path(directory)
    where = f"checkpoint {root}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise FailedPrecondition(f"{where}: its {MANIFEST_FILE} has no 'files' map of relative name -> sha256")
    for name in required:
        if name not in files:
            raise FailedPrecondition(f"{where}: its {MANIFEST_FILE} does not list {name}; the adapter cannot be verified")
    already_read = already_read or {}
    try:
        resolved_root = root.resolve()
    except (OSError, RuntimeError):
        raise FailedPrecondition(f"{where} cannot be resolved") from None
    for name, expected in files.items():
        if not isinstance(name, str) or not isinstance(expected, str) or "\x00" in name or len(name) > MAX_NAME_CHARS:
            raise FailedPrecondition(f"{where}: its {MANIFEST_FILE} has a malformed 'files' entry {quote(name, 60)}")
        file = root / name
        try:
            inside = resolved_root in file.resolve().parents
        except (OSError, RuntimeError):
            inside = False
        if not inside:
            raise FailedPrecondition(f"{where}: its {MANIFEST_FILE} lists {quote(name)}, which lies outside the "
                                     "checkpoint")
        if name in already_read:
            actual = sha256_bytes(already_read[name])
        else:
            if not file.is_file():
                raise FailedPrecondition(f"{where} is incomplete: {quote(name)} is listed in its {MANIFEST_FILE} "
                                         "but missing")
            h = hashlib.sha256()
            with open(file, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            actual = h.hexdigest()
        if actual != expected.lower():
            raise FailedPrecondition(
                f"{where} was modified after it was written: {quote(name)} has sha256 {actual[:12]}..., its "
                f"{MANIFEST_FILE} says {quote(expected[:12])}...")
