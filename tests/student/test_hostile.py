"""The local student against hostile and careless clients (issue 20), over real gRPC with the real model.

- LoadAdapter: a 5,000-character uri, NUL bytes, paths outside --adapters-root (refused with one
  message whatever is there), deeply nested JSON in the safetensors header, adapter_config.json or
  manifest.json, NaN and 1e30 weights: refused with INVALID_ARGUMENT or FAILED_PRECONDITION and a
  bounded message, never INTERNAL; the current version keeps serving;
- a row whose scores turn non-finite fails alone: the other rows of its forward batch (here a
  concurrent request on the base model) still get their answers;
- a cancelled Act leaves the scheduler (its rows stop generating and free their batch slots);
- held Acts do not starve Health, GetModelInfo and ListAdapters.

One model server for the whole module; generations are short except where a test needs long ones.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leap.v1 import student_pb2
from services.runtime.config import ServerConfig
from services.student.backends.local import LocalBackend, LocalOptions
from services.student.client import StudentClient, act_item
from services.student.server import start_in_background
from services.student.service import StudentLimits, StudentService
from tests.student.helpers import STATES, copy_checkpoint, write_manifest

pytestmark = pytest.mark.model

MAX_DETAILS = 1200
LONG = 512  # tokens of a "long" call: at temperature 5 a row never stops early (no eos, no ACTION line)


def wait_until(predicate, timeout: float, what: str):
    import time

    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def untrained_adapter(out_dir: Path, shared) -> Path:
    """A fresh LoRA adapter (peft's initialisation: B = 0) saved as the trainer saves one, plus a manifest.

    Training is not needed here (these tests are about what the server accepts and how it fails), and
    skipping it keeps the module fast on a loaded CPU.
    """
    import warnings

    from peft import LoraConfig, get_peft_model

    with shared.borrow() as (model, tokenizer, _), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      task_type="CAUSAL_LM"))
        peft_model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    write_manifest(out_dir, version="v1", base_model="smollm2")
    return out_dir


@pytest.fixture(scope="module")
def root(tmp_path_factory, smollm2):
    path = untrained_adapter(tmp_path_factory.mktemp("adapter") / "fresh", smollm2)
    root = tmp_path_factory.mktemp("adapters-root")
    copy_checkpoint(path, root / "good")
    outside = tmp_path_factory.mktemp("elsewhere")
    copy_checkpoint(path, outside / "adapter")
    (root / "escape").symlink_to(outside / "adapter")
    return SimpleNamespace(root=root, outside=outside)


@pytest.fixture(scope="module")
def student(root, smollm2):
    with smollm2.borrow() as loaded:
        yield from _student(root, smollm2.loader(loaded))


def _student(root, loader):
    backend = LocalBackend(LocalOptions(max_batch_size=8, max_wait_ms=200, dtype="float32",
                                        adapters_root=str(root.root)), loader=loader)
    service = StudentService(backend, StudentLimits(default_max_new_tokens=4, max_prompt_tokens=600))
    host, startup = start_in_background(service, ServerConfig(port=0, log_format="text"))
    address = f"127.0.0.1:{host.port}"
    client = StudentClient(address, timeout=120)
    client.wait_ready(timeout=300)
    assert startup.error is None
    yield SimpleNamespace(client=client, backend=backend, service=service, address=address, root=root.root)
    client.close()
    host.stop(grace=0)
    backend.close()


def refusal(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    details = err.value.details() or ""
    assert len(details) <= MAX_DETAILS, f"unbounded message ({len(details)} characters)"
    return err.value.code(), details


def variant(root: Path, name: str, edit) -> Path:
    """A copy of the good checkpoint under the root, changed by edit(folder), its manifest rewritten."""
    folder = copy_checkpoint(root / "good", root / name)
    edit(folder)
    write_manifest(folder, version=name)
    return folder


def rewrite_weights(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "adapter_model.safetensors")
    save_file({k: change(v) for k, v in state.items()}, folder / "adapter_model.safetensors")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- findings 1 and 5: LoadAdapter's uri and checkpoint files --------------------------------------

def test_hostile_uris_are_invalid_argument_and_reveal_nothing_outside_the_root(student, root):
    load = student.client.load_adapter
    code, details = refusal(lambda: load(version="v-long", uri="a" * 5000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "checkpoint.uri" in details
    code, details = refusal(lambda: load(version="v-nul", uri="good\x00/x"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in details

    outside = str(root.outside / "adapter")  # a real adapter, outside the root
    shapes = {}
    for uri in [outside, f"file://{outside}", "../" + Path(outside).parent.name + "/adapter", "escape",
                "/etc", "/proc/self", "~", "~/adapter", str(root.outside / "missing"), "/no/such/folder"]:
        code, details = refusal(lambda: load(version="v-out", uri=uri))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (uri, code, details)
        assert str(root.outside) not in details.replace(uri, ""), details
        shapes[uri] = details.replace(repr(uri), "<uri>")
    # The same message for an existing adapter, a missing folder and a system folder outside.
    assert shapes[outside] == shapes[str(root.outside / "missing")] == shapes["/etc"] == shapes["/no/such/folder"]
    assert shapes["escape"] == shapes[outside]  # a symlink out of the root: as if the path were given
    # Inside the root, a missing folder is NOT_FOUND; the current version is untouched throughout.
    assert refusal(lambda: load(version="v-missing", uri="missing"))[0] == grpc.StatusCode.NOT_FOUND
    assert student.client.list_adapters().current_version == "base"


def test_deeply_nested_or_malformed_json_in_checkpoint_files_is_failed_precondition(student):
    root = student.root

    def deep_config(folder):
        (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "x": ' + nested(100_000) + "}")

    def huge_rank(folder):
        config = json.loads((folder / "adapter_config.json").read_text())
        config["r"] = "RANK"
        (folder / "adapter_config.json").write_text(json.dumps(config).replace('"RANK"', "9" * 5000))

    def deep_header(folder):
        header = ('{"__metadata__": {"x": ' + nested(100_000) + "}}").encode()
        (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)

    def float_shape(folder):
        data = (folder / "adapter_model.safetensors").read_bytes()
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
        first = next(k for k in header if k != "__metadata__")
        header[first]["shape"] = [1e400, 2]
        raw = json.dumps(header).replace("Infinity", "1e400").encode()
        (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])

    folders = {name: variant(root, name, edit) for name, edit in
               [("deep-config", deep_config), ("huge-rank", huge_rank), ("deep-header", deep_header),
                ("float-shape", float_shape)]}
    deep_manifest = copy_checkpoint(root / "good", root / "deep-manifest")
    (deep_manifest / "manifest.json").write_text('{"files": ' + nested(100_000) + "}")
    folders["deep-manifest"] = deep_manifest
    for name, folder in folders.items():
        code, details = refusal(lambda: student.client.load_adapter(version=f"v-{name}", uri=name))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (name, code, details)
    assert student.client.list_adapters().current_version == "base"


# -- finding 2: adapters validated; one bad row never fails the others -----------------------------

def test_nan_and_huge_weights_are_refused_before_they_serve(student):
    def nan_weights(folder):
        rewrite_weights(folder, lambda t: t.clone().fill_(float("nan")))

    def huge_weights(folder):
        rewrite_weights(folder, lambda t: t.clone().fill_(1e30))

    for name, edit in [("nan", nan_weights), ("huge", huge_weights)]:
        variant(student.root, name, edit)
        code, details = refusal(lambda: student.client.load_adapter(version=f"v-{name}", uri=name))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (name, code, details)
        assert "finite" in details or "exceed" in details, details
    assert student.client.list_adapters().current_version == "base"
    [result] = student.client.act([act_item(**STATES[0])])
    assert result.adapter_version == "base" and result.completion_token_ids


def test_an_adapter_config_cannot_rewrite_the_base_model(student):
    """peft's PiSSA/OLoRA initialisations subtract a decomposition from the base weights in place when
    the adapter is added, and layer replication copies decoder layers: the base model serves every
    version, "base" included, so a checkpoint asking for them must not change it, loaded or refused."""
    import hashlib

    def base_digest():
        weights = [m.get_base_layer().weight if hasattr(m, "get_base_layer") else m.weight
                   for name, m in student.backend.model.named_modules() if name.endswith(("q_proj", "v_proj"))]
        return hashlib.sha256(b"".join(w.detach().float().numpy().tobytes() for w in weights)).hexdigest()

    def config_with(**changes):
        def edit(folder):
            config = json.loads((folder / "adapter_config.json").read_text())
            config.update(changes)
            (folder / "adapter_config.json").write_text(json.dumps(config))
        return edit

    before = base_digest()
    [reference] = student.client.act([act_item(**STATES[0])])
    for name, changes in [("pissa", {"init_lora_weights": "pissa"}), ("olora", {"init_lora_weights": "olora"})]:
        variant(student.root, name, config_with(**changes))
        student.client.load_adapter(version=f"v-{name}", uri=name, keep_current=True)  # a no-op delta (B = 0)
        assert base_digest() == before, name
        student.client.unload_adapter(f"v-{name}")
    variant(student.root, "replicated", config_with(layer_replication=[[0, 4], [2, 6]]))
    code, details = refusal(lambda: student.client.load_adapter(version="v-replicated", uri="replicated"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "layer_replication" in details, details
    assert base_digest() == before
    [again] = student.client.act([act_item(**STATES[0])])
    assert again.adapter_version == "base" and again.completion_token_ids == reference.completion_token_ids


def test_a_row_whose_scores_turn_non_finite_fails_alone(student):
    """Weights that go bad after loading (here: poisoned in place, past every load-time check): the
    poisoned row fails with a clear status; a concurrent base-model row in the same batch answers."""
    info = student.client.load_adapter(version="poisoned", uri="good", keep_current=True)
    assert info.version == "poisoned" and not info.current
    backend = student.backend
    handle = student.service.adapters._versions["poisoned"].handle

    def poison():
        for name, param in backend.peft.named_parameters():
            if f".{handle}." in name and "lora_B" in name:
                param.data.fill_(float("nan"))
        backend.prefix_cache.forget(handle)

    backend.scheduler.call(poison).result(timeout=60)
    stub = student.client.stub
    bad = stub.Act.future(student_pb2.ActRequest(items=[act_item(**STATES[0], adapter_version="poisoned",
                                                                 temperature=1.0, seed=7, max_new_tokens=4)]),
                          timeout=120)
    good = stub.Act.future(student_pb2.ActRequest(items=[act_item(**STATES[1], adapter_version="base",
                                                                  max_new_tokens=4)]), timeout=120)
    [answer] = good.result().results
    assert answer.adapter_version == "base" and answer.completion_token_ids
    assert answer.batch_size == 2  # it ran in the same forward batch as the poisoned row
    with pytest.raises(grpc.RpcError) as err:
        bad.result()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert "poisoned" in err.value.details() and "non-finite" in err.value.details()
    student.client.unload_adapter("poisoned")


# -- finding 4: held Acts do not starve health and control calls -----------------------------------

def long_items(n: int, offset: int = 0) -> list[student_pb2.ActRequest]:
    return [student_pb2.ActRequest(items=[act_item(**STATES[(i + offset) % len(STATES)], temperature=5.0,
                                                   seed=1000 + i + offset, max_new_tokens=LONG)])
            for i in range(n)]


def test_health_and_control_calls_answer_while_32_acts_are_in_flight(student):
    backend = student.backend
    calls = [student.client.stub.Act.future(request, timeout=600) for request in long_items(32)]
    try:
        # Every call has reached the scheduler (its row queued or generating) ...
        wait_until(lambda: backend.rows_in_flight() == 32, 60, "32 rows in flight")
        # ... and health and control calls still answer (a liveness check, not a speed claim).
        with grpc.insecure_channel(student.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service="leap.v1.StudentService"),
                                timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            fast = StudentClient(student.address, channel=channel)
            assert fast.model_info(timeout=5).backend == "local"
            assert fast.list_adapters(timeout=5).current_version == "base"
    finally:
        for call in calls:
            call.cancel()
    wait_until(lambda: backend.rows_in_flight() == 0, 120, "the cancelled rows to leave the scheduler")


# -- finding 3: a cancelled Act stops generating ----------------------------------------------------

def test_cancelled_acts_leave_the_scheduler_and_a_short_act_answers(student):
    backend = student.backend
    before = backend.cancelled_rows
    calls = [student.client.stub.Act.future(request, timeout=600) for request in long_items(16, offset=1)]
    wait_until(lambda: backend.rows_in_flight() == 16, 60, "16 rows in flight")
    wait_until(lambda: backend.rows_generating() == 8, 60, "a full batch generating")
    for call in calls:
        call.cancel()
    # A 4-token Act answers while nothing else runs: the cancelled rows are gone (a generous deadline:
    # before cancellation reached the scheduler, this call waited for 16 x 512 tokens).
    [result] = student.client.act([act_item(**STATES[0], max_new_tokens=4)], timeout=60)
    assert len(result.completion_token_ids) <= 4
    wait_until(lambda: backend.rows_in_flight() == 0, 60, "the cancelled rows to leave the scheduler")
    assert backend.cancelled_rows - before == 16  # every one of them removed as cancelled, none completed
    for call in calls:
        assert call.cancelled()


def test_an_expired_deadline_frees_queued_rows_too(student):
    backend = student.backend
    before = backend.cancelled_rows
    # 12 long rows: 8 generate, 4 wait in the queue; every call's deadline expires while they do.
    calls = [student.client.stub.Act.future(request, timeout=3) for request in long_items(12, offset=2)]
    for call in calls:
        assert call.exception(timeout=120).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: backend.rows_in_flight() == 0, 60, "the expired rows to leave the scheduler")
    assert backend.cancelled_rows - before == 12


def test_oversized_items_are_refused_before_their_text_is_parsed_and_the_server_keeps_answering(student):
    """Text the household notes read (every observation of the episode), history entries and candidates
    are bounded before anything is parsed: a 4 MB observation once held the interpreter lock for hours in
    the notes' regular expressions, freezing health checks and every other call."""
    import time

    base = dict(env="household", goal="put a clean apple in fridge.", candidates=["look"])
    hostile = {
        "observation": act_item(**base, observation="on the " * 50_000),
        "history text": act_item(**base, observation="ok", history=[("on the " * 5_000, "look")] * 10),
        "history entries": act_item(env="bash", goal="x", observation="ok", history=[("", "ls")] * 10_001),
        "candidates": act_item(env="webshop", goal="x", observation="ok", candidates=["go to a"] * 4_097),
    }
    for name, item in hostile.items():
        started = time.monotonic()
        code, details = refusal(lambda: student.client.stub.Act(student_pb2.ActRequest(items=[item]), timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
        assert time.monotonic() - started < 5.0, name
    # Long, but within the bounds, and not quadratic any more: 140 kB with no period or comma.
    started = time.monotonic()
    from services.student.memory import household_memory

    household_memory(["on the " * 20_000, "you pick up the " * 8_000], ["go to x"])
    assert time.monotonic() - started < 5.0  # was about a minute (each start position rescanned the rest)
    [result] = student.client.act([act_item(**STATES[0])])
    assert result.completion_token_ids
