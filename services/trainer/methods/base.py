"""What a training method is: everything the trainer and the orchestrator need to know about one.

A `TrainingMethod` is torch-free data plus small functions; the hooks that need torch or TRL
(`trainer_config`, `trainer_class`) import them when called, so the orchestrator, the trainer's
server and its client can read the table without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # annotations only: jobs.py and datasets.py import this module
    from services.trainer.datasets import Example
    from services.trainer.jobs import HyperParameters

#: Label of a token the loss ignores (transformers' convention): the prompt tokens of an SFT row.
IGNORE_INDEX = -100


class RowReader:
    """One dataset row being checked: the fields every schema shares, and typed getters that raise
    DatasetError("where: why") for the method-specific ones."""

    def __init__(self, row: dict, where: str, messages: list[dict[str, str]], meta: dict[str, Any], fail):
        self.row = row
        self.where = where
        self.messages = messages
        self.meta = meta
        self.fail: Callable[[str], Any] = fail

    def has(self, key: str) -> bool:
        return key in self.row

    def text(self, key: str) -> str:
        """A non-empty string field."""
        value = self.row.get(key)
        if not isinstance(value, str) or not value.strip():
            self.fail(f"'{key}' must be a non-empty string" + ("" if key in self.row else " (missing)"))
        return value

    def pair(self) -> tuple[str, str]:
        """The ('chosen', 'rejected') pair of a preference row; the two must differ."""
        chosen, rejected = self.text("chosen"), self.text("rejected")
        if chosen == rejected:
            self.fail("'chosen' and 'rejected' are identical: the pair carries no preference")
        return chosen, rejected

    def boolean(self, key: str, meaning: str) -> bool:
        value = self.row.get(key)
        if not isinstance(value, bool):
            self.fail(f"'{key}' must be {meaning}" + ("" if key in self.row else " (missing)"))
        return value


@dataclass(frozen=True)
class TrainingMethod:
    """One training method.

    name             the method's name in requests, configs, manifests and logs ("sft")
    proto            its leap.v1.TrainingMethod number (trainer_pb2.TRAINING_METHOD_SFT)
    title            how messages name it ("SFT")
    default_learning_rate   the learning rate of a job that leaves it unset
    examples(reader) the Examples of one dataset row (RowReader: messages, meta, typed getters)
    encode(prompt, target, example) -> (row, targets): the token-level training row of one example
                     (prompt: its prompt token ids; target(text): a target's token ids with EOS) and
                     the target token lists it holds (their lengths decide whether it fits max_length)
    prepare_rows(rows, hp)  the encoded rows as the TRL trainer reads them (order, extra columns)
    hyper_parameter_problems(hp)  method-specific problems with resolved hyper-parameters
    trainer_config(common, hp)    the TRL config: `common` holds the arguments every method shares
    trainer_class()  the TRL trainer class to instantiate (fed pre-tokenised rows)
    correction_rows(messages, corrected, original, meta)  the dataset rows the orchestrator writes
                     for one step the teacher corrected (corrected: the teacher's target text,
                     original: the student's own), in this method's schema
    trains_on_unchanged_steps  whether a step the teacher kept may become a row (run option
                     keep_unchanged_steps): only for methods that imitate a target, not for
                     preference methods, where a kept step has nothing to prefer
    """

    name: str
    proto: int
    title: str
    default_learning_rate: float
    examples: Callable[[RowReader], list["Example"]]
    encode: Callable[[list[int], Callable[[str], list[int]], "Example"], tuple[dict, tuple[list[int], ...]]]
    trainer_config: Callable[[dict, "HyperParameters"], Any]
    trainer_class: Callable[[], type]
    correction_rows: Callable[[list[dict], str, str, dict], list[dict]]
    trains_on_unchanged_steps: bool = False
    prepare_rows: Callable[[list[dict], "HyperParameters"], list[dict]] = field(default=lambda rows, hp: rows)
    hyper_parameter_problems: Callable[["HyperParameters"], list[str]] = field(default=lambda hp: [])
