"""Constrained action decoding on its own: prefix trees, the ACTION label and the choice among candidates.

Rows are fed token by token as the scheduler would feed them (SmolLM2's tokenizer, no model).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest
import torch

from services.student.backends.batching import Row
from services.student.backends.constrained import END, ActionConstraint, determined_tail, prefix_tree
from services.student.types import EncodedPrompt, GenerationRequest, Sampling

CANDIDATES = ("go to cabinet 1", "go to cabinet 10", "open fridge 1", "look")


def test_prefix_tree_and_determined_tails():
    tree = prefix_tree([[1, 2, 3], [1, 2, 4], [1, 2], [5, 6, 7], []])
    assert set(tree) == {1, 5}
    assert determined_tail(tree) is None                  # a choice at the root
    assert determined_tail(tree[5]) == [6, 7]             # only one candidate left
    assert determined_tail(tree[1][2]) is None            # [1, 2] ends here, [1, 2, 3/4] go on
    assert END in tree[1][2] and determined_tail(tree[1][2][3]) == []
    assert prefix_tree([]) == {}


@pytest.fixture(scope="module")
def constraint(smollm2):
    return ActionConstraint(smollm2.tokenizer, threading.Lock(), {smollm2.tokenizer.eos_token_id})


def _ids(constraint: ActionConstraint, text: str) -> list[int]:
    return list(constraint.tokenizer(text, add_special_tokens=False)["input_ids"])


def _row(constraint: ActionConstraint, candidates=CANDIDATES, **sampling) -> Row:
    sampling = Sampling(constrain_action=True, max_new_tokens=sampling.pop("max_new_tokens", 64), **sampling)
    request = GenerationRequest(prompt=EncodedPrompt([], "", [1], 1), sampling=sampling, version="v",
                                adapter_handle=None, candidates=tuple(candidates))
    return Row(request, Future(), constraint.choice_for(request))


def _feed(constraint: ActionConstraint, row: Row, tokens: list[int]) -> str | None:
    reason = None
    for token in tokens:
        reason = constraint.step(row, token)
        if reason is not None:
            break
    return reason


def test_only_constrained_rows_with_candidates_get_a_choice(constraint):
    assert _row(constraint).choice is not None
    assert _row(constraint, candidates=()).choice is None
    request = GenerationRequest(prompt=EncodedPrompt([], "", [1], 1), sampling=Sampling(), version="v",
                                adapter_handle=None, candidates=CANDIDATES)
    assert constraint.choice_for(request) is None
    tree = _row(constraint).choice.tree
    assert set(tree) == {_ids(constraint, " " + c)[0] for c in CANDIDATES}  # tokenized as after "ACTION:"


def test_the_written_label_opens_the_tree_and_the_chosen_candidate_ends_the_row(constraint):
    row = _row(constraint)
    assert _feed(constraint, row, _ids(constraint, "The fridge may hold it.\nACTION:")) is None
    assert row.choice.node is row.choice.tree and constraint.restricted(row.choice)
    assert not row.choice.reason_cut  # the model wrote the label itself
    target = _ids(constraint, " open fridge 1")
    logits = torch.full((len(constraint.tokenizer),), -10.0)
    logits[target[0]] = 5.0
    first = constraint.choose(logits, row.choice.node, row.request.sampling, None)
    assert first == target[0]
    # "open fridge 1" is the only candidate starting with its first token: the rest is appended at once.
    assert constraint.step(row, first) == "action_choice"
    assert constraint.tokenizer.decode(row.tokens).endswith("ACTION: open fridge 1")


def test_a_spent_reason_budget_makes_the_server_write_the_label(constraint):
    row = _row(constraint, max_reason_tokens=3)
    word = _ids(constraint, " hmm")[0]
    assert _feed(constraint, row, [word, word]) is None and not row.choice.forced
    assert not row.choice.reason_cut
    assert constraint.step(row, word) is None  # the budget is spent: the label is queued
    assert row.choice.reason_cut  # ActResult.reason_cut: the action follows a cut reason
    label = list(row.choice.forced)
    assert label == constraint.label_ids[False]  # the reason did not end a line: "\nACTION:"
    ignored = _ids(constraint, " whatever")[0]
    assert _feed(constraint, row, [ignored] * (len(label) - 1)) is None
    assert constraint.step(row, ignored) is None  # the label's last token: the row enters the tree
    assert row.tokens == [word] * 3 + label and row.choice.node is row.choice.tree


def test_eos_before_any_label_is_replaced_by_the_label(constraint):
    row = _row(constraint, candidates=("look", "inventory"))
    eos = constraint.tokenizer.eos_token_id
    assert constraint.step(row, eos) is None
    assert eos not in row.tokens and row.tokens[0] == constraint.label_ids[True][0]  # empty answer: "ACTION:"
    while row.choice.forced:
        constraint.step(row, eos)
    assert row.choice.node is row.choice.tree
    assert not row.choice.reason_cut  # the model ended its reason itself; nothing was cut


def test_a_single_candidate_is_written_without_a_choice(constraint):
    row = _row(constraint, candidates=("inventory",))
    assert _feed(constraint, row, _ids(constraint, "ACTION:")) == "action_choice"
    assert constraint.tokenizer.decode(row.tokens) == "ACTION: inventory"


def test_choose_picks_end_when_eos_wins_where_a_candidate_is_complete(constraint):
    row = _row(constraint)
    _feed(constraint, row, _ids(constraint, "ACTION:"))
    for token in _ids(constraint, " go to cabinet 1"):
        assert constraint.step(row, token) is None
    assert END in row.choice.node  # "go to cabinet 1" is complete, "go to cabinet 10" goes on
    logits = torch.zeros(len(constraint.tokenizer))
    logits[constraint.tokenizer.eos_token_id] = 9.0
    assert constraint.choose(logits, row.choice.node, row.request.sampling, None) == END
    assert constraint.step(row, END) == "action_choice"


def test_sampled_choices_follow_the_rows_generator(constraint):
    tree = _row(constraint).choice.tree
    sampling = Sampling(temperature=1.0, seed=3)
    logits = torch.zeros(len(constraint.tokenizer))

    def draws(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [constraint.choose(logits, tree, sampling, generator) for _ in range(20)]

    assert draws(3) == draws(3)
    assert set(draws(3)) <= set(tree) and len(set(draws(3))) > 1  # uniform scores: several options drawn


def test_a_cancelled_row_stops(constraint):
    row = _row(constraint)
    row.request.cancelled.set()
    assert constraint.step(row, _ids(constraint, " hmm")[0]) == "cancelled"
