"""One decode step of the local backend, row by row: pick each row's next token, stop rows that are done.

Every row has its own temperature, top_p, max_new_tokens and torch.Generator, so a seeded row draws
the same random numbers whatever else is in the batch (reproducibility; exact in fp32, while in bf16
another batch shape may round differently and, rarely, flip a token). A row stops at the end of its
ACTION line (or at eos, or at max_new_tokens); a constrained row is advanced by `ActionConstraint`.

A row whose scores are not finite (weights gone bad) or whose sampling or stopping check fails is
failed on its own and leaves the batch; the other rows go on.
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import Callable

import torch

from services.runtime.errors import FailedPrecondition, Internal
from services.student import metrics
from services.student.backends.batching import Batch, Row, fail, resolve, select_rows
from services.student.backends.constrained import ActionConstraint
from services.student.prompts import action_line_complete
from services.student.types import Generation, Sampling

log = logging.getLogger("leap.student.local")


def generator_for(sampling: Sampling, device: str) -> torch.Generator | None:
    """A sampled row's own generator, seeded with its seed (a random one when 0); None for greedy rows."""
    if sampling.greedy:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(sampling.seed if sampling.seed else secrets.randbits(63))
    return generator


def sample_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """A token drawn from one row's scores with its temperature and top_p (nucleus) cut."""
    probs = torch.softmax(logits / max(sampling.temperature, 1e-5), dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        drop = (cumulative - sorted_probs) >= sampling.top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def non_finite_error(row: Row) -> Exception:
    """The error of a row whose scores are NaN or inf: the adapter's fault, or the base model's."""
    version = row.request.version
    if row.request.adapter_handle:
        return FailedPrecondition(
            f"the model's scores for this row are non-finite (NaN or inf) on adapter version {version!r}: "
            "its weights are broken; unload it and load a sound checkpoint, or pin another version")
    return Internal("the model's scores for this row are non-finite (NaN or inf) on the base model")


class RowDecoder:
    """Picks tokens, finishes and fails rows for one tokenizer. `lock` guards the shared tokenizer;
    `on_cancelled` counts a row dropped because its request was cancelled."""

    def __init__(self, tokenizer, lock: threading.Lock, eos_ids: set[int], constraint: ActionConstraint, *,
                 stop_at_action_line: bool, on_cancelled: Callable[[], None]):
        self.tokenizer = tokenizer
        self.lock = lock
        self.eos_ids = eos_ids
        self.constraint = constraint
        self.stop_at_action_line = stop_at_action_line
        self.on_cancelled = on_cancelled
        #: Rows failed on their own (the batch went on).
        self.failed_rows = 0

    def step(self, batch: Batch, *, trim: bool) -> Batch | None:
        """Pick each row's next token, finish rows that are done, drop them from the batch.

        A row whose scores are not finite, or whose sampling or stopping check fails, fails on its own
        (its caller gets the error) and leaves the batch like a finished row; the others go on.
        `trim`: drop cache columns that became padding for every remaining row.
        """
        chosen = self.select_tokens(batch)
        keep: list[int] = []
        for i, (row, token) in enumerate(zip(batch.rows, chosen)):
            try:
                if isinstance(token, Exception):
                    raise token
                if row.choice is not None:
                    reason = self.constraint.step(row, token)
                else:
                    row.tokens.append(token)
                    reason = self.finish_reason(row, token)
                if reason is not None:
                    self.complete(row, reason)
            except Exception as exc:  # noqa: BLE001 - this row fails; its batch companions go on
                self.fail_row(row, exc)
                continue
            if reason is None:
                keep.append(i)
        return select_rows(batch, keep, trim=trim)

    def select_tokens(self, batch: Batch) -> list[int | Exception]:
        """Each row's next token, or the exception that row failed with."""
        logits = batch.logits
        chosen: list[int | Exception] = logits.argmax(dim=-1).tolist()
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        for i, row in enumerate(batch.rows):
            if not finite[i]:
                chosen[i] = non_finite_error(row)
                continue
            try:
                chosen[i] = self.select_token(logits[i], row, chosen[i])
            except Exception as exc:  # noqa: BLE001 - reported on this row alone
                chosen[i] = exc
        return chosen

    def select_token(self, logits: torch.Tensor, row: Row, greedy_token: int) -> int:
        sampling = row.request.sampling
        if self.constraint.restricted(row.choice):
            return self.constraint.choose(logits, row.choice.node, sampling, row.generator)
        if sampling.greedy:
            return greedy_token
        return sample_token(logits, sampling, row.generator)

    def finish_reason(self, row: Row, token: int) -> str | None:
        if row.request.cancelled.is_set():
            return "cancelled"
        if token in self.eos_ids:
            return "eos"
        if len(row.tokens) >= row.request.sampling.max_new_tokens:
            return "length"
        if self.stop_at_action_line:
            with self.lock:
                if "\n" not in self.tokenizer.decode([token]):
                    return None
                text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            if action_line_complete(text):
                return "action_line"
        return None

    def complete(self, row: Row, reason: str) -> None:
        if reason == "cancelled":
            row.future.cancel()
            self.on_cancelled()
            return
        with self.lock:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        metrics.GENERATED_TOKENS.inc(len(row.tokens))
        metrics.PROMPT_TOKENS.inc(row.request.prompt.token_count)
        resolve(row.future, Generation(text=text, token_ids=list(row.tokens),
                                       prompt_tokens=row.request.prompt.token_count,
                                       batch_size=row.max_batch, finish_reason=reason,
                                       cached_prompt_tokens=row.cached_tokens,
                                       reason_cut=bool(row.choice is not None and row.choice.reason_cut)))

    def fail_row(self, row: Row, exc: Exception) -> None:
        """Fail one row on its own (it leaves the batch; the others go on)."""
        self.failed_rows += 1
        metrics.DROPPED_ROWS.labels("failed").inc()
        if isinstance(exc, (FailedPrecondition, Internal)) and "non-finite" in exc.message:
            log.warning("a row failed alone: %s", exc.message, extra={"version": row.request.version})
        else:
            log.error("a row failed alone", exc_info=exc, extra={"version": row.request.version})
            exc = Internal(f"generation failed for this row: {type(exc).__name__}: {str(exc)[:200]}")
        fail(row.future, exc)
