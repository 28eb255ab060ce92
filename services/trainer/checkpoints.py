"""Versioned, crash-safe checkpoint directories.

Layout: ``<run_dir>/checkpoints/<name>/v<k>/`` holding the adapter (adapter_config.json,
adapter_model.safetensors), the tokenizer with its chat template, and ``manifest.json``::

    {"name", "version", "parent" (the parent CheckpointRef or null), "base_model", "method",
     "dataset_sha256" ({path: sha256}), "hyper_parameters", "metrics", "files" ({relative: sha256}),
     "created_at"}

A checkpoint is written into a temp directory beside its final path, fsynced and renamed
(services.runtime.files.atomic_directory): a killed trainer leaves at most a hidden ``.v<k>.*.partial``
directory, never a half-written ``v<k>``. The version is the next free one at write time; a version is
never overwritten. A checkpoint's identity (CheckpointRef.sha256) is the sha256 of its manifest bytes,
and the manifest lists the sha256 of every other file. Reading and verifying a manifest is
services.runtime.manifest, which the student's LoadAdapter uses too.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from services.runtime import manifest as manifest_files
from services.runtime.errors import FailedPrecondition, NotFound, ServiceError
from services.runtime.files import atomic_directory, sha256_bytes, sha256_file
from services.trainer.jobs import CheckpointRef

log = logging.getLogger("leap.trainer.checkpoints")

MANIFEST = manifest_files.MANIFEST_FILE
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_VERSION = re.compile(r"^v(\d+)$")
_PARTIAL = re.compile(r"^\.v\d+\..*\.partial$")
_write_lock = threading.Lock()


def checkpoint_dir(run_dir: str | os.PathLike, name: str) -> Path:
    return Path(run_dir) / "checkpoints" / name


def existing_versions(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _VERSION.match(p.name)) and p.is_dir())


def next_version(directory: Path) -> int:
    versions = existing_versions(directory)
    return (versions[-1] + 1) if versions else 1


def checkpoint_of_job(run_dir: str, name: str, job_id: str) -> CheckpointRef | None:
    """The finished checkpoint a job wrote (its manifest names the job, its files match the manifest),
    newest first; None when there is none. A trainer that died between renaming a checkpoint into place
    and recording its job as succeeded finds the job's work here after its restart."""
    directory = checkpoint_dir(run_dir, name)
    for version in reversed(existing_versions(directory)):
        path = directory / f"v{version}"
        try:
            found = read_manifest(path)
            if found is None or found[0].get("job_id") != job_id:
                continue
            manifest, digest = found
            verify_files(path, manifest)
        except (OSError, ValueError, ServiceError):
            continue
        return CheckpointRef(name=name, version=f"v{version}", uri=str(path.resolve()), sha256=digest,
                             base_model=str(manifest.get("base_model", "")))
    return None


def remove_partials(directory: Path) -> list[Path]:
    """Delete leftover temp directories (``.v<k>.*.partial``) of checkpoints that were never finished."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        if _PARTIAL.match(path.name) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def write_checkpoint(run_dir: str, name: str, *, save: Callable[[Path], None], manifest: dict,
                     attempts: int = 8) -> CheckpointRef:
    """Write a new version of checkpoint `name` and return its reference.

    `save(tmp_dir)` writes the adapter and tokenizer files; the manifest (name, version, files,
    created_at added here) is written last. Another writer taking the same version number between
    our scan and our rename makes us retry with the next number.
    """
    directory = checkpoint_dir(run_dir, name)
    directory.mkdir(parents=True, exist_ok=True)
    with _write_lock:
        for _ in range(attempts):
            version = next_version(directory)
            final = directory / f"v{version}"
            try:
                with atomic_directory(final) as tmp:
                    save(tmp)
                    files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
                    if ADAPTER_CONFIG not in files:
                        raise RuntimeError(f"the adapter was not saved: {ADAPTER_CONFIG} is missing")
                    body = dict(manifest, name=name, version=f"v{version}", files=files, created_at=time.time())
                    data = (json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
                    (tmp / MANIFEST).write_bytes(data)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and final.exists():
                    continue
                raise
            return CheckpointRef(name=name, version=f"v{version}", uri=str(final.resolve()),
                                 sha256=sha256_bytes(data), base_model=manifest.get("base_model", ""))
    raise FailedPrecondition(f"could not allocate a new version under {directory} after {attempts} attempts")


def read_manifest(path: str | os.PathLike) -> tuple[dict, str] | None:
    """(manifest, sha256 of its bytes) of a checkpoint directory, or None when it has no manifest."""
    return manifest_files.read_manifest(path)


def check_parent(ref: CheckpointRef) -> dict | None:
    """Check that a parent adapter exists and matches its reference; return its manifest (or None).

    Missing directory or adapter -> NOT_FOUND; a sha256 that does not match the manifest (or that
    cannot be checked, without one) -> FAILED_PRECONDITION (services.runtime.manifest).
    """
    path = Path(ref.uri)
    if not path.is_dir():
        raise NotFound(f"parent checkpoint {ref.uri} does not exist")
    if not (path / ADAPTER_CONFIG).is_file():
        raise NotFound(f"parent checkpoint {ref.uri} holds no LoRA adapter ({ADAPTER_CONFIG} is missing)")
    found = read_manifest(path)
    manifest, digest = found if found is not None else (None, None)
    manifest_files.check_reference(ref.sha256, digest, f"parent checkpoint {ref.uri}")
    return manifest


def verify_files(path: str | os.PathLike, manifest: dict) -> None:
    """FailedPrecondition when the manifest does not list the adapter, or a file it lists is missing,
    outside the checkpoint or changed (services.runtime.manifest.verify_files)."""
    manifest_files.verify_files(path, manifest, required=(ADAPTER_CONFIG, ADAPTER_WEIGHTS))
