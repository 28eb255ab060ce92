"""The run directory and its state file: an explicit, persisted state machine.

    <run>/config.yaml          the config snapshot (a resumed run must match it)
    <run>/manifest.json        versions, seeds, engine and model ids
    <run>/state.json           every phase and its status; outputs recorded with sha256
    <run>/trajectories/*.jsonl episodes, one file per phase
    <run>/datasets/*.jsonl     per-iteration datasets and the aggregated training mixes
    <run>/checkpoints/...      written by the trainer service
    <run>/metrics/*.json       evaluation results
    <run>/services/            logs and state of services started locally

Every file is written atomically (temp file, fsync, rename) before its phase is marked done, so a
run killed at any point (kill -9 included) resumes at the first unfinished phase.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.runtime.files import atomic_write_json, sha256_file

PENDING, DONE = "pending", "done"


@dataclass
class PhaseRecord:
    name: str
    status: str = PENDING
    started_at: float = 0.0
    finished_at: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0


class RunState:
    """Phase bookkeeping for one run directory. Thread-safe: two phases may run at once (an
    evaluation beside the next iteration's rollouts), each beginning and finishing on its own."""

    def __init__(self, run_dir: Path, phases: list[str]):
        self._lock = threading.RLock()
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "state.json"
        self.phases: dict[str, PhaseRecord] = {name: PhaseRecord(name) for name in phases}
        self.values: dict[str, Any] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = json.loads(self.path.read_text())
        for raw in data.get("phases", []):
            if raw["name"] in self.phases:
                self.phases[raw["name"]] = PhaseRecord(**raw)
        self.values = data.get("values", {})

    def save(self) -> None:
        with self._lock:
            atomic_write_json(self.path, {
                "phases": [vars(p) for p in self.phases.values()],
                "values": self.values,
                "updated_at": time.time(),
            })

    def is_done(self, name: str) -> bool:
        return self.phases[name].status == DONE

    def begin(self, name: str) -> None:
        with self._lock:
            record = self.phases[name]
            record.attempts += 1
            record.started_at = time.time()
            self.save()

    def finish(self, name: str, outputs: dict[str, Any] | None = None) -> None:
        outputs = dict(outputs or {})
        for key, value in list(outputs.items()):
            if isinstance(value, str) and key.endswith("_file") and Path(value).is_file():
                outputs[key.removesuffix("_file") + "_sha256"] = sha256_file(value)
        with self._lock:
            record = self.phases[name]
            record.outputs = outputs
            record.status = DONE
            record.finished_at = time.time()
            self.save()

    def outputs(self, name: str) -> dict[str, Any]:
        return self.phases[name].outputs

    def next_pending(self) -> str | None:
        return next((p.name for p in self.phases.values() if p.status != DONE), None)

    def all_done(self) -> bool:
        return self.next_pending() is None
