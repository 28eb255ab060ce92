"""Real training of SmolLM2-135M-Instruct through the trainer service over gRPC (tiny configuration):
SFT lowers the loss and changes the model's answer, DPO raises the chosen-vs-rejected margin, KTO
runs from DPO pairs, a parent adapter is continued, cancel stops a running job, and a SIGKILLed
trainer leaves no checkpoint and reports the job FAILED after a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from leap.v1 import trainer_pb2
from services.runtime.files import sha256_file
from services.trainer import checkpoints
from services.trainer.client import TrainerClient
from services.trainer.store import RESTARTED_MESSAGE
from tests.trainer.helpers import CHOSEN, TINY, TrainerServer, dpo_rows, messages, sft_rows, wait_for, write_jsonl

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
S = trainer_pb2
JOB_TIMEOUT = 300


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    write_jsonl(root / "runs" / "data" / "sft.jsonl", sft_rows(4))
    write_jsonl(root / "runs" / "data" / "dpo.jsonl", dpo_rows(4))
    return root


@pytest.fixture(scope="module")
def server(workdir):
    srv = TrainerServer(workdir / "state", workdir / "runs")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with TrainerClient(server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def sft_and_dpo(client):
    """An SFT job and a DPO job submitted back to back: the DPO job must wait for the SFT job."""
    sft = client.start_job("sft", ["data/sft.jsonl"], output_name="student", run_dir="run",
                           hyper_parameters=dict(TINY, max_steps=4, learning_rate=3e-3), job_id="sft")
    dpo = client.start_job("dpo", ["data/dpo.jsonl"], output_name="student-dpo", run_dir="run",
                           hyper_parameters=dict(TINY, max_steps=3, batch_size=2, learning_rate=5e-4, beta=0.1),
                           job_id="dpo")
    assert dpo.state == S.JOB_STATE_QUEUED
    return sft.job_id, dpo.job_id


def test_training_tokens_are_the_inference_prompt_plus_target_and_eos():
    from transformers import AutoTokenizer

    from services.models import resolve_model
    from services.trainer.datasets import validate_row
    from services.trainer.jobs import HyperParameters
    from services.trainer.training import IGNORE_INDEX, TrainingError, encode_examples

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2").location)
    prompt_text = tokenizer.apply_chat_template(messages(0), add_generation_prompt=True, tokenize=False)
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]  # what the student feeds the model
    target = tokenizer(CHOSEN, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    hp = HyperParameters(max_length=256).resolve("sft")

    sft = encode_examples(tokenizer, "sft", validate_row(sft_rows(1)[0], "sft", "x:1"), hp)
    (row,) = sft.rows
    assert row["input_ids"] == prompt + target
    assert row["labels"] == [IGNORE_INDEX] * len(prompt) + target  # loss on the target only

    dpo = encode_examples(tokenizer, "dpo", validate_row(dpo_rows(1)[0], "dpo", "x:1"), hp)
    assert dpo.rows[0]["prompt_ids"] == prompt and dpo.rows[0]["chosen_ids"] == target
    assert dpo.rows[0]["rejected_ids"][-1] == tokenizer.eos_token_id

    kto = encode_examples(tokenizer, "kto", validate_row(dpo_rows(1)[0], "kto", "x:1"), hp.resolve("kto"))
    assert sorted(r["label"] for r in kto.rows) == [False, True]
    assert all(r["prompt_ids"] == prompt and "KL_completion_ids" in r for r in kto.rows)

    short = HyperParameters(max_length=len(prompt) + 4).resolve("sft")
    with pytest.raises(TrainingError, match="none of the 1 examples fits max_length"):
        encode_examples(tokenizer, "sft", validate_row(sft_rows(1)[0], "sft", "x:1"), short)


def test_sft_loss_on_target_positions_equals_trl_full_head_loss(tmp_path):
    """Our SFT loss (LM head on labelled positions only) is TRL's loss, gradients included."""
    import torch

    from services.trainer import training as T
    from services.trainer.datasets import validate_row
    from services.trainer.jobs import HyperParameters

    hp = HyperParameters(**TINY).resolve("sft")
    model, tokenizer = T.load_policy("smollm2", "cpu", None)
    rows = [{**r, "messages": messages(i), "completion": CHOSEN.replace("fridge", "fridge" if i % 2 else "cabinet")}
            for i, r in enumerate(sft_rows(4))]  # targets of different lengths: padding differs per row
    examples = [e for k, r in enumerate(rows) for e in validate_row(r, "sft", f"x:{k}")]
    encoded = T.encode_examples(tokenizer, "sft", examples, hp)
    args = T.training_arguments("sft", hp, str(tmp_path), "cpu", T.pick_dtype("cpu"))
    trainer = T.build_trainer("sft", model, tokenizer, encoded.rows, args, T.lora_config(hp))
    assert isinstance(trainer, T._TargetOnlySFTTrainer)
    trainer.model.eval()  # no dropout: both losses see the same network
    with torch.no_grad():  # give LoRA B non-zero weights so the adapter path is part of the comparison
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    grads = []
    for compute in (trainer.compute_loss, lambda m, b: T.SFTTrainer.compute_loss(trainer, m, b)):
        trainer.model.zero_grad()
        loss = compute(trainer.model, dict(batch))
        loss.backward()
        grads.append((float(loss), torch.cat([p.grad.flatten() for p in trainer.model.parameters()
                                              if p.requires_grad and p.grad is not None])))
    (ours, ours_grad), (trl, trl_grad) = grads
    assert ours == pytest.approx(trl, rel=2e-3)
    assert torch.nn.functional.cosine_similarity(ours_grad, trl_grad, dim=0) > 0.99


