"""Checkpoint verification and adapter-version bookkeeping, without a model."""

from __future__ import annotations

import json
import struct
import threading

import pytest

from services.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.student.adapters import AdapterRegistry, AdapterVersion
from services.student.checkpoints import (
    base_model_matches,
    check_base_model,
    read_checkpoint,
    resolve_directory,
    safetensors_header,
)
from services.student.types import BASE_VERSION, CheckpointSpec
from tests.student.helpers import sha256_file, write_manifest


def fake_safetensors(tensors: dict[str, tuple[int, ...]]) -> bytes:
    header, offset, payload = {}, 0, b""
    for name, shape in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        payload += b"\0" * size
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def make_checkpoint(path, *, manifest=True, version="v1", base_model="smollm2", config=None):
    path.mkdir(parents=True)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
    cfg.update(config or {})
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    (path / "adapter_model.safetensors").write_bytes(
        fake_safetensors({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": (2, 8)}))
    (path / "tokenizer.json").write_text("{}")
    sha = write_manifest(path, version=version, base_model=base_model) if manifest else ""
    return path, sha


# -- checkpoint folders --------------------------------------------------------------------------

def test_a_good_checkpoint_is_read_and_its_manifest_verified(tmp_path):
    path, sha = make_checkpoint(tmp_path / "ck")
    files = read_checkpoint(CheckpointSpec(version="v1", uri=str(path), sha256=sha))
    assert files.manifest_sha256 == sha
    assert files.tensors == {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": ("F32", (2, 8))}
    assert files.base_model_claims == [("manifest.json", "smollm2")]
    # Content identity ignores the manifest: same weights, same digest.
    path2, _ = make_checkpoint(tmp_path / "ck2", manifest=False)
    assert read_checkpoint(CheckpointSpec(version="v1", uri=f"file://{path2}")).digest == files.digest


def test_missing_checkpoint_is_not_found(tmp_path):
    with pytest.raises(NotFound):
        read_checkpoint(CheckpointSpec(version="v1", uri=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound):
        read_checkpoint(CheckpointSpec(version="v1", uri=str(tmp_path / "empty")))


@pytest.mark.parametrize("damage", ["flip_weights", "flip_tokenizer", "delete_listed", "sha_ref", "manifest_json",
                                    "manifest_without_weights", "escape"])
def test_corrupt_checkpoints_are_refused(tmp_path, damage):
    path, sha = make_checkpoint(tmp_path / "ck")
    spec = CheckpointSpec(version="v1", uri=str(path))
    if damage == "flip_weights":
        data = bytearray((path / "adapter_model.safetensors").read_bytes())
        data[-1] ^= 0xFF
        (path / "adapter_model.safetensors").write_bytes(bytes(data))
    elif damage == "flip_tokenizer":
        (path / "tokenizer.json").write_text('{"changed": true}')
    elif damage == "delete_listed":
        (path / "tokenizer.json").unlink()
    elif damage == "sha_ref":
        spec = CheckpointSpec(version="v1", uri=str(path), sha256="0" * 64)
    elif damage == "manifest_json":
        (path / "manifest.json").write_text("{not json")
    elif damage == "manifest_without_weights":
        manifest = json.loads((path / "manifest.json").read_text())
        del manifest["files"]["adapter_model.safetensors"]
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "escape":
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["files"]["../outside"] = "0" * 64
        (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FailedPrecondition):
        read_checkpoint(spec)


def test_sha256_without_manifest_cannot_be_verified(tmp_path):
    path, _ = make_checkpoint(tmp_path / "ck", manifest=False)
    with pytest.raises(FailedPrecondition, match="no manifest.json"):
        read_checkpoint(CheckpointSpec(version="v1", uri=str(path), sha256="a" * 64))


@pytest.mark.parametrize("config", [{"peft_type": "PREFIX_TUNING"}, {"r": 0}, {"task_type": "SEQ_CLS"}])
def test_bad_configs_are_refused(tmp_path, config):
    path, _ = make_checkpoint(tmp_path / "ck", manifest=False, config=config)
    with pytest.raises(FailedPrecondition):
        read_checkpoint(CheckpointSpec(version="v1", uri=str(path)))


@pytest.mark.parametrize("data", [b"", b"\x01\x00", struct.pack("<Q", 10**9) + b"{}",
                                  struct.pack("<Q", 2) + b"{}", struct.pack("<Q", 5) + b"[1,2]",
                                  fake_safetensors({"w": (4, 4)})[:-3]])
def test_malformed_safetensors_are_refused(data):
    with pytest.raises(FailedPrecondition):
        safetensors_header(data)


def test_base_model_names():
    known = ["smollm2", "/root/.cache/leap-serve/models/SmolLM2-135M-Instruct-f32", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert base_model_matches("smollm2", known)
    assert base_model_matches("/elsewhere/SmolLM2-135M-Instruct-f32/", known)
    assert base_model_matches("HuggingFaceTB/SmolLM2-135M-Instruct", known)
    assert not base_model_matches("Qwen/Qwen2.5-0.5B-Instruct", known)


def test_wrong_base_model_is_refused(tmp_path):
    path, _ = make_checkpoint(tmp_path / "ck", base_model="Qwen/Qwen2.5-0.5B-Instruct")
    files = read_checkpoint(CheckpointSpec(version="v1", uri=str(path)))
    with pytest.raises(FailedPrecondition, match="Qwen"):
        check_base_model(files, ["smollm2"])


def test_uri_forms(tmp_path):
    assert resolve_directory("file:///a/b") == resolve_directory("/a/b")
    assert resolve_directory("ck/v1", tmp_path) == tmp_path / "ck" / "v1"
    with pytest.raises(InvalidArgument, match="s3://"):
        resolve_directory("s3://bucket/ck")


def test_manifest_hashes_are_what_the_files_hash_to(tmp_path):
    path, _ = make_checkpoint(tmp_path / "ck")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["files"]["adapter_model.safetensors"] == sha256_file(path / "adapter_model.safetensors")


# -- the registry --------------------------------------------------------------------------------

def record(version, digest=None):
    return AdapterVersion(version=version, handle=f"h-{version}", digest=digest or f"d-{version}",
                          checkpoint=CheckpointSpec(version=version, uri=f"/ck/{version}"))


def test_switch_is_atomic_and_admitted_requests_keep_their_version():
    unloaded: list[str] = []
    registry = AdapterRegistry(unloaded.append, max_adapters=3)
    old = registry.admit()
    assert old.version == BASE_VERSION
    registry.add(record("v1"), make_current=True)
    new = registry.admit()
    assert (old.version, new.version, registry.current) == (BASE_VERSION, "v1", "v1")
    registry.release(old)
    registry.release(new)
    assert unloaded == []


def test_current_and_previous_are_kept_older_versions_unload_when_idle():
    unloaded: list[str] = []
    registry = AdapterRegistry(unloaded.append, max_adapters=3)
    registry.add(record("v1"), make_current=True)
    on_v1 = registry.admit("v1")
    registry.add(record("v2"), make_current=True)
    registry.add(record("v3"), make_current=True)   # v1 is now older than the previous (v2): retires
    assert unloaded == []                           # ... but a request still runs on it
    with pytest.raises(NotFound, match="being unloaded"):
        registry.admit("v1")
    registry.release(on_v1)
    assert unloaded == ["h-v1"]
    current, statuses = registry.snapshot()
    assert current == "v3" and [s.version for s in statuses] == [BASE_VERSION, "v2", "v3"]


def test_staged_versions_are_bounded():
    unloaded: list[str] = []
    registry = AdapterRegistry(unloaded.append, max_adapters=2)
    registry.add(record("v1"), make_current=True)
    registry.add(record("s1"), make_current=False)
    registry.add(record("s2"), make_current=False)  # over the cap: the oldest staged one goes
    assert unloaded == ["h-s1"]
    assert registry.current == "v1"


def test_version_names_are_bound_to_their_content_forever():
    registry = AdapterRegistry(lambda h: None)
    registry.add(record("v1"), make_current=True)
    assert registry.check_new("v1", "d-v1") is not None
    with pytest.raises(AlreadyExists):
        registry.check_new("v1", "other")
    registry.add(record("v2"), make_current=True)
    registry.retire("v1")
    with pytest.raises(AlreadyExists):
        registry.check_new("v1", "other")
    assert registry.check_new("v1", "d-v1") is None  # same content may be loaded again


def test_explicit_unload_rules():
    unloaded: list[str] = []
    registry = AdapterRegistry(unloaded.append)
    registry.add(record("v1"), make_current=True)
    with pytest.raises(FailedPrecondition):
        registry.retire("v1")                        # current
    with pytest.raises(FailedPrecondition):
        registry.retire(BASE_VERSION)
    with pytest.raises(NotFound):
        registry.retire("nope")
    registry.add(record("v2"), make_current=True)
    status = registry.retire("v1")
    assert status.version == "v1" and unloaded == ["h-v1"]


def test_unknown_pinned_version_is_not_found():
    registry = AdapterRegistry(lambda h: None)
    with pytest.raises(NotFound, match="loaded versions: base"):
        registry.admit("v9")


def test_concurrent_admissions_and_switches_never_see_a_missing_version():
    registry = AdapterRegistry(lambda h: None, max_adapters=2)
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            try:
                registry.release(registry.admit())
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(200):
        registry.add(record(f"v{i}"), make_current=True)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert registry.loaded_handles() <= 2
