"""Shared fixtures of the student tests: one SmolLM2 model and one trained LoRA adapter per session."""

from __future__ import annotations

import pytest

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
    """A checkpoint folder as the trainer writes it: peft files + manifest.json. Returns (path, manifest sha)."""
    path = train_fixed_answer_adapter(tmp_path_factory.mktemp("adapters") / "fixed-v1", smollm2)
    sha = write_manifest(path, version="v1", base_model="smollm2")
    return path, sha
