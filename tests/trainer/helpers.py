"""Tiny LEAP-shaped datasets and a trainer server on a loopback port, shared by the trainer tests."""

from __future__ import annotations

import json
from pathlib import Path

from services.runtime.config import ServerConfig
from services.runtime.server import ServiceHost
from services.trainer.server import create_service, registrations

SYSTEM = "You are a household agent. Answer with REASON: ... then ACTION: ..."
CHOSEN = "REASON: Apples are usually kept cold, so the fridge is the best first place to look.\nACTION: go to fridge 1"


def messages(i: int) -> list[dict]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Your task is: put a clean apple in fridge. You are in kitchen {i}. "
                                    f"You see cabinet {i}, countertop 1 and fridge 1. Candidates: go to fridge 1, "
                                    f"go to cabinet {i}."},
    ]


def sft_rows(n: int = 4) -> list[dict]:
    return [{"messages": messages(i), "completion": CHOSEN, "meta": {"task_id": f"train-{i:05d}"}} for i in range(n)]


def dpo_rows(n: int = 4) -> list[dict]:
    return [{"messages": messages(i), "chosen": CHOSEN,
             "rejected": f"REASON: I will look around first.\nACTION: go to cabinet {i}", "meta": {"step": i}}
            for i in range(n)]


def kto_rows(n: int = 4) -> list[dict]:
    rows = []
    for row in dpo_rows(n):
        rows.append({"messages": row["messages"], "completion": row["chosen"], "label": True})
        rows.append({"messages": row["messages"], "completion": row["rejected"], "label": False})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# Small enough for a loaded 2-core CPU, strong enough to move a 135M model in a few steps.
TINY = {"lora_r": 8, "lora_alpha": 16, "max_length": 256, "batch_size": 4, "learning_rate": 2e-3}


class TrainerServer:
    """A trainer service in this process, served over real gRPC on a free loopback port."""

    def __init__(self, state_dir: Path, runs_dir: Path, execute=None, **service_options):
        kwargs = {"execute": execute} if execute is not None else {}
        self.service = create_service(state_dir, runs_dir, device="cpu", **kwargs, **service_options)
        self.host = ServiceHost(ServerConfig(port=0), registrations(self.service), label="trainer-test")
        self.port = self.host.start()
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.host.stop(grace=0)
        self.service.runner.shutdown(timeout=60)
        self.service.store.close()


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; that value is returned."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
