"""The student service with the local backend: real SmolLM2, real gRPC on loopback.

One server for the module; tests that change the served adapter run in file order after the hot
swap fixture. Generations are kept short (max_new_tokens) to keep the module fast on a loaded CPU.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import urllib.request
from types import SimpleNamespace

import grpc
import pytest

from services.runtime.config import ServerConfig
from services.student.backends.local import LocalBackend, LocalOptions
from services.student.client import StudentClient, act_item
from services.student.prompts import format_target
from services.student.server import start_in_background
from services.student.service import StudentLimits, StudentService
from tests.student.helpers import (
    CANDIDATES,
    FIXED_ACTION,
    FIXED_REASON,
    STATES,
    copy_checkpoint,
    free_port,
    write_manifest,
)

pytestmark = pytest.mark.model

FIXED_TEXT = format_target(FIXED_REASON, FIXED_ACTION)
SHORT = 10  # max_new_tokens where the content does not matter


class GatedLocalBackend(LocalBackend):
    """Holds the model load until the test opens the gate (to observe the loading state)."""

    def __init__(self, options, **kwargs):
        super().__init__(options, **kwargs)
        self.gate = threading.Event()

    def start(self):
        self.gate.wait(60)
        super().start()


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


@pytest.fixture(scope="module")
def student(smollm2):
    with smollm2.borrow() as loaded:
        yield from _student(smollm2.loader(loaded))


def _student(loader):
    metrics_port = free_port()
    # fp32: a row's tokens must not depend on its batch companions, which holds exactly in fp32 (in
    # bf16 a different batch shape can round differently and flip a sampled token).
    backend = GatedLocalBackend(LocalOptions(max_batch_size=8, max_wait_ms=50, dtype="float32"), loader=loader)
    service = StudentService(backend, StudentLimits(default_max_new_tokens=SHORT, max_prompt_tokens=400, max_items=8))
    host, startup = start_in_background(service, ServerConfig(port=0, metrics_port=metrics_port, log_format="text"))
    client = StudentClient(f"127.0.0.1:{host.port}", timeout=120)
    loading = SimpleNamespace(serving=client.serving(),
                              act_code=code_of(lambda: client.act([act_item(**STATES[0])], timeout=10)))
    backend.gate.set()
    client.wait_ready(timeout=120)
    assert startup.error is None
    yield SimpleNamespace(client=client, service=service, host=host, metrics_port=metrics_port, loading=loading,
                          tokenizer=backend.tokenizer)
    client.close()
    host.stop(grace=0)
    backend.close()


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def concurrently(fn, n: int):
    """Run fn(i) on n threads released together; return results in order (exceptions re-raised)."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


# -- lifecycle -----------------------------------------------------------------------------------

def test_not_serving_while_the_model_loads_then_serving(student):
    assert student.loading.serving is False
    assert student.loading.act_code == grpc.StatusCode.UNAVAILABLE
    assert student.client.serving() is True
    info = student.client.model_info()
    assert (info.backend, info.device, info.dtype, info.current_version) == ("local", "cpu", "float32", "base")
    assert info.supports_hot_swap and info.supports_per_request_adapter
    assert (info.max_batch_size, info.max_prompt_tokens) == (8, 400)


# -- acting --------------------------------------------------------------------------------------

def test_act_returns_parsed_output_and_the_sampled_token_ids(student):
    [result] = student.client.act([act_item(**STATES[0], request_id="r-1", max_new_tokens=SHORT)])
    assert result.request_id == "r-1"
    assert result.adapter_version == "base"
    assert 0 < len(result.completion_token_ids) <= SHORT
    assert result.raw_output == student.tokenizer.decode(list(result.completion_token_ids), skip_special_tokens=True)
    assert result.prompt_tokens > 100
    assert result.batch_size >= 1
    if result.action_valid:
        assert result.action in CANDIDATES


def test_constrained_act_chooses_among_the_candidates(student):
    assert student.client.model_info().supports_action_constraint is True
    items = [act_item(**state, constrain_action=True, max_reason_tokens=4, max_new_tokens=SHORT) for state in STATES]
    bash = act_item(env="bash", goal="list files", observation="$ ", candidates=["ls"], constrain_action=True,
                    max_new_tokens=4)
    results = student.client.act(items + [bash])
    for result in results[:-1]:
        assert result.action_valid and result.action in CANDIDATES
        assert result.raw_output.endswith("ACTION: " + result.action)
        # "REASON:" alone takes most of 4 tokens: every reason ran out of its budget.
        assert result.reason_cut
    assert not results[-1].reason_cut  # decoded freely: no budget, nothing cut
    # bash accepts any command: its candidates are suggestions, so the row is decoded freely (a
    # constrained row would add the label and a candidate after its 4 tokens of reason).
    assert len(results[-1].completion_token_ids) <= 4
    bad = act_item(**STATES[0], constrain_action=True, max_reason_tokens=-1)
    with pytest.raises(grpc.RpcError) as err:
        student.client.act([bad])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_reason_tokens" in err.value.details()


