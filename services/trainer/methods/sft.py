"""Supervised fine-tuning: imitate a completion.

Row: ``{"messages": [...], "completion": "REASON: ...\\nACTION: ...", "meta": {...optional}}``.
The loss covers the completion's tokens only (the prompt's labels are IGNORE_INDEX).
"""

from __future__ import annotations

from leap.v1 import trainer_pb2
from services.trainer.methods.base import IGNORE_INDEX, RowReader, TrainingMethod


def _examples(reader: RowReader):
    from services.trainer.datasets import Example

    return [Example(reader.messages, reader.where, completion=reader.text("completion"), meta=reader.meta)]


def _encode(prompt, target, example):
    completion = target(example.completion)
    return {"input_ids": prompt + completion, "labels": [IGNORE_INDEX] * len(prompt) + completion}, (completion,)


def _trainer_config(common, hp):
    from trl import SFTConfig

    return SFTConfig(**common, packing=False)


def _trainer_class():
    from services.trainer.training import _TargetOnlySFTTrainer

    return _TargetOnlySFTTrainer


def _correction_rows(messages, corrected, original, meta):
    return [{"messages": messages, "completion": corrected, "meta": meta}]


METHOD = TrainingMethod(
    name="sft", proto=trainer_pb2.TRAINING_METHOD_SFT, title="SFT", default_learning_rate=3e-5,
    examples=_examples, encode=_encode, trainer_config=_trainer_config, trainer_class=_trainer_class,
    correction_rows=_correction_rows, trains_on_unchanged_steps=True,
)
