"""Reading and verifying LoRA checkpoint folders before anything touches the served model (torch-free).

A checkpoint folder, as the trainer writes it:

    <dir>/adapter_config.json        peft config (peft_type LORA, r, target_modules, ...)
    <dir>/adapter_model.safetensors  adapter weights
    <dir>/tokenizer files            optional
    <dir>/manifest.json              optional: {"files": {relative name: sha256}, "base_model": ...,
                                     "version": ..., ...}

Checks, in order (the first failure wins):
- the uri is empty, too long, holds control characters, or names a place outside the adapters root
  (`root`: absolute paths elsewhere, '..', '~', file:// elsewhere, symlinks leading out)
                                                             -> InvalidArgument (one message whatever is there)
- the folder or its adapter files are missing              -> NotFound
- a file is larger than its cap (CheckpointLimits), or not a regular file
                                                             -> FailedPrecondition
- CheckpointRef.sha256 is set and differs from sha256(manifest.json), or is set without a manifest
                                                             -> FailedPrecondition
- a file listed in the manifest is missing or has another sha256, or the manifest does not cover
  the adapter files                                          -> FailedPrecondition
- the config is not a LoRA config / not JSON (including JSON nested too deeply, numbers out of
  range, a rank beyond CheckpointLimits.max_rank)          -> FailedPrecondition
- the weights are not a well-formed safetensors file         -> FailedPrecondition
- the checkpoint names another base model                    -> FailedPrecondition
(Backends check more once the weights are read: the local one, that every tensor fits the served model
and holds finite values of a sane size, and that a probe forward pass stays finite.)

Files are read once; the bytes that were hashed are the bytes that get loaded (no window in which a
file could change between the check and the load). The manifest checks are services.runtime.manifest,
shared with the trainer (which verifies a parent adapter the same way).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, quote
from services.runtime.files import sha256_bytes
from services.runtime.manifest import (
    MANIFEST_FILE,
    check_reference,
    load_json,
    parse_manifest,
    read_file,
    verify_files,
)
from services.runtime.paths import confine
from services.student.types import CheckpointSpec

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# safetensors dtype name -> bytes per element
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class CheckpointLimits:
    """Caps on the files of one checkpoint (the student's --max-adapter-mb sets max_weights_bytes)."""

    max_weights_bytes: int = 2 * 1024 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024
    max_rank: int = 1024


DEFAULT_LIMITS = CheckpointLimits()


@dataclass
class CheckpointFiles:
    """A checkpoint read from disk and verified against its manifest."""

    directory: Path
    config: dict
    config_bytes: bytes
    weights_bytes: bytes
    #: tensor name -> (dtype, shape), from the safetensors header
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    manifest: dict | None
    manifest_sha256: str
    #: Identity of the adapter content: sha256 over the config and weights digests.
    digest: str
    #: (where it came from, base model name) for every place that names the base model.
    base_model_claims: list[tuple[str, str]] = field(default_factory=list)


def resolve_directory(uri: str, root: str | os.PathLike | None = None) -> Path:
    """A local folder from a CheckpointRef.uri: a path (relative to `root`) or a file:// URI.

    With a `root` (a server always has one: --adapters-root), the folder must lie under it
    (services.runtime.paths.confine); without one (tools, tests) any local path is taken as is.
    """
    if not uri:
        raise InvalidArgument("checkpoint.uri is empty; give the adapter folder's path")
    if root is not None:
        return confine(Path(root).resolve(), uri, "checkpoint.uri", root_label="the adapters root (--adapters-root)")
    if "\x00" in uri:
        raise InvalidArgument("checkpoint.uri contains a NUL byte")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise InvalidArgument(
            f"checkpoint.uri {quote(uri)} uses the {quote(scheme, 20)}:// scheme; the local backend loads local "
            "folders (a path or file://). Copy the checkpoint to a shared volume first."
        )
    return Path(uri).expanduser()


def _read(path: Path, max_bytes: int, root: Path | None = None) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; with a `root`, a symlink must stay under it."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        raise FailedPrecondition(f"{path} cannot be resolved") from None
    if root is not None and root not in resolved.parents:
        raise FailedPrecondition(f"{path} is a symlink that leads outside the adapters root")
    return read_file(resolved, max_bytes, shown=path)


def safetensors_header(data: bytes, name: str = WEIGHTS_FILE) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Validate a safetensors file's structure and return {tensor: (dtype, shape)}.

    Raises FailedPrecondition for a truncated or malformed file (without needing torch).
    """
    if len(data) < 8:
        raise FailedPrecondition(f"{name} is truncated ({len(data)} bytes): not a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len <= 0 or header_len > _MAX_HEADER or 8 + header_len > len(data):
        raise FailedPrecondition(f"{name} has an invalid header length: not a safetensors file, or truncated")
    header = load_json(data[8:8 + header_len], f"{name} (its header)")
    if not isinstance(header, dict):
        raise FailedPrecondition(f"{name} has a corrupt header (not a JSON object)")
    payload = len(data) - 8 - header_len
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            shape = tuple(_exact_int(d) for d in info["shape"])
            begin, end = (_exact_int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FailedPrecondition(f"{name}: tensor {quote(key)} has a malformed header entry") from exc
        if not isinstance(dtype, str) or dtype not in _DTYPE_SIZES:
            raise FailedPrecondition(f"{name}: tensor {quote(key)} has unknown dtype {quote(dtype, 20)}")
        count = 1
        for dim in shape:
            if dim < 0:
                raise FailedPrecondition(f"{name}: tensor {quote(key)} has a negative dimension")
            count *= dim
        if not 0 <= begin <= end <= payload or end - begin != count * _DTYPE_SIZES[dtype]:
            raise FailedPrecondition(
                f"{name}: tensor {quote(key)} lies outside the file or has the wrong size; the file is truncated or "
                "corrupt"
            )
        tensors[key] = (dtype, shape)
    if not tensors:
        raise FailedPrecondition(f"{name} holds no tensors")
    return tensors


def _exact_int(value) -> int:
    """An integer from a JSON header (1e400, 2.5, "3" and true are not dimensions or offsets)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("not an integer")
    return value


def read_checkpoint(spec: CheckpointSpec, root: str | os.PathLike | None = None,
                    limits: CheckpointLimits = DEFAULT_LIMITS) -> CheckpointFiles:
    """Read and verify a checkpoint folder (see the module docstring for the checks)."""
    directory = resolve_directory(spec.uri, root)
    root = Path(root).resolve() if root is not None else None
    if not directory.is_dir():
        raise NotFound(f"checkpoint folder {directory} does not exist (checkpoint {quote(spec.version)})")
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file():
        raise NotFound(f"{directory} has no {CONFIG_FILE}: not a peft adapter folder")
    if not weights_path.is_file():
        if (directory / "adapter_model.bin").exists():
            raise FailedPrecondition(
                f"{directory} holds adapter_model.bin (pickle); only {WEIGHTS_FILE} is loaded. "
                "Re-save the adapter with safe_serialization=True."
            )
        raise NotFound(f"{directory} has no {WEIGHTS_FILE}")

    manifest_path = directory / MANIFEST_FILE
    manifest: dict | None = None
    manifest_sha = ""
    if manifest_path.is_file():
        manifest_bytes = _read(manifest_path, limits.max_json_bytes, root)
        manifest_sha = sha256_bytes(manifest_bytes)
        check_reference(spec.sha256, manifest_sha, f"checkpoint {directory}")
        manifest = parse_manifest(manifest_bytes, str(manifest_path))
    else:
        check_reference(spec.sha256, None, f"checkpoint {directory}")

    config_bytes = _read(config_path, limits.max_json_bytes, root)
    weights_bytes = _read(weights_path, limits.max_weights_bytes, root)
    if manifest is not None:
        verify_files(directory, manifest, required=(CONFIG_FILE, WEIGHTS_FILE),
                     already_read={CONFIG_FILE: config_bytes, WEIGHTS_FILE: weights_bytes})

    config = load_json(config_bytes, str(config_path))
    if not isinstance(config, dict):
        raise FailedPrecondition(f"{config_path} is not a JSON object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise FailedPrecondition(f"{config_path} describes a {quote(peft_type or 'unknown', 40)} adapter; "
                                 "only LoRA is served")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 < rank <= limits.max_rank:
        raise FailedPrecondition(f"{config_path} has an invalid rank r={quote(rank, 24)} "
                                 f"(a LoRA rank is in [1, {limits.max_rank}])")
    pattern = config.get("rank_pattern") or {}
    if not isinstance(pattern, dict) or any(isinstance(r, bool) or not isinstance(r, int) or not 0 < r <= limits.max_rank
                                            for r in pattern.values()):
        raise FailedPrecondition(f"{config_path} has an invalid rank_pattern (ranks are in [1, {limits.max_rank}])")
    task_type = config.get("task_type")
    if task_type not in (None, "CAUSAL_LM"):
        raise FailedPrecondition(f"{config_path} has task_type {quote(task_type, 40)}; the student needs CAUSAL_LM")

    tensors = safetensors_header(weights_bytes, str(weights_path))
    digest = sha256_bytes((sha256_bytes(config_bytes) + sha256_bytes(weights_bytes)).encode())

    claims: list[tuple[str, str]] = []
    if spec.base_model:
        claims.append(("checkpoint.base_model", spec.base_model))
    if manifest is not None and manifest.get("base_model"):
        if not isinstance(manifest["base_model"], str) or len(manifest["base_model"]) > 1024:
            raise FailedPrecondition(f"{manifest_path}: base_model is not a model name")
        claims.append((MANIFEST_FILE, manifest["base_model"]))
    return CheckpointFiles(
        directory=directory, config=config, config_bytes=config_bytes, weights_bytes=weights_bytes,
        tensors=tensors, manifest=manifest, manifest_sha256=manifest_sha, digest=digest,
        base_model_claims=claims,
    )


def _norm_name(name: str) -> str:
    return name.strip().rstrip("/").lower()


def base_model_matches(claimed: str, known_names: Iterable[str]) -> bool:
    """True when `claimed` names the served base model: same name, same folder, or same last path part."""
    known = {_norm_name(n) for n in known_names if n}
    claimed_norm = _norm_name(claimed)
    if not claimed_norm or claimed_norm in known:
        return True
    tail = claimed_norm.rsplit("/", 1)[-1]
    return tail in {k.rsplit("/", 1)[-1] for k in known}


def check_base_model(files: CheckpointFiles, known_names: Iterable[str]) -> None:
    """FailedPrecondition unless every explicit base-model claim names the served model.

    adapter_config.json's `base_model_name_or_path` is a machine-specific path written by peft; it is
    not checked by name (the weight shapes are checked against the model instead).
    """
    known = list(known_names)
    for source, claimed in files.base_model_claims:
        if not base_model_matches(claimed, known):
            raise FailedPrecondition(
                f"the adapter was trained on {quote(claimed)} ({source}), but this server serves "
                f"{known[0] if known else 'another model'!r}; load it on a server with that base model"
            )
