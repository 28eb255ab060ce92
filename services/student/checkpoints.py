"""Reading and verifying LoRA checkpoint folders before anything touches the served model (torch-free).

A checkpoint folder, as the trainer writes it:

    <dir>/adapter_config.json        peft config (peft_type LORA, r, target_modules, ...)
    <dir>/adapter_model.safetensors  adapter weights
    <dir>/tokenizer files            optional
    <dir>/manifest.json              optional: {"files": {relative name: sha256}, "base_model": ...,
                                     "version": ..., ...}

Checks, in order (the first failure wins):
- the folder or its adapter files are missing              -> NotFound
- CheckpointRef.sha256 is set and differs from sha256(manifest.json), or is set without a manifest
                                                             -> FailedPrecondition
- a file listed in the manifest is missing or has another sha256, or the manifest does not cover
  the adapter files                                          -> FailedPrecondition
- the config is not a LoRA config / not JSON                 -> FailedPrecondition
- the weights are not a well-formed safetensors file         -> FailedPrecondition
- the checkpoint names another base model                    -> FailedPrecondition

Files are read once; the bytes that were hashed are the bytes that get loaded (no window in which a
file could change between the check and the load).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.student.types import CheckpointSpec

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "manifest.json"

# safetensors dtype name -> bytes per element
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_MAX_HEADER = 100 * 1024 * 1024


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
    """A local folder from a CheckpointRef.uri: a path (relative to `root`) or a file:// URI."""
    if not uri:
        raise InvalidArgument("checkpoint.uri is empty; give the adapter folder's path")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise InvalidArgument(
            f"checkpoint.uri {uri!r} uses the {scheme}:// scheme; the local backend loads local folders "
            "(a path or file://). Copy the checkpoint to a shared volume first."
        )
    path = Path(uri).expanduser()
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"{path} does not exist") from exc
    except OSError as exc:
        raise FailedPrecondition(f"cannot read {path}: {exc}") from exc


def safetensors_header(data: bytes, name: str = WEIGHTS_FILE) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Validate a safetensors file's structure and return {tensor: (dtype, shape)}.

    Raises FailedPrecondition for a truncated or malformed file (without needing torch).
    """
    if len(data) < 8:
        raise FailedPrecondition(f"{name} is truncated ({len(data)} bytes): not a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len <= 0 or header_len > _MAX_HEADER or 8 + header_len > len(data):
        raise FailedPrecondition(f"{name} has an invalid header length: not a safetensors file, or truncated")
    try:
        header = json.loads(data[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FailedPrecondition(f"{name} has a corrupt header: {exc}") from exc
    if not isinstance(header, dict):
        raise FailedPrecondition(f"{name} has a corrupt header (not a JSON object)")
    payload = len(data) - 8 - header_len
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FailedPrecondition(f"{name}: tensor {key!r} has a malformed header entry") from exc
        if dtype not in _DTYPE_SIZES:
            raise FailedPrecondition(f"{name}: tensor {key!r} has unknown dtype {dtype!r}")
        count = 1
        for dim in shape:
            count *= dim
        if not 0 <= begin <= end <= payload or end - begin != count * _DTYPE_SIZES[dtype]:
            raise FailedPrecondition(
                f"{name}: tensor {key!r} lies outside the file or has the wrong size; the file is truncated or corrupt"
            )
        tensors[key] = (dtype, shape)
    if not tensors:
        raise FailedPrecondition(f"{name} holds no tensors")
    return tensors


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
        if not isinstance(rel, str) or not isinstance(expected, str):
            raise FailedPrecondition(f"{directory / MANIFEST_FILE}: malformed entry {rel!r}")
        target = (directory / rel).resolve()
        if root != target and root not in target.parents:
            raise FailedPrecondition(f"{directory / MANIFEST_FILE} lists {rel!r}, which lies outside the checkpoint")
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
                f"{target} does not match its manifest (sha256 {actual[:12]}..., manifest says {expected[:12]}...): "
                "the checkpoint is corrupt or was modified"
            )


def read_checkpoint(spec: CheckpointSpec, root: str | os.PathLike | None = None) -> CheckpointFiles:
    """Read and verify a checkpoint folder (see the module docstring for the checks)."""
    directory = resolve_directory(spec.uri, root)
    if not directory.is_dir():
        raise NotFound(f"checkpoint folder {directory} does not exist (checkpoint {spec.version!r})")
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
        manifest_bytes = _read(manifest_path)
        manifest_sha = sha256_bytes(manifest_bytes)
        if spec.sha256 and spec.sha256.lower() != manifest_sha:
            raise FailedPrecondition(
                f"{manifest_path} has sha256 {manifest_sha[:12]}..., the checkpoint reference expects "
                f"{spec.sha256[:12]}...: refusing a checkpoint that is not the one that was asked for"
            )
        try:
            manifest = json.loads(manifest_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FailedPrecondition(f"{manifest_path} is not valid JSON: {exc}") from exc
        if not isinstance(manifest, dict):
            raise FailedPrecondition(f"{manifest_path} is not a JSON object")
    elif spec.sha256:
        raise FailedPrecondition(
            f"the checkpoint reference carries a sha256 but {directory} has no {MANIFEST_FILE} to verify it against"
        )

    config_bytes = _read(config_path)
    weights_bytes = _read(weights_path)
    if manifest is not None:
        _verify_manifest(directory, manifest, {CONFIG_FILE: config_bytes, WEIGHTS_FILE: weights_bytes})

    try:
        config = json.loads(config_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FailedPrecondition(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise FailedPrecondition(f"{config_path} is not a JSON object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise FailedPrecondition(f"{config_path} describes a {peft_type or 'unknown'} adapter; only LoRA is served")
    rank = config.get("r")
    if not isinstance(rank, int) or rank <= 0:
        raise FailedPrecondition(f"{config_path} has an invalid rank r={rank!r}")
    task_type = config.get("task_type")
    if task_type not in (None, "CAUSAL_LM"):
        raise FailedPrecondition(f"{config_path} has task_type {task_type!r}; the student needs CAUSAL_LM")

    tensors = safetensors_header(weights_bytes, str(weights_path))
    digest = sha256_bytes((sha256_bytes(config_bytes) + sha256_bytes(weights_bytes)).encode())

    claims: list[tuple[str, str]] = []
    if spec.base_model:
        claims.append(("checkpoint.base_model", spec.base_model))
    if manifest is not None and manifest.get("base_model"):
        claims.append((MANIFEST_FILE, str(manifest["base_model"])))
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
                f"the adapter was trained on {claimed!r} ({source}), but this server serves "
                f"{known[0] if known else 'another model'!r}; load it on a server with that base model"
            )
