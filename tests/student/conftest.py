"""Shared fixtures of the student tests: one SmolLM2 model and one trained LoRA adapter per session."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pytest

from services.runtime.files import sha256_file

from tests.student.helpers import SharedModel, train_fixed_answer_adapter, write_manifest


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (CPU, float32, tokenizer padding left), loaded once per session.

    Read its tokenizer freely; take the model with `borrow()` (or a backend's `loader`), which lends it to one
    user at a time and checks, when it comes back, that it is as loaded.
    """
    return SharedModel()


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, smollm2):
    """A checkpoint folder as the trainer writes it: peft files + manifest.json. Returns (path, manifest sha).

    Trained once per test run: under pytest-xdist the workers share one temp root, and the first worker
    that needs the adapter trains it (in a folder of its own, renamed into place when complete) while
    holding a lock the others wait on. Tests only read it.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # .../pytest-N, shared by .../pytest-N/popen-gw0, popen-gw1, ...
    path = base / "trained-adapter" / "fixed-v1"
    path.parent.mkdir(exist_ok=True)
    with open(path.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / "manifest.json").is_file():
            partial = Path(tempfile.mkdtemp(prefix="fixed-v1.partial-", dir=path.parent))
            train_fixed_answer_adapter(partial, smollm2)
            write_manifest(partial, version="v1", base_model="smollm2")
            partial.rename(path)
    return path, sha256_file(path / "manifest.json")
