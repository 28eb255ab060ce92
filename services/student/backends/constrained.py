"""Constrained action decoding: a row with `constrain_action` ends with one of its candidate actions.

Its reason is free text. Once the row writes the ACTION label (or has it written for it, when the
reason runs out of tokens or ends with eos before any label), every token is restricted to a prefix
tree of the candidates' token ids (as tokenized after "ACTION:"), and the row ends as soon as one
candidate is complete, or as soon as its remaining tokens are determined (they are appended without
further forward passes).
"""

from __future__ import annotations

import threading
from collections import deque

import torch

from services.student.prompts import ends_with_action_label
from services.student.types import GenerationRequest, Sampling

#: Marks a complete candidate inside an action prefix tree.
END = -1
#: Trailing tokens decoded to look for the ACTION label a constrained row waits for.
LABEL_WINDOW = 8


class ActionChoice:
    """A constrained row's action state: the candidates' prefix tree and where the row is in it.

    `tree` maps a token id to its subtree; `END` in a subtree means a candidate ends there.
    `forced` holds label tokens the server writes for the row, fed one per step.
    """

    __slots__ = ("tree", "node", "forced", "free_tokens", "reason_cut")

    def __init__(self, tree: dict):
        self.tree = tree
        self.node: dict | None = None  # None: still in the free-text reason
        self.forced: deque[int] = deque()
        self.free_tokens = 0
        self.reason_cut = False  # the reason budget ran out and the server wrote the label


def prefix_tree(sequences: list[list[int]]) -> dict:
    """The prefix tree of token sequences (empty ones are left out)."""
    tree: dict = {}
    for ids in sequences:
        if not ids:
            continue
        node = tree
        for token in ids:
            node = node.setdefault(token, {})
        node[END] = {}
    return tree


def determined_tail(node: dict) -> list[int] | None:
    """The tokens that finish the only candidate left under `node`, or None while there is a choice."""
    tail: list[int] = []
    while True:
        children = [t for t in node if t != END]
        if END in node:
            return tail if not children else None
        if len(children) != 1:
            return None
        tail.append(children[0])
        node = node[children[0]]


class ActionConstraint:
    """Constrained decoding for one tokenizer: builds rows' choices and advances them token by token.

    Rows are duck-typed: `request` (a GenerationRequest), `tokens` (ids generated so far) and
    `choice` (an ActionChoice). `lock` guards the tokenizer, which other threads share.
    """

    def __init__(self, tokenizer, lock: threading.Lock, eos_ids: set[int]):
        self.tokenizer = tokenizer
        self.lock = lock
        self.eos_ids = eos_ids
        vocab = tokenizer.get_vocab()
        #: Tokens whose text has a ":" (may end an ACTION label).
        self.colon_ids = frozenset(i for token, i in vocab.items() if ":" in token)
        #: After a newline? -> ids of the ACTION label the server writes.
        self.label_ids = {
            True: list(tokenizer("ACTION:", add_special_tokens=False)["input_ids"]),
            False: list(tokenizer("\nACTION:", add_special_tokens=False)["input_ids"]),
        }

    def choice_for(self, request: GenerationRequest) -> ActionChoice | None:
        """The prefix tree of a constrained row's candidates (None for a row that is not constrained)."""
        if not request.sampling.constrain_action or not request.candidates:
            return None
        with self.lock:
            encoded = self.tokenizer([" " + " ".join(c.split()) for c in request.candidates],
                                     add_special_tokens=False)["input_ids"]
        tree = prefix_tree([list(ids) for ids in encoded])
        return ActionChoice(tree) if tree else None

    @staticmethod
    def restricted(choice: ActionChoice | None) -> bool:
        """True when the row's next token must be chosen in its candidates' tree."""
        return choice is not None and choice.node is not None and not choice.forced

    def choose(self, logits: torch.Tensor, node: dict, sampling: Sampling, generator: torch.Generator | None) -> int:
        """The next action token among `node`'s children (`END` when eos wins and a candidate ends here)."""
        options = [t for t in node if t != END]
        eos = next(iter(self.eos_ids), None) if END in node else None
        ids = options + ([eos] if eos is not None else [])
        scores = logits[torch.tensor(ids, dtype=torch.long, device=logits.device)]
        if sampling.greedy:
            pick = int(scores.argmax())
        else:
            probs = torch.softmax(scores / max(sampling.temperature, 1e-5), dim=-1)
            pick = int(torch.multinomial(probs, 1, generator=generator).item())
        return END if pick >= len(options) else options[pick]

    def step(self, row, token: int) -> str | None:
        """Advance a constrained row by the sampled `token`; the finish reason once it is done."""
        choice = row.choice
        if row.request.cancelled.is_set():
            return "cancelled"
        if choice.forced:  # the server is writing the ACTION label: the sampled token is ignored
            return self._write_label_token(row)
        if choice.node is not None:  # inside the action: `token` was restricted to the tree
            if token == END:
                return "action_choice"
            row.tokens.append(token)
            choice.node = choice.node[token]
            tail = determined_tail(choice.node)
            if tail is not None:
                row.tokens.extend(tail)
                return "action_choice"
            return None
        # Free reason text.
        if token not in self.eos_ids:
            row.tokens.append(token)
            choice.free_tokens += 1
            if token in self.colon_ids:
                with self.lock:
                    tail_text = self.tokenizer.decode(row.tokens[-LABEL_WINDOW:], skip_special_tokens=True)
                if len(row.tokens) <= LABEL_WINDOW:
                    tail_text = "\n" + tail_text  # the window reaches the start of the answer
                if ends_with_action_label(tail_text):
                    choice.node = choice.tree
                    return self._finish_if_determined(row)
            sampling = row.request.sampling
            if choice.free_tokens < (sampling.max_reason_tokens or sampling.max_new_tokens):
                return None
            # The reason budget is spent without a label: the server writes "ACTION:" from the next
            # step on (this step's token still has to go through the model).
            choice.reason_cut = True
            choice.forced.extend(self.label_ids[self._ends_line(row)])
            return None
        # eos before any label: the label replaces it.
        choice.forced.extend(self.label_ids[self._ends_line(row)])
        return self._write_label_token(row)

    def _write_label_token(self, row) -> str | None:
        """Append the next token of the label the server writes; enter the tree after the last one."""
        choice = row.choice
        row.tokens.append(choice.forced.popleft())
        if choice.forced:
            return None
        choice.node = choice.tree
        return self._finish_if_determined(row)

    def _ends_line(self, row) -> bool:
        if not row.tokens:
            return True
        with self.lock:
            return self.tokenizer.decode(row.tokens[-1:]).endswith("\n")

    @staticmethod
    def _finish_if_determined(row) -> str | None:
        tail = determined_tail(row.choice.node)
        if tail is None:
            return None
        row.tokens.extend(tail)  # a single candidate: nothing left to choose
        return "action_choice"