def test_a_shared_prefix_runs_once_with_the_loss_and_gradients_of_every_row_running_it(tmp_path):
    """Rows opening with the same system message run it once; the loss and every LoRA gradient are
    those of the plain forward pass (fp32, no dropout), and a batch without one takes the plain path."""
    import torch

    from services.trainer import training as T
    from services.trainer.datasets import validate_row
    from services.trainer.jobs import HyperParameters

    rows = [{**r, "messages": messages(i), "completion": CHOSEN.replace("fridge", "fridge" if i % 2 else "cabinet")}
            for i, r in enumerate(sft_rows(3))]
    examples = [e for k, r in enumerate(rows) for e in validate_row(r, "sft", f"x:{k}")]
    for dropout in (0.1, 0.0):  # with LoRA dropout, rows must draw their own noise: no sharing
        hp = HyperParameters(**{**TINY, "lora_dropout": dropout}).resolve("sft")
        model, tokenizer = T.load_policy("smollm2", "cpu", None)
        model = model.float()
        encoded = T.encode_examples(tokenizer, "sft", examples, hp)
        args = T.training_arguments("sft", hp, str(tmp_path), "cpu", torch.float32)
        trainer = T.build_trainer("sft", model, tokenizer, encoded.rows, args, T.lora_config(hp))
        assert trainer._can_share_prefix(trainer.model.get_base_model()) is (dropout == 0.0)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    collate = trainer.get_train_dataloader().collate_fn
    batch = trainer._prepare_inputs(collate([dict(r) for r in encoded.rows]))
    shared = T.shared_prefix_tokens(batch["input_ids"], batch["attention_mask"], batch["labels"])
    system = len(tokenizer(T.render_prompt(tokenizer, messages(0)[:1]), add_special_tokens=False)["input_ids"])
    assert T.MIN_SHARED_PREFIX_TOKENS < shared and shared >= system - 2
    results = []
    for share in (True, False):
        trainer.model.zero_grad()
        trainer._share_prefix = share
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        results.append((float(loss), [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]))
    (shared_loss, shared_grads), (plain_loss, plain_grads) = results
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    assert len(shared_grads) == len(plain_grads) > 0
    for a, b in zip(shared_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    hidden, skipped = T.backbone_hidden_states(trainer.model.get_base_model(), batch["input_ids"], batch["attention_mask"],
                                               batch["labels"], share_prefix=True)
    assert skipped == shared and hidden.shape[1] == batch["input_ids"].shape[1] - 1 - shared


def test_no_prefix_is_shared_with_dropout_or_a_sliding_window():
    """Tiny random models: a full-attention one without dropout shares; attention dropout, a Dropout
    module or a sliding-window cache (which would keep only part of the prefix) turn it off."""
    import types

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from services.trainer.training import _TargetOnlySFTTrainer

    def can_share(model):
        return _TargetOnlySFTTrainer._can_share_prefix(types.SimpleNamespace(), model)

    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    assert can_share(LlamaForCausalLM(LlamaConfig(**small)))
    assert not can_share(LlamaForCausalLM(LlamaConfig(**small, attention_dropout=0.1)))
    with_dropout = LlamaForCausalLM(LlamaConfig(**small))
    with_dropout.model.layers[0].mlp.dropout = torch.nn.Dropout(0.2)
    assert not can_share(with_dropout)
    assert not can_share(MistralForCausalLM(MistralConfig(**small, sliding_window=8)))


def test_the_shared_prefix_stops_before_the_first_target_and_needs_two_rows():
    import torch

    from services.trainer.training import shared_prefix_tokens

    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9, 9]])
    labels = torch.tensor([[-100, -100, -100, -100, 5, 6], [-100, -100, -100, -100, -100, 9]])
    assert shared_prefix_tokens(ids, None, labels) == 3  # the position before row 0's first target is read
    assert shared_prefix_tokens(ids, torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]), labels) == 0
    assert shared_prefix_tokens(ids[:1], None, labels[:1]) == 0
    assert shared_prefix_tokens(torch.tensor([[7, 2], [1, 2]]), None, torch.tensor([[-100, 2], [-100, 2]])) == 0
    assert shared_prefix_tokens(ids, None, torch.full_like(labels, -100)) == 0  # a row without targets