def test_concurrent_calls_are_batched(student):
    before = scrape(student.metrics_port)
    n = 6
    results = concurrently(lambda i: student.client.act(
        [act_item(**STATES[i % len(STATES)], request_id=f"c{i}", max_new_tokens=SHORT)])[0], n)
    after = scrape(student.metrics_port)
    assert [r.request_id for r in results] == [f"c{i}" for i in range(n)]
    assert max(r.batch_size for r in results) > 1
    forwards = after["leap_student_batch_size_count"] - before.get("leap_student_batch_size_count", 0)
    single = after['leap_student_batch_size_bucket{le="1.0"}'] - before.get('leap_student_batch_size_bucket{le="1.0"}', 0)
    assert forwards > 0 and forwards - single > 0, "no forward pass ran more than one row"
    assert after["leap_student_generated_tokens_total"] > before.get("leap_student_generated_tokens_total", 0)


def test_same_request_and_seed_give_the_same_output_whatever_else_is_in_the_batch(student):
    seeded = dict(**STATES[1], temperature=1.0, top_p=0.95, seed=1234, max_new_tokens=SHORT)
    greedy = dict(**STATES[2], max_new_tokens=SHORT)
    [alone] = student.client.act([act_item(**seeded)])
    [greedy_alone] = student.client.act([act_item(**greedy)])
    batch = student.client.act([
        act_item(**STATES[0], temperature=1.0, seed=7, max_new_tokens=SHORT),  # other companions
        act_item(**seeded),
        act_item(**greedy),
        act_item(**dict(seeded, seed=1)),
        act_item(**dict(seeded, seed=2)),
    ])
    in_batch, greedy_in_batch, other_seeds = batch[1], batch[2], batch[3:]
    assert in_batch.batch_size == 5
    assert list(in_batch.completion_token_ids) == list(alone.completion_token_ids)
    assert in_batch.raw_output == alone.raw_output
    assert list(greedy_in_batch.completion_token_ids) == list(greedy_alone.completion_token_ids)
    # The seed matters: other seeds give other samples.
    assert any(list(r.completion_token_ids) != list(alone.completion_token_ids) for r in other_seeds)


# -- bad requests --------------------------------------------------------------------------------

def test_bad_requests_are_invalid_argument_or_not_found(student):
    client, state = student.client, STATES[0]
    assert code_of(lambda: client.act([])) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: client.act([act_item(**dict(state, observation="  "))])) == grpc.StatusCode.INVALID_ARGUMENT
    huge = dict(state, observation="You see " + ", ".join(f"a cabinet {i}" for i in range(200)) + ".")
    with pytest.raises(grpc.RpcError) as err:
        client.act([act_item(**huge)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit of 400" in err.value.details()
    assert code_of(lambda: client.act([act_item(**state)] * 9)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: client.act([act_item(**state, temperature=-1)])) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: client.act([act_item(**state, max_new_tokens=100000)])) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: client.act([act_item(**dict(state, env=""))])) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        client.act([act_item(**state, adapter_version="no-such-version")])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "loaded versions: base" in err.value.details()


def test_deadline_drops_the_rows_and_the_server_keeps_serving(student):
    code = code_of(lambda: student.client.act([act_item(**STATES[0], max_new_tokens=64)], timeout=0.3))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert student.client.act([act_item(**STATES[1], max_new_tokens=2)])[0].adapter_version == "base"


# -- hot swap ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def swap(student, trained_adapter):
    """Swap base -> v1 while three clients keep calling Act; record everything they saw."""
    path, sha = trained_adapter
    client = student.client
    stop = threading.Event()
    records: list[tuple[float, float, str, str]] = []  # (sent, received, version, raw)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                [r] = client.act([act_item(**STATES[i], max_new_tokens=24)])
            except BaseException as exc:  # noqa: BLE001 - counted as a failed request
                errors.append(exc)
                return
            with lock:
                records.append((sent, time.monotonic(), r.adapter_version, r.raw_output))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(STATES))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 240
    while len(records) < 2 and time.monotonic() < deadline and not errors:
        time.sleep(0.05)
    load_started = time.monotonic()
    info = client.load_adapter(version="v1", uri=str(path), sha256=sha, base_model="smollm2")
    loaded = time.monotonic()
    while (sum(1 for sent, *_ in records if sent > loaded) < len(STATES) and time.monotonic() < deadline
           and not errors):
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(120)
    return SimpleNamespace(info=info, records=list(records), errors=errors, load_started=load_started, loaded=loaded)


def test_hot_swap_under_load_changes_answers_with_zero_failed_requests(student, swap):
    assert swap.errors == []
    assert swap.info.version == "v1" and swap.info.current and swap.info.load_seconds > 0
    versions = {version for _, _, version, _ in swap.records}
    assert versions <= {"base", "v1"}
    before = [raw for sent, received, version, raw in swap.records if received < swap.load_started]
    after = [(version, raw) for sent, _, version, raw in swap.records if sent > swap.loaded]
    assert before and all(raw != FIXED_TEXT for raw in before)
    assert len(after) >= len(STATES)
    assert all(version == "v1" for version, _ in after)
    assert all(raw == FIXED_TEXT for _, raw in after)
    listed = student.client.list_adapters()
    assert listed.current_version == "v1"
    assert {a.version for a in listed.adapters} == {"base", "v1"}
    assert student.client.model_info().current_version == "v1"


