"""The trainer's job model in plain Python: what was asked (JobSpec), how it is going (Progress), and
what came of it (JobRecord). Nothing here imports torch or grpc; server.py translates to protobuf.

Hyper-parameters follow the proto's convention: a zero (or empty) field means LEAP's default, which
`HyperParameters.resolve(method)` fills in (LoRA r 128, alpha 64, dropout 0.05 on q/k/v/o; cosine
schedule; beta 0.01; 1 epoch; batch 4; max length 1024; warmup 0.03; the learning rate is the
method's own default: 3e-5 for SFT, 5e-7 for DPO/KTO, see services.trainer.methods).
Every value then has to lie in its range (`INT_RANGES`, `FLOAT_RANGES`): a job that asks for
rank 2^31-1 or 1e30 epochs is refused at StartJob, naming the field and its range, instead of
failing (or running for ever) on the worker.
"""

from __future__ import annotations

import enum
import re
from dataclasses import asdict, dataclass, field, fields, replace

from services.runtime.errors import InvalidArgument, quote
from services.runtime.numbers import is_finite_number
from services.trainer import methods

#: transformers' schedulers that need no argument besides the warmup (cosine_with_min_lr and
#: warmup_stable_decay need more, which a job cannot pass: every job naming them would fail).
#: The errors of a job that did not fail but was stopped with its trainer: by a restart (the job was
#: running when the trainer's process died) or a shutdown. A client resubmits such a job; the
#: orchestrator does not count it as a failed training attempt.
RESTARTED_MESSAGE = "trainer restarted while the job was running; resubmit"
SHUTDOWN_MESSAGE = "trainer was shut down while the job was running; resubmit"
INTERRUPTED_MESSAGES = (RESTARTED_MESSAGE, SHUTDOWN_MESSAGE)

LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts",
                 "polynomial", "inverse_sqrt")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")
MAX_TARGET_MODULES = 64
#: The most decoder layers `lora_last_layers` may name (the model's own count is checked when it loads).
MAX_LORA_LAYERS = 4096

#: Accepted ranges after defaults are applied: (low, high), both included.
INT_RANGES = {
    "lora_r": (1, 1024),
    "lora_alpha": (1, 4096),
    "batch_size": (1, 1024),
    "gradient_accumulation": (1, 1024),
    "max_length": (16, 131072),
    "max_steps": (0, 10_000_000),
    "seed": (0, 2**32 - 1),
    "lora_last_layers": (0, MAX_LORA_LAYERS),  # numpy's seed range, which transformers' set_seed uses
}
#: (low, high, low included, high included); NaN and infinities are never in range.
FLOAT_RANGES = {
    "learning_rate": (0.0, 1.0, False, True),
    "epochs": (0.0, 1000.0, False, True),
    "beta": (0.0, 100.0, False, True),
    "lora_dropout": (0.0, 1.0, True, False),
    "warmup_ratio": (0.0, 1.0, True, False),
}


def _float_range_text(low: float, high: float, low_in: bool, high_in: bool) -> str:
    return f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