def test_sft_lowers_the_loss_and_writes_a_versioned_checkpoint(server, client, sft_and_dpo, workdir):
    sft_id, dpo_id = sft_and_dpo
    # Watch for a while, drop the connection, then watch again from a new one until the end.
    with TrainerClient(server.address) as first:
        stream = first.watch(sft_id)
        progress = next(stream)
        while progress.step < 1:
            progress = next(stream)
        stream.close()
    assert progress.state == S.JOB_STATE_RUNNING and progress.total_steps == 4 and progress.tokens_per_second > 0
    assert client.get(dpo_id).state == S.JOB_STATE_QUEUED  # one job at a time
    updates = list(client.watch(sft_id, timeout=JOB_TIMEOUT))
    job = client.get(sft_id)
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error
    assert updates[-1].state == S.JOB_STATE_SUCCEEDED and updates[-1].step == 4

    metrics = job.progress.metrics
    assert metrics["loss_last"] < metrics["loss_first"], metrics
    assert metrics["examples"] == 4 and metrics["examples_dropped_too_long"] == 0

    ref = job.checkpoint
    run_dir = workdir / "runs" / "run"
    assert (ref.name, ref.version, ref.base_model) == ("student", "v1", "smollm2")
    assert Path(ref.uri) == run_dir / "checkpoints" / "student" / "v1"
    assert sha256_file(Path(ref.uri) / "manifest.json") == ref.sha256
    manifest = json.loads((Path(ref.uri) / "manifest.json").read_text())
    assert manifest["method"] == "sft" and manifest["parent"] is None and manifest["base_model"] == "smollm2"
    assert manifest["dataset_sha256"] == {str(workdir / "runs" / "data" / "sft.jsonl"):
                                          sha256_file(workdir / "runs" / "data" / "sft.jsonl")}
    assert manifest["hyper_parameters"]["lora_r"] == 8 and manifest["hyper_parameters"]["max_steps"] == 4
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    assert any(name.endswith("chat_template.jinja") or name == "tokenizer_config.json" for name in manifest["files"])
    checkpoints.verify_files(ref.uri, manifest)
    assert [p.name for p in (run_dir / "checkpoints" / "student").iterdir()] == ["v1"]


GREEDY_ANSWERS = """
import json, sys
import torch
from peft import PeftModel
from services.models import load_model_and_tokenizer
from tests.trainer.helpers import CHOSEN, messages

model, tokenizer, _ = load_model_and_tokenizer("smollm2", device="cpu")
prompt = tokenizer.apply_chat_template(messages(1), add_generation_prompt=True, tokenize=False)
inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
target = tokenizer(CHOSEN, return_tensors="pt", add_special_tokens=False)["input_ids"]

def answer(m):
    with torch.no_grad():
        out = m.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

def target_loss(m):
    ids = torch.cat([inputs["input_ids"], target], dim=1)
    labels = ids.clone()
    labels[:, : inputs["input_ids"].shape[1]] = -100
    with torch.no_grad():
        return m(input_ids=ids, labels=labels).loss.item()

before = {"answer": answer(model), "target_loss": target_loss(model)}
tuned = PeftModel.from_pretrained(model, sys.argv[1])
after = {"answer": answer(tuned), "target_loss": target_loss(tuned)}
print(json.dumps({"before": before, "after": after}))
"""


