"""Guided action decoding (`constrain_action`) in the local backend, on the real model in fp32.

The action of a constrained row is chosen among its candidates: free reason text first (the model's
own tokens, unchanged), then the ACTION label (the model's, or written by the server when the reason
budget runs out or the model ends early), then one token at a time restricted to the candidates'
prefix tree. The reference for every restricted choice is a fresh full forward pass over the prompt
and everything the row holds so far: the constrained argmax must be the one that pass gives, which
also proves that tokens the server wrote went through the KV cache.
"""

from __future__ import annotations

import pytest
import torch

from services.student.backends.constrained import END, determined_tail, prefix_tree
from services.student.backends.local import LocalBackend, LocalOptions
from services.student.prompts import parse_output, render_messages
from services.student.types import CheckpointSpec, GenerationRequest, Sampling
from tests.student.helpers import FIXED_ACTION, FIXED_REASON, STATES

pytestmark = pytest.mark.model

# Candidates with shared prefixes ("go to cabinet 1" is a prefix of "go to cabinet 10") and a long
# unique one ("take kettle 1 from stoveburner 1").
CANDIDATES = ["go to stoveburner 1", "go to stoveburner 2", "go to cabinet 1", "go to cabinet 10",
              "take kettle 1 from stoveburner 1", "open cabinet 1", "inventory", "look"]


@pytest.fixture(scope="module")
def backend(smollm2):
    with smollm2.borrow() as loaded:
        b = LocalBackend(LocalOptions(dtype="float32", max_batch_size=8), loader=smollm2.loader(loaded))
        b.start()
        yield b
        b.close()


def _request(backend, messages, *, candidates=CANDIDATES, handle=None, **sampling):
    sampling.setdefault("max_new_tokens", 40)
    return GenerationRequest(prompt=backend.encode_prompt(messages), sampling=Sampling(**sampling),
                             version="base", adapter_handle=handle, candidates=tuple(candidates))


def _state_messages(i: int, candidates=CANDIDATES):
    s = STATES[i]
    return render_messages(s["env"], s["goal"], s["history"], s["observation"], candidates)


def _label_end(backend, tokens: list[int]) -> int:
    """Index just after the ACTION label's ":" in the generated tokens."""
    for k in range(len(tokens), 0, -1):
        text = backend.tokenizer.decode(tokens[:k], skip_special_tokens=True)
        if text.rstrip().upper().endswith("ACTION:") and backend.tokenizer.decode(tokens[k - 1:k]).endswith(":"):
            return k
    raise AssertionError("no ACTION label in " + repr(backend.tokenizer.decode(tokens)))


def _check_choices_against_a_full_forward(backend, request, tokens: list[int]) -> None:
    """Every restricted choice is the argmax, among the tree's options, of a fresh forward pass."""
    start = _label_end(backend, tokens)
    ids = list(request.prompt.ids) + tokens
    with torch.inference_mode():
        logits = backend.model(input_ids=torch.tensor([ids])).logits[0].float()
    tree = prefix_tree([list(x) for x in backend.tokenizer(
        [" " + c for c in request.candidates], add_special_tokens=False)["input_ids"]])
    eos = backend.tokenizer.eos_token_id
    node, k = tree, start
    while k < len(tokens) or END in node:
        if determined_tail(node) is not None:
            assert tokens[k:] == determined_tail(node)  # appended without a forward pass
            return
        options = [t for t in node if t != END] + ([eos] if END in node else [])
        scores = logits[len(request.prompt.ids) + k - 1, options]
        best = options[int(scores.argmax())]
        if best == eos:
            assert k == len(tokens), "the row went on after eos won"
            return
        assert tokens[k] == best, f"choice {k - start} of the action is not the model's argmax"
        node, k = node[best], k + 1
    assert False, "the action ended inside the tree"


@pytest.mark.parametrize("budget", [1, 6, 40])
def test_greedy_constrained_rows_end_with_a_candidate_the_model_prefers(backend, budget):
    requests = [_request(backend, _state_messages(i), constrain_action=True, max_reason_tokens=budget)
                for i in range(len(STATES))]
    free = [_request(backend, _state_messages(i), max_new_tokens=budget) for i in range(len(STATES))]
    results = [f.result(timeout=300) for f in backend.submit(requests + free)]
    for request, generation, plain in zip(requests, results[:len(STATES)], results[len(STATES):]):
        parsed = parse_output(generation.text, CANDIDATES)
        assert generation.finish_reason == "action_choice"
        assert parsed.valid and parsed.action in CANDIDATES
        # The label is the model's own ("Action:" counts) or the server's ("ACTION:").
        assert generation.text.upper().endswith("ACTION: " + parsed.action.upper())
        # The reason is the model's own text: what it writes unconstrained, up to the label.
        reason_part = generation.text[:generation.text.upper().rindex("ACTION:")].rstrip("\n")
        assert plain.text.startswith(reason_part) or reason_part.startswith(plain.text.rstrip("\n"))
        _check_choices_against_a_full_forward(backend, request, list(generation.token_ids))


def test_sampled_constrained_rows_are_valid_and_reproducible(backend):
    def run():
        requests = [_request(backend, _state_messages(i % len(STATES)), constrain_action=True, temperature=1.2,
                             seed=100 + i, max_reason_tokens=8) for i in range(6)]
        return [f.result(timeout=300) for f in backend.submit(requests)]

    first, second = run(), run()
    assert [g.token_ids for g in first] == [g.token_ids for g in second]
    for generation in first:
        assert parse_output(generation.text, CANDIDATES).action in CANDIDATES


def test_unconstrained_companions_are_unchanged_by_constrained_rows(backend):
    alone = [f.result(timeout=300).token_ids for f in
             backend.submit([_request(backend, _state_messages(i), max_new_tokens=12) for i in range(3)])]
    mixed = backend.submit([_request(backend, _state_messages(i), max_new_tokens=12) for i in range(3)]
                           + [_request(backend, _state_messages(i), constrain_action=True, max_reason_tokens=3)
                              for i in range(3)])
    assert [f.result(timeout=300).token_ids for f in mixed[:3]] == alone


def test_a_row_without_candidates_or_constraint_is_decoded_freely(backend):
    request = _request(backend, _state_messages(0), candidates=(), constrain_action=True, max_new_tokens=6)
    generation = backend.submit([request])[0].result(timeout=300)
    assert generation.finish_reason in ("length", "eos", "action_line") and len(generation.token_ids) <= 6


def test_a_trained_adapter_writes_its_own_label_and_the_constraint_keeps_its_answer(backend, trained_adapter):
    path, sha = trained_adapter
    handle = backend.install_adapter(backend.prepare_adapter(CheckpointSpec(version="v1", uri=str(path), sha256=sha)),
                                     "fixed")
    candidates = ["go to cabinet 1", "go to countertop 1", "go to fridge 1", "open fridge 1", "look", "inventory"]
    request = _request(backend, _state_messages(0, candidates), candidates=candidates, handle=handle,
                       constrain_action=True, max_reason_tokens=40)
    generation = backend.submit([request])[0].result(timeout=300)
    assert generation.text == f"REASON: {FIXED_REASON}\nACTION: {FIXED_ACTION}"
    assert generation.finish_reason == "action_choice"
