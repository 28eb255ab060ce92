"""Run configuration: a YAML file, a named preset, or both (the file overrides the preset).

Every field has a default; `leap run` with no flags uses the `default` preset, and a `--config` file
without `--preset` is layered over it. Addresses left empty mean "start that service locally on a
free loopback port"; set them to use services running elsewhere (another machine, a cluster).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.runtime.experts import DEFAULT_REALIZABILITY_LEVEL, REALIZABILITY_LEVELS
from services.runtime.numbers import is_finite_number
from services.student import defaults as student_defaults
from services.teacher.backends import DEFAULT_BACKEND as DEFAULT_TEACHER_BACKEND
from services.trainer import methods as training_methods

PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass
class EnvironmentConfig:
    name: str = "household"
    address: str = ""
    horizon: int = 20
    demo_horizon: int = 50        # expert demonstrations may take longer than the student's horizon
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["valid_unseen"])
    eval_tasks: int = 50          # first N tasks of each eval split
    demo_tasks: int = 100         # training tasks demonstrated for BC (iteration 0)
    rollout_tasks: int = 100      # training tasks rolled out per LEAP iteration
    demo_offset: int = 0          # index of the first demo task in the train split
    rollout_offset: int = 1000    # index of the first rollout task (disjoint from the demos)
    #: Evaluations (greedy) end an episode whose student has come back to an earlier step, environment
    #: state included: it would go round the same cycle until the horizon, so it is scored as it would
    #: end there (a failure) without playing the rest. Needs an environment that sends state digests
    #: (household does); rollouts always play to the end.
    stop_cycles: bool = True
    #: Backend options of the environment server that `leap run` starts (`leap env serve -o KEY=VALUE`),
    #: e.g. {games: /data/alfworld/json_2.1.1} for alfworld. Ignored when `address` is set.
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class StudentConfig:
    model: str = "smollm2"
    address: str = ""
    device: str = "cpu"
    dtype: str = "auto"               # auto: bf16 on GPUs and where it measures faster on CPU, else fp32
    max_new_tokens: int = 48
    #: Choose each action among the environment's candidates (guided decoding in the student server;
    #: needs a backend that supports it, i.e. the local one). The reason stays free text.
    constrain_action: bool = False
    #: With constrain_action: reason tokens before the server writes the ACTION label (0: max_new_tokens).
    max_reason_tokens: int = 0
    rollout_temperature: float = 0.3
    eval_temperature: float = 0.0
    history_window: int = student_defaults.DEFAULT_HISTORY_WINDOW
    max_batch_size: int = student_defaults.DEFAULT_MAX_BATCH_SIZE
    max_prefill_rows: int = student_defaults.DEFAULT_MAX_PREFILL_ROWS
    max_wait_ms: int = student_defaults.DEFAULT_MAX_WAIT_MS
    #: The whole-prompt KV cache in MiB of a student that `leap run` starts (`leap student serve
    #: --prompt-cache-mb`; resident memory grows by up to this much). A prompt's KV takes twice the
    #: bytes in fp32 as in bf16.
    prompt_cache_mb: int = student_defaults.DEFAULT_PROMPT_CACHE_MB


@dataclass
class TeacherConfig:
    backend: str = DEFAULT_TEACHER_BACKEND      # a services.teacher.backends name
    address: str = ""
    realizability_level: int = DEFAULT_REALIZABILITY_LEVEL
    llm_endpoint: str = ""
    llm_model: str = ""


@dataclass
class TrainerConfig:
    address: str = ""
    method: str = "sft"            # a services.trainer.methods name, for iterations >= 1 (iteration 0 is always SFT)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)  # empty: the trainer's default (attention projections)
    learning_rate: float = 3e-4
    epochs: float = 1.0
    leap_epochs: float = 0.0       # epochs of iterations >= 1, which continue from the previous adapter (0: epochs)
    lora_last_layers: int = 0      # LoRA on the last N decoder layers only (0: every layer); cheaper backward
    batch_size: int = 8
    max_length: int = 512
    max_steps: int = 0
    beta: float = 0.1
    max_examples: int = 0          # cap on an iteration's aggregated training set (0: no cap), equal shares
    balance_actions: bool = False  # subsample each iteration's rows by action kind (square-root shares), not at random


@dataclass
class RetryConfig:
    """How the orchestrator retries training and follows it over a broken connection."""

    train_attempts: int = 3              # attempts per training (each a new job id) before the run fails
    watch_backoff_s: float = 1.0         # pause before reopening a broken watch of a training job
    watch_reconnect_s: float = 0.0       # give up a watch after this long without a connection (0: never)
    call_timeout_s: float = 30.0         # deadline of GetJob, CancelJob and ListAdapters calls
    start_timeout_s: float = 60.0        # deadline of StartJob (the trainer reads every dataset row)
    load_adapter_timeout_s: float = 300.0  # deadline of LoadAdapter on the student


@dataclass
class RunConfig:
    name: str = "default"
    seed: int = 0
    iterations: int = 2               # LEAP iterations after BC (iteration 0)
    concurrency: int = 16             # episodes in flight at once (over every phase running)
    # Iteration i+1's rollouts start beside iteration i's evaluation: both play the same adapter, and
    # the rollouts' episodes take the slots the evaluation's finished episodes free. Results are the
    # same either way; episodes in flight stay within `concurrency`. Neutral on a 2-core CPU (the
    # engine is never idle, README runs 25-26); it fills an evaluation's tail where passes of a few
    # rows cost what full ones do.
    overlap_rollouts: bool = True
    keep_unchanged_steps: bool = False  # keep steps the teacher did not change in the SFT data
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        problems = []
        if self.iterations < 0:
            problems.append("iterations must be >= 0")
        if self.teacher.realizability_level not in REALIZABILITY_LEVELS:
            problems.append("teacher.realizability_level must be one of "
                            + ", ".join(map(str, REALIZABILITY_LEVELS)))
        if not training_methods.is_known(self.trainer.method):
            problems.append(f"trainer.method must be one of {', '.join(training_methods.names())} "
                            f"(got {self.trainer.method!r})")
        if self.environment.eval_tasks < 1 or self.environment.demo_tasks < 1:
            problems.append("environment.eval_tasks and demo_tasks must be >= 1")
        if self.concurrency < 1:
            problems.append("concurrency must be >= 1")
        if self.student.prompt_cache_mb < 0:
            problems.append("student.prompt_cache_mb must be >= 0 (0: the system message only)")
        if self.trainer.epochs <= 0 or self.trainer.leap_epochs < 0:
            problems.append("trainer.epochs must be > 0 and trainer.leap_epochs >= 0 (0: the same as epochs)")
        if self.trainer.lora_last_layers < 0:
            problems.append("trainer.lora_last_layers must be >= 0 (0: LoRA on every decoder layer)")
        if self.retry.train_attempts < 1:
            problems.append("retry.train_attempts must be >= 1")
        options = self.environment.options
        if not isinstance(options, dict) or not all(
                isinstance(k, str) and k and "=" not in k and isinstance(v, (str, int, float, bool))
                for k, v in options.items()):
            problems.append("environment.options must map option names (text without '=') to values, "
                            "e.g. {games: /data/alfworld}")
        if problems:
            raise ValueError("invalid run config: " + "; ".join(problems))


def _typed(value: Any, kind: Any, key: str) -> Any:
    """`value` as the field type `kind` (int, float, str, bool, list[str], dict[str, str]), or a
    ValueError naming the key, the type it wants and what it got. An int is a float; nothing else is
    converted (a YAML `eval_splits: valid_unseen` is a string, not a list of one split)."""
    origin = typing.get_origin(kind)

    def wrong(what: str):
        return ValueError(f"config key {key} must be {what}; got {type(value).__name__} {value!r:.80}")

    if kind is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("a whole number")
        return value
    if kind is float:
        if not is_finite_number(value):
            raise wrong("a finite number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise wrong("text")
        return value
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of text items, e.g. [a, b]")
        return list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong("a mapping")
        return {str(k): v for k, v in value.items()}
    return value


def _merge(target, values: dict[str, Any], where: str) -> None:
    if not isinstance(values, dict):
        raise ValueError(f"config {where.rstrip('.') or 'file'} must be a mapping of keys to values")
    names = {f.name: f for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(type(target))
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"unknown config key {where}{key!r}; valid keys: {', '.join(sorted(names))}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config key {where}{key} must be a mapping")
            _merge(current, value, f"{where}{key}.")
        else:
            setattr(target, key, _typed(value, hints[key], f"{where}{key}"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_config(path: str | Path | None = None, preset: str | None = None,
                overrides: dict[str, Any] | None = None) -> RunConfig:
    """Built-in defaults <- the preset (`default` unless one is named) <- the file <- overrides.

    A file without a preset is layered over the `default` preset, as `deploy/run/run.yaml` says: its
    unset keys take the default run's sizes, not the dataclasses' built-ins (which differ: 2
    iterations, 100 demonstrations, free-form actions, ...). A run's own snapshot is read with
    `load_snapshot`.
    """
    config = RunConfig()
    name = preset or "default"
    preset_file = PRESETS_DIR / f"{name}.yaml"
    if not preset_file.exists():
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(preset_names())}")
    _merge(config, yaml.safe_load(preset_file.read_text()) or {}, "")
    if path:
        _merge(config, _read_yaml(path), "")
    if overrides:
        _merge(config, overrides, "")
    config.validate()
    return config


def load_snapshot(path: str | Path) -> RunConfig:
    """A run directory's `config.yaml`: every key as the run was started, over the built-in defaults.

    Not layered over a preset: a snapshot written before a key existed reads that key's built-in
    default, whatever today's presets say, so an old run resumes as it was started.
    """
    config = RunConfig()
    _merge(config, _read_yaml(path), "")
    config.validate()
    return config


def _read_yaml(path: str | Path) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
