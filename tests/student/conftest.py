"""Shared fixtures of the student tests: one trained LoRA adapter per session."""

from __future__ import annotations

import pytest

from tests.student.helpers import train_fixed_answer_adapter, write_manifest


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory):
    """A checkpoint folder as the trainer writes it: peft files + manifest.json. Returns (path, manifest sha)."""
    path = train_fixed_answer_adapter(tmp_path_factory.mktemp("adapters") / "fixed-v1")
    sha = write_manifest(path, version="v1", base_model="smollm2")
    return path, sha
