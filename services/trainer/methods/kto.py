"""Kahneman-Tversky optimisation: a desirable (``label: true``) or undesirable (``false``) completion.

Row: ``{"messages": [...], "completion": str, "label": bool, "meta": {...optional}}``. A KTO job also
accepts DPO rows ("KTO from the same data"): each pair becomes two examples, the chosen one
desirable and the rejected one undesirable.
"""

from __future__ import annotations

import random

from leap.v1 import trainer_pb2
from services.trainer.methods.base import RowReader, TrainingMethod


def _examples(reader: RowReader):
    from services.trainer.datasets import Example

    if reader.has("chosen") or reader.has("rejected"):
        chosen, rejected = reader.pair()
        return [Example(reader.messages, reader.where, completion=chosen, label=True, meta=reader.meta),
                Example(reader.messages, reader.where, completion=rejected, label=False, meta=reader.meta)]
    completion = reader.text("completion")
    label = reader.boolean("label", "true (desirable) or false (undesirable)")
    return [Example(reader.messages, reader.where, completion=completion, label=label, meta=reader.meta)]


def _encode(prompt, target, example):
    completion = target(example.completion)
    return {"prompt_ids": prompt, "completion_ids": completion, "label": bool(example.label)}, (completion,)


def with_kl_completions(rows: list[dict], hp) -> list[dict]:
    """Shuffle KTO rows (TRL reads them in order) and add the mismatched completions of its KL estimate.

    As TRL does for text data: within each batch, example i gets the completion of example i-1, so
    the KL term is estimated from (prompt, other completion) pairs of the same batch.
    """
    rows = list(rows)
    random.Random(hp.seed).shuffle(rows)
    for start in range(0, len(rows), hp.batch_size):
        chunk = rows[start:start + hp.batch_size]
        completions = [r["completion_ids"] for r in chunk]
        for row, kl in zip(chunk, completions[-1:] + completions[:-1], strict=True):
            row["KL_completion_ids"] = kl
    return rows


def _problems(hp) -> list[str]:
    if 0 < hp.batch_size < 2:
        return ["KTO needs batch_size >= 2: its KL estimate pairs each prompt with another example's "
                "completion in the same batch"]
    return []


def _trainer_config(common, hp):
    from trl import KTOConfig

    return KTOConfig(**common, beta=hp.beta)


def _trainer_class():
    from services.trainer.training import _TokenizedKTOTrainer

    return _TokenizedKTOTrainer


def _correction_rows(messages, corrected, original, meta):
    return [{"messages": messages, "completion": corrected, "label": True, "meta": meta},
            {"messages": messages, "completion": original, "label": False, "meta": meta}]


METHOD = TrainingMethod(
    name="kto", proto=trainer_pb2.TRAINING_METHOD_KTO, title="KTO", default_learning_rate=5e-7,
    examples=_examples, encode=_encode, trainer_config=_trainer_config, trainer_class=_trainer_class,
    correction_rows=_correction_rows,
    prepare_rows=with_kl_completions, hyper_parameter_problems=_problems,
)
