"""Direct preference optimisation: prefer `chosen` (the teacher's correction) over `rejected`
(the student's original).

Row: ``{"messages": [...], "chosen": str, "rejected": str, "meta": {...optional}}``; the two differ.
The reference policy is the starting policy (training.py).
"""

from __future__ import annotations

from leap.v1 import trainer_pb2
from services.trainer.methods.base import RowReader, TrainingMethod


def _examples(reader: RowReader):
    from services.trainer.datasets import Example

    chosen, rejected = reader.pair()
    return [Example(reader.messages, reader.where, chosen=chosen, rejected=rejected, meta=reader.meta)]


def _encode(prompt, target, example):
    chosen, rejected = target(example.chosen), target(example.rejected)
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}, (chosen, rejected)


def _trainer_config(common, hp):
    from trl import DPOConfig

    return DPOConfig(**common, beta=hp.beta)


def _trainer_class():
    from services.trainer.training import _TokenizedDPOTrainer

    return _TokenizedDPOTrainer


def _correction_rows(messages, corrected, original, meta):
    return [{"messages": messages, "chosen": corrected, "rejected": original, "meta": meta}]


METHOD = TrainingMethod(
    name="dpo", proto=trainer_pb2.TRAINING_METHOD_DPO, title="DPO", default_learning_rate=5e-7,
    examples=_examples, encode=_encode, trainer_config=_trainer_config, trainer_class=_trainer_class,
    correction_rows=_correction_rows,
)
