"""Paths sent by clients, confined to a service's root directory.

    root = Path(args.runs_dir).resolve()
    path = confine(root, request.run_dir, "run_dir")     # an absolute Path under root, symlinks resolved

A client names files by path (datasets, run directories, adapter folders); a service must only ever
read or write under its own root. `confine` accepts a path relative to the root, an absolute path
under it, or a `file://` URI of one, and refuses with INVALID_ARGUMENT:

- empty values, NUL and other control characters, paths longer than MAX_PATH_CHARS characters or with
  a part longer than the file system allows (checked before the file system is asked anything);
- other URI schemes (s3://, http://): the service reads mounted storage only;
- home-relative paths (`~`, `~user`): they name a place outside the root by construction;
- anything that leaves the root: absolute paths elsewhere, `..` parts, and symlinks (inside the
  root) that lead out of it: the resolved path must lie under the resolved root.

A refused path gets one message whatever lies outside the root (existing or not, file or folder,
readable or not), so a client cannot probe the server's file system through the errors.
"""

from __future__ import annotations

import os
from pathlib import Path

from services.runtime.errors import InvalidArgument, quote

#: Longest path a client may send (Linux allows 4096 bytes; a path into a run directory is far shorter).
MAX_PATH_CHARS = 1024
#: Longest single part of a path, in bytes (NAME_MAX of common Linux file systems).
MAX_PART_BYTES = 255


def check_text_field(value: str, what: str, max_chars: int = MAX_PATH_CHARS) -> None:
    """INVALID_ARGUMENT unless `value` is at most `max_chars` characters without control characters."""
    if len(value) > max_chars:
        raise InvalidArgument(f"{what} is {len(value)} characters long; at most {max_chars} are accepted")
    bad = next((ch for ch in value if ord(ch) < 32 or ord(ch) == 127), None)
    if bad is not None:
        name = "a NUL byte" if bad == "\x00" else f"the control character {bad!r}"
        raise InvalidArgument(f"{what} contains {name}; paths and names are plain printable text")


def confine(root: str | os.PathLike, value: str, what: str, *, root_label: str = "the runs directory") -> Path:
    """The absolute, symlink-resolved path that `value` names under `root` (see the module docstring).

    `root` must already be resolved (Path(root).resolve() once, when the service starts). `what` names
    the request field in messages; `root_label` names the root for the client ("the runs directory",
    "the adapters root"), without revealing where it lies.
    """
    root = Path(root)
    text = value.strip()
    if not text:
        raise InvalidArgument(f"{what} is empty")
    check_text_field(text, what)
    if text.startswith("file://"):
        text = text[len("file://"):]
        if not text.startswith("/"):  # file://host/path: a remote file
            raise InvalidArgument(f"{what} {quote(value)} names a file on another host; use file:///path or a path")
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise InvalidArgument(f"{what} uses the {quote(scheme, 20)}:// scheme, which this service cannot read; "
                              "mount the storage and give a path under " + root_label)
    if text.startswith("~"):
        raise InvalidArgument(f"{what} {quote(value)} is home-relative (~); give a path under {root_label}")
    parts = Path(text).parts
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_PART_BYTES for part in parts):
        raise InvalidArgument(f"{what} has a path part longer than {MAX_PART_BYTES} bytes")

    outside = InvalidArgument(
        f"{what} {quote(value)} is outside {root_label}; give a path under it (relative paths are taken from there)")
    candidate = Path(text) if text.startswith("/") else root / text
    # First without the file system: '..' parts and absolute paths elsewhere never touch it.
    if not _within(Path(os.path.normpath(candidate)), root):
        raise outside
    try:
        resolved = candidate.resolve()  # follows symlinks inside the root (strict=False: need not exist)
    except (OSError, RuntimeError) as exc:  # a symlink loop, a part that is not a directory
        raise InvalidArgument(f"{what} {quote(value)} cannot be resolved under {root_label} "
                              f"({type(exc).__name__})") from None
    if not _within(resolved, root):  # a symlink inside the root that leads out of it
        raise outside
    return resolved


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
