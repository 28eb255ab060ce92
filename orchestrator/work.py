"""What each phase of a run asked of the machine: tokens prefilled, decoded and trained.

The student's answers say how many prompt tokens each step had and how many of them came from a
cache instead of being prefilled (ActResult.cached_prompt_tokens); the trainer's finished job says
how many tokens it trained on. Each phase's outputs in state.json carry its tally under "work", the
report shows them per phase, and bench/run_profile.py turns them into FLOP/s against a measured
matrix-multiply peak.
"""

from __future__ import annotations

import threading

from leap.v1 import student_pb2, trainer_pb2


class StudentWork:
    """Counts the student's work over one phase (thread-safe: episodes run in parallel)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.steps = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.decoded_tokens = 0
        self.reasons_cut = 0

    def add(self, result: student_pb2.ActResult) -> None:
        prompt = max(0, result.prompt_tokens)
        with self._lock:
            self.steps += 1
            self.prompt_tokens += prompt
            self.cached_tokens += min(max(0, result.cached_prompt_tokens), prompt)
            self.decoded_tokens += len(result.completion_token_ids)
            self.reasons_cut += bool(result.reason_cut)

    def snapshot(self) -> dict[str, int]:
        """The tally for state.json; empty when the phase asked the student nothing."""
        with self._lock:
            if not self.steps:
                return {}
            return {"student_steps": self.steps, "prompt_tokens": self.prompt_tokens,
                    "prefilled_tokens": self.prompt_tokens - self.cached_tokens,
                    "cached_prompt_tokens": self.cached_tokens, "decoded_tokens": self.decoded_tokens,
                    "reasons_cut": self.reasons_cut}


def training_work(job: trainer_pb2.Job) -> dict[str, float]:
    """Tokens trained and training seconds of a finished job, as its trainer reported them."""
    metrics = job.progress.metrics
    out = {}
    for key, name in (("train_tokens", "trained_tokens"), ("train_seconds", "train_seconds"),
                      ("steps", "train_steps"), ("shared_prefix_tokens", "shared_prefix_tokens"),
                      ("backward_layer_share", "backward_layer_share")):
        if key in metrics:
            out[name] = round(float(metrics[key]), 3)
    return out


#: The work counters a phase may carry, in the order the report shows them.
WORK_COLUMNS = ("student_steps", "prefilled_tokens", "cached_prompt_tokens", "decoded_tokens", "trained_tokens")

#: Counters the report shows as a column only when some phase has one above zero: key, title, note.
OPTIONAL_WORK_COLUMNS = (
    ("reasons_cut", "reasons cut",
     "reasons cut: student steps whose reason ran out of student.max_reason_tokens before the ACTION label, so "
     "the action was chosen after a cut reason; an untrained student, which never writes the label, always has "
     "them, but a trained one with a share of them has a budget smaller than the reasons it was trained on "
     "(raise student.max_reason_tokens)"),
)