def test_previous_version_still_answers_when_pinned_in_a_mixed_batch(student, swap):
    base_item = act_item(**STATES[0], adapter_version="base", max_new_tokens=24)
    current_item = act_item(**STATES[0], max_new_tokens=24)
    pinned, current = student.client.act([base_item, current_item])
    assert (pinned.adapter_version, current.adapter_version) == ("base", "v1")
    assert pinned.raw_output != FIXED_TEXT
    assert current.raw_output == FIXED_TEXT and current.action == FIXED_ACTION and current.action_valid
    assert current.reason == FIXED_REASON
    assert pinned.batch_size == current.batch_size == 2


def _corrupt_variants(tmp_path, source):
    variants = {}
    flipped = copy_checkpoint(source, tmp_path / "flipped")
    data = bytearray((flipped / "adapter_model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (flipped / "adapter_model.safetensors").write_bytes(bytes(data))
    variants["weights differ from the manifest"] = (flipped, "")

    truncated = copy_checkpoint(source, tmp_path / "truncated")
    (truncated / "manifest.json").unlink()
    weights = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    variants["truncated weights, no manifest"] = (truncated, "")

    wrong_base = copy_checkpoint(source, tmp_path / "wrong-base")
    write_manifest(wrong_base, version="v1", base_model="Qwen/Qwen2.5-0.5B-Instruct")
    variants["manifest names another base model"] = (wrong_base, "")

    variants["sha256 of the reference differs"] = (source, "0" * 64)

    wrong_shape = copy_checkpoint(source, tmp_path / "wrong-shape")
    (wrong_shape / "manifest.json").unlink()
    header = {"base_model.model.model.layers.29.self_attn.q_proj.lora_A.weight":
              {"dtype": "F32", "shape": [8, 1024], "data_offsets": [0, 8 * 1024 * 4]}}
    raw = json.dumps(header).encode()
    (wrong_shape / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * (8 * 1024 * 4))
    variants["weights shaped for another model"] = (wrong_shape, "")

    bad_config = copy_checkpoint(source, tmp_path / "bad-config")
    (bad_config / "manifest.json").unlink()
    (bad_config / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "lora_alpha": "sixteen!"')
    variants["config is not JSON"] = (bad_config, "")
    return variants


def test_corrupt_or_incompatible_adapters_are_refused_and_the_current_version_keeps_serving(
        student, swap, trained_adapter, tmp_path):
    path, _ = trained_adapter
    for name, (folder, sha) in _corrupt_variants(tmp_path, path).items():
        with pytest.raises(grpc.RpcError) as err:
            student.client.load_adapter(version="v-bad", uri=str(folder), sha256=sha)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (name, err.value.details())
    assert code_of(lambda: student.client.load_adapter(version="v-bad", uri=str(tmp_path / "missing"))) == \
        grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: student.client.load_adapter(version="", uri=str(path))) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: student.client.load_adapter(version="base", uri=str(path))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    listed = student.client.list_adapters()
    assert listed.current_version == "v1" and "v-bad" not in {a.version for a in listed.adapters}
    [result] = student.client.act([act_item(**STATES[1], max_new_tokens=24)])
    assert (result.adapter_version, result.raw_output) == ("v1", FIXED_TEXT)


def test_a_version_name_is_never_reused_for_other_weights(student, swap, trained_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    path, sha = trained_adapter
    other = copy_checkpoint(path, tmp_path / "other")
    tensors = load_file(str(other / "adapter_model.safetensors"))
    save_file({k: v * 0.5 for k, v in tensors.items()}, str(other / "adapter_model.safetensors"))
    write_manifest(other, version="v2")
    assert code_of(lambda: student.client.load_adapter(version="v1", uri=str(other))) == grpc.StatusCode.ALREADY_EXISTS
    # Staged without becoming current, then loaded again under the same name: a no-op.
    staged = student.client.load_adapter(version="v2", uri=str(other), keep_current=True)
    assert staged.version == "v2" and not staged.current
    assert student.client.list_adapters().current_version == "v1"
    again = student.client.load_adapter(version="v1", uri=str(path), sha256=sha)
    assert again.current
    # Unloading: not the current one; a staged one goes, and pinned requests to it are NOT_FOUND.
    assert code_of(lambda: student.client.unload_adapter("v1")) == grpc.StatusCode.FAILED_PRECONDITION
    assert student.client.unload_adapter("v2").version == "v2"
    assert code_of(lambda: student.client.act([act_item(**STATES[0], adapter_version="v2")])) == \
        grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: student.client.unload_adapter("v2")) == grpc.StatusCode.NOT_FOUND