class JobState(str, enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def check_name(what: str, value: str) -> None:
    """Names become file and directory names: letters, digits, '.', '_', '-' (no path separators)."""
    if not _NAME.match(value or "") or value in (".", ".."):
        raise InvalidArgument(
            f"{what} {quote(value, 40)} is not a valid name: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


@dataclass
class HyperParameters:
    """Training hyper-parameters; zero / empty values mean "LEAP's default" until resolve()."""

    lora_r: int = 0
    lora_alpha: int = 0
    #: None: the default (0.05); 0 is an explicit "no dropout".
    lora_dropout: float | None = None
    target_modules: list[str] = field(default_factory=list)
    learning_rate: float = 0.0
    epochs: float = 0.0
    batch_size: int = 0
    gradient_accumulation: int = 0
    max_length: int = 0
    beta: float = 0.0
    seed: int = 0
    max_steps: int = 0
    lr_scheduler: str = ""
    warmup_ratio: float = 0.0
    #: LoRA on the last N decoder layers only; 0: every layer.
    lora_last_layers: int = 0

    DEFAULTS = {
        "lora_r": 128,
        "lora_alpha": 64,
        "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "epochs": 1.0,
        "batch_size": 4,
        "gradient_accumulation": 1,
        "max_length": 1024,
        "beta": 0.01,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.03,
    }

    def resolve(self, method: str) -> "HyperParameters":
        """A copy with every unset field replaced by LEAP's default for `method`, then validated."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "lora_dropout":
                if value is None:
                    value = self.DEFAULTS["lora_dropout"]
            elif f.name in self.DEFAULTS and not value:
                value = list(self.DEFAULTS[f.name]) if f.name == "target_modules" else self.DEFAULTS[f.name]
            values[f.name] = value
        if not values["learning_rate"]:
            values["learning_rate"] = methods.get(method).default_learning_rate
        resolved = HyperParameters(**values)
        resolved.validate(method)
        return resolved

    def validate(self, method: str) -> None:
        problems = []
        for name, (low, high) in INT_RANGES.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                problems.append(f"{name} must be in [{low}, {high}] (got {quote(value, 24)[1:-1]})")
        for name, (low, high, low_in, high_in) in FLOAT_RANGES.items():
            value = getattr(self, name)
            ok = is_finite_number(value) and \
                (low <= value if low_in else low < value) and (value <= high if high_in else value < high)
            if not ok:
                problems.append(f"{name} must be a number in {_float_range_text(low, high, low_in, high_in)} "
                                f"(got {quote(value, 24)[1:-1]})")
        if self.lr_scheduler not in LR_SCHEDULERS:
            problems.append(f"lr_scheduler {quote(self.lr_scheduler, 40)} is unknown; valid: {', '.join(LR_SCHEDULERS)}")
        if len(self.target_modules) > MAX_TARGET_MODULES:
            problems.append(f"target_modules lists {len(self.target_modules)} modules; at most {MAX_TARGET_MODULES}")
        else:
            bad_modules = [m for m in self.target_modules if not _MODULE.match(m)]
            if bad_modules:
                problems.append(f"target_modules must be module names such as q_proj (got {quote(bad_modules[0], 40)}"
                                + (f" and {len(bad_modules) - 1} more)" if len(bad_modules) > 1 else ")"))
        problems.extend(methods.get(method).hyper_parameter_problems(self))
        if problems:
            raise InvalidArgument("invalid hyper_parameters: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HyperParameters":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class DatasetRef:
    """A training data file: its resolved absolute path and the sha256 of its bytes."""

    uri: str
    sha256: str = ""
    format: str = ""  # "jsonl" or "parquet"
    size_bytes: int = 0


@dataclass
class CheckpointRef:
    """A versioned adapter directory (mirrors leap.v1.CheckpointRef)."""

    name: str = ""
    version: str = ""
    uri: str = ""
    sha256: str = ""
    base_model: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class JobSpec:
    """A validated job: every path absolute, every default filled in."""

    method: str
    datasets: list[DatasetRef]
    base_model: str
    output_name: str
    run_dir: str
    hyper_parameters: HyperParameters
    parent: CheckpointRef | None = None

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "datasets": [asdict(d) for d in self.datasets],
            "base_model": self.base_model,
            "output_name": self.output_name,
            "run_dir": self.run_dir,
            "hyper_parameters": self.hyper_parameters.to_dict(),
            "parent": self.parent.to_dict() if self.parent else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "JobSpec":
        return cls(
            method=data["method"],
            datasets=[DatasetRef(**d) for d in data["datasets"]],
            base_model=data["base_model"],
            output_name=data["output_name"],
            run_dir=data["run_dir"],
            hyper_parameters=HyperParameters.from_dict(data["hyper_parameters"]),
            parent=CheckpointRef(**data["parent"]) if data.get("parent") else None,
        )


@dataclass
class Progress:
    """The latest progress of a job (what WatchJob streams)."""

    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float = 0.0
    tokens_per_second: float = 0.0
    eta_seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Progress":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class JobRecord:
    """Everything the store keeps about one job. `revision` increases on every change."""

    job_id: str
    spec: JobSpec
    state: JobState = JobState.QUEUED
    progress: Progress = field(default_factory=Progress)
    checkpoint: CheckpointRef | None = None
    error: str = ""
    created_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    sequence: int = 0
    cancel_requested: bool = False
    revision: int = 0

    FORMAT_VERSION = 1

    def copy(self) -> "JobRecord":
        return replace(self, progress=replace(self.progress, metrics=dict(self.progress.metrics)))

    def to_dict(self) -> dict:
        return {
            "format_version": self.FORMAT_VERSION,
            "job_id": self.job_id,
            "spec": self.spec.to_dict(),
            "state": self.state.value,
            "progress": self.progress.to_dict(),
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "sequence": self.sequence,
            "cancel_requested": self.cancel_requested,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "JobRecord":
        return cls(
            job_id=data["job_id"],
            spec=JobSpec.from_dict(data["spec"]),
            state=JobState(data["state"]),
            progress=Progress.from_dict(data.get("progress") or {}),
            checkpoint=CheckpointRef(**data["checkpoint"]) if data.get("checkpoint") else None,
            error=data.get("error", ""),
            created_at=data.get("created_at", 0.0),
            started_at=data.get("started_at", 0.0),
            finished_at=data.get("finished_at", 0.0),
            sequence=data.get("sequence", 0),
            cancel_requested=data.get("cancel_requested", False),
        )


@dataclass
class JobRequest:
    """A StartJob request as the caller sent it (before validation and defaults)."""

    method: str = ""  # a name of services.trainer.methods; "" when unspecified
    datasets: list[DatasetRef] = field(default_factory=list)
    base_model: str = ""
    parent: CheckpointRef | None = None
    output_name: str = ""
    hyper_parameters: HyperParameters = field(default_factory=HyperParameters)
    run_dir: str = ""
    job_id: str = ""
