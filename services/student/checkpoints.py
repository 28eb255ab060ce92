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
file could change between the check and the load).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, quote
from services.runtime.paths import confine
from services.student.types import CheckpointSpec

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "manifest.json"

# safetensors dtype name -> bytes per element
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_MAX_HEADER = 100 * 1024 * 1024
#: JSON nesting accepted in adapter_config.json, manifest.json and the safetensors header.
_MAX_JSON_DEPTH = 32


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


def _load_json(data: bytes, where: str) -> object:
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
        if depth > _MAX_JSON_DEPTH:
            raise FailedPrecondition(f"{where} is nested deeper than {_MAX_JSON_DEPTH} levels: not a checkpoint file")
        if isinstance(node, dict):
            stack.extend((item, depth + 1) for item in node.values())
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
    return value


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path, max_bytes: int, root: Path | None = None) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; with a `root`, a symlink must stay under it."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        raise FailedPrecondition(f"{path} cannot be resolved") from None
    if root is not None and root not in resolved.parents:
        raise FailedPrecondition(f"{path} is a symlink that leads outside the adapters root")
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
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


def safetensors_header(data: bytes, name: str = WEIGHTS_FILE) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Validate a safetensors file's structure and return {tensor: (dtype, shape)}.

    Raises FailedPrecondition for a truncated or malformed file (without needing torch).
    """
    if len(data) < 8:
        raise FailedPrecondition(f"{name} is truncated ({len(data)} bytes): not a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len <= 0 or header_len > _MAX_HEADER or 8 + header_len > len(data):
        raise FailedPrecondition(f"{name} has an invalid header length: not a safetensors file, or truncated")
    header = _load_json(data[8:8 + header_len], f"{name} (its header)")
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


def _verify_manifest(directory: Path, manifest: dict, already_read: dict[str, bytes]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise FailedPrecondition(f"{directory / MANIFEST_FILE} has no 'files' map of relative name -> sha256")
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in files:
            raise FailedPrecondition(
                f"{directory / MANIFEST_FILE} does not list {required}; the adapter cannot be verified"
            )
    root = directory.resolve()
    for rel, expected in files.items():
        if not isinstance(rel, str) or not isinstance(expected, str) or "\x00" in rel or len(rel) > 1024:
            raise FailedPrecondition(f"{directory / MANIFEST_FILE}: malformed entry {quote(rel)}")
        try:
            target = (directory / rel).resolve()
        except (OSError, RuntimeError):
            raise FailedPrecondition(f"{directory / MANIFEST_FILE} lists {quote(rel)}, which cannot be resolved") from None
        if root != target and root not in target.parents:
            raise FailedPrecondition(f"{directory / MANIFEST_FILE} lists {quote(rel)}, which lies outside the checkpoint")
        if rel in already_read:
            actual = sha256_bytes(already_read[rel])
        else:
            if not target.is_file():
                raise FailedPrecondition(f"{target} is listed in the manifest but missing: incomplete checkpoint")
            h = hashlib.sha256()
            with open(target, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            actual = h.hexdigest()
        if actual != expected.lower():
            raise FailedPrecondition(
                f"{target} does not match its manifest (sha256 {actual[:12]}..., manifest says {quote(expected[:12])}...): "
                "the checkpoint is corrupt or was modified"
            )


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
        if spec.sha256 and spec.sha256.lower() != manifest_sha:
            raise FailedPrecondition(
                f"{manifest_path} has sha256 {manifest_sha[:12]}..., the checkpoint reference expects "
                f"{quote(spec.sha256[:12])}...: refusing a checkpoint that is not the one that was asked for"
            )
        manifest = _load_json(manifest_bytes, str(manifest_path))
        if not isinstance(manifest, dict):
            raise FailedPrecondition(f"{manifest_path} is not a JSON object")
    elif spec.sha256:
        raise FailedPrecondition(
            f"the checkpoint reference carries a sha256 but {directory} has no {MANIFEST_FILE} to verify it against"
        )

    config_bytes = _read(config_path, limits.max_json_bytes, root)
    weights_bytes = _read(weights_path, limits.max_weights_bytes, root)
    if manifest is not None:
        _verify_manifest(directory, manifest, {CONFIG_FILE: config_bytes, WEIGHTS_FILE: weights_bytes})

    config = _load_json(config_bytes, str(config_path))
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