def test_the_adapter_loads_with_peft_and_changes_the_greedy_answer(client, sft_and_dpo):
    # In its own process, as the student service would load it (and because transformers' model
    # loading is not thread-safe, while this process's trainer is loading the DPO job's model).
    job = client.wait(sft_and_dpo[0], timeout=JOB_TIMEOUT)
    proc = subprocess.run([sys.executable, "-c", GREEDY_ANSWERS, job.checkpoint.uri], cwd=ROOT,
                          capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    before, after = result["before"], result["after"]
    assert after["answer"] != before["answer"], result
    # messages(1) is a training prompt: the adapter made its target answer more likely.
    assert after["target_loss"] < before["target_loss"], result


def test_dpo_raises_the_chosen_over_rejected_margin(client, sft_and_dpo):
    sft = client.get(sft_and_dpo[0])
    job = client.wait(sft_and_dpo[1], timeout=JOB_TIMEOUT)
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error
    assert job.started_at >= sft.finished_at > 0  # it waited for the SFT job
    metrics = job.progress.metrics
    # The margin is 0 at the first step (policy == reference) and grows as DPO trains.
    assert metrics["rewards/margins"] > 0, metrics
    assert metrics["rewards/chosen"] > metrics["rewards/rejected"]
    assert metrics["loss_last"] < metrics["loss_first"]
    manifest = json.loads((Path(job.checkpoint.uri) / "manifest.json").read_text())
    assert manifest["method"] == "dpo" and manifest["hyper_parameters"]["beta"] == pytest.approx(0.1)


def test_continue_from_a_parent_adapter(client, sft_and_dpo):
    parent = client.wait(sft_and_dpo[0], timeout=JOB_TIMEOUT).checkpoint
    job = client.start_job("sft", ["data/sft.jsonl"], output_name="student", run_dir="run", parent=parent,
                           hyper_parameters=dict(TINY, max_steps=1, lora_r=32), job_id="sft-continued")
    job = client.wait(job.job_id, timeout=JOB_TIMEOUT)
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error
    assert job.checkpoint.version == "v2"
    manifest = json.loads((Path(job.checkpoint.uri) / "manifest.json").read_text())
    assert manifest["parent"]["version"] == "v1" and manifest["parent"]["sha256"] == parent.sha256
    # The adapter's shape is the parent's (r=8), whatever the new job asked for.
    assert manifest["hyper_parameters"]["lora_r"] == 8 and manifest["hyper_parameters"]["lora_from_parent"]
    # It continued from the parent: its first loss is already below the fresh adapter's first loss.
    parent_first = client.get(sft_and_dpo[0]).progress.metrics["loss_first"]
    assert job.progress.metrics["loss_first"] < parent_first


def _adapted_layers(folder: str) -> set[int]:
    from safetensors import safe_open

    with safe_open(str(Path(folder) / "adapter_model.safetensors"), framework="pt") as f:
        return {int(key.split(".layers.")[1].split(".")[0]) for key in f.keys()}


def test_lora_on_the_last_layers_only_and_a_child_keeps_its_parents_layers(client, sft_and_dpo):
    client.wait(sft_and_dpo[1], timeout=JOB_TIMEOUT)
    top = client.start_job("sft", ["data/sft.jsonl"], output_name="student-top", run_dir="run", job_id="sft-top",
                           hyper_parameters=dict(TINY, max_steps=1, lora_last_layers=2))
    top = client.wait(top.job_id, timeout=JOB_TIMEOUT)
    assert top.state == S.JOB_STATE_SUCCEEDED, top.error
    assert _adapted_layers(top.checkpoint.uri) == {28, 29}  # SmolLM2-135M has 30 decoder layers
    config = json.loads((Path(top.checkpoint.uri) / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [28, 29]
    manifest = json.loads((Path(top.checkpoint.uri) / "manifest.json").read_text())
    assert manifest["hyper_parameters"]["lora_last_layers"] == 2

    child = client.start_job("sft", ["data/sft.jsonl"], output_name="student-top", run_dir="run",
                             parent=top.checkpoint, job_id="sft-top-child",
                             hyper_parameters=dict(TINY, max_steps=1, lora_last_layers=0))
    child = client.wait(child.job_id, timeout=JOB_TIMEOUT)
    assert child.state == S.JOB_STATE_SUCCEEDED, child.error
    assert _adapted_layers(child.checkpoint.uri) == {28, 29}
    manifest = json.loads((Path(child.checkpoint.uri) / "manifest.json").read_text())
    assert manifest["hyper_parameters"]["lora_last_layers"] == 2 and manifest["hyper_parameters"]["lora_from_parent"]

    too_many = client.start_job("sft", ["data/sft.jsonl"], output_name="student-top", run_dir="run",
                                job_id="sft-top-31", hyper_parameters=dict(TINY, max_steps=1, lora_last_layers=31))
    too_many = client.wait(too_many.job_id, timeout=JOB_TIMEOUT)
    assert too_many.state == S.JOB_STATE_FAILED
    assert "lora_last_layers=31, but the base model has 30 decoder layers" in too_many.error, too_many.error


def test_kto_trains_from_dpo_pairs(client, sft_and_dpo):
    client.wait(sft_and_dpo[1], timeout=JOB_TIMEOUT)
    job = client.start_job("kto", ["data/dpo.jsonl"], output_name="student-kto", run_dir="run",
                           hyper_parameters=dict(TINY, max_steps=2, batch_size=2, learning_rate=5e-4, beta=0.1),
                           job_id="kto")
    job = client.wait(job.job_id, timeout=JOB_TIMEOUT)
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error
    assert job.progress.metrics["examples"] == 8  # 4 pairs -> 4 desirable + 4 undesirable
    assert "kl" in job.progress.metrics and job.checkpoint.version == "v1"


def test_cancel_stops_a_running_job_without_a_checkpoint(client, workdir):
    job = client.start_job("sft", ["data/sft.jsonl"], output_name="cancelled", run_dir="run",
                           hyper_parameters=dict(TINY, max_steps=500), job_id="to-cancel")
    wait_for(lambda: client.get(job.job_id).progress.step >= 1, timeout=JOB_TIMEOUT, interval=0.5,
             what="the first training step")
    assert client.cancel(job.job_id).state in (S.JOB_STATE_RUNNING, S.JOB_STATE_CANCELLED)
    job = client.wait(job.job_id, timeout=JOB_TIMEOUT)
    assert job.state == S.JOB_STATE_CANCELLED and not job.HasField("checkpoint")
    assert job.progress.step < 500
    assert not (workdir / "runs" / "run" / "checkpoints" / "cancelled").exists()


def _serve(state: Path, runs: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    port_file = state.parent / f"port-{len(list(state.parent.glob('port-*')))}"
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "trainer", "serve", "--port", "0", "--port-file", str(port_file),
         "--state-dir", str(state), "--runs-dir", str(runs), "--device", "cpu", "--log-format", "text"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    port = wait_for(lambda: port_file.exists() and port_file.read_text().strip(), timeout=60, what="trainer port")
    return proc, int(port)


def test_sigkill_leaves_no_checkpoint_and_a_restart_reports_the_job_failed(tmp_path):
    runs, state = tmp_path / "runs", tmp_path / "state"
    write_jsonl(runs / "data" / "sft.jsonl", sft_rows(4))
    log_path = tmp_path / "trainer.log"
    proc, port = _serve(state, runs, log_path)
    try:
        with TrainerClient(f"127.0.0.1:{port}") as client:
            client.start_job("sft", ["data/sft.jsonl"], job_id="killed", hyper_parameters=dict(TINY, max_steps=200))
            client.start_job("sft", ["data/sft.jsonl"], job_id="next", hyper_parameters=dict(TINY, max_steps=1))
            wait_for(lambda: client.get("killed").progress.message == "training", timeout=JOB_TIMEOUT,
                     interval=0.2, what="training to start")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()

    names = runs / "checkpoints" / "student"
    assert not names.exists() or not any(p.name.startswith("v") for p in names.iterdir())
    # A kill during a checkpoint write leaves a hidden temp directory, never a v<k>: plant one.
    partial = names / ".v1.q9z8.partial"
    partial.mkdir(parents=True)
    (partial / "adapter_config.json").write_text("{")

    proc, port = _serve(state, runs, log_path)
    try:
        with TrainerClient(f"127.0.0.1:{port}") as client:
            killed = client.get("killed")
            assert killed.state == S.JOB_STATE_FAILED and killed.error == RESTARTED_MESSAGE
            assert not partial.exists()
            follow_up = client.wait("next", timeout=JOB_TIMEOUT)  # queued before the kill: run after it
            assert follow_up.state == S.JOB_STATE_SUCCEEDED, follow_up.error
            assert follow_up.checkpoint.version == "v1"
            manifest, digest = checkpoints.read_manifest(follow_up.checkpoint.uri)
            assert digest == follow_up.checkpoint.sha256
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
