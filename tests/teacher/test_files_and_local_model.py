"""Trajectory files, configuration from flags and environment, and the local transformers chat model."""

from __future__ import annotations

import argparse
import json

import pytest
from google.protobuf import json_format

from services.teacher.cli import configure
from services.teacher.config import TeacherConfig
from services.teacher.trajectories import load_trajectories
from tests.teacher.fakes import small_trajectory


def test_trajectory_files_json_list_and_jsonl(tmp_path):
    one, two = small_trajectory(), small_trajectory(["look"], task_id="train-00002")
    as_dicts = [json_format.MessageToDict(t) for t in (one, two)]
    (tmp_path / "one.json").write_text(json.dumps(as_dicts[0], indent=2))
    (tmp_path / "list.json").write_text(json.dumps(as_dicts))
    (tmp_path / "many.jsonl").write_text("\n".join(json.dumps(d) for d in as_dicts) + "\n\n")
    assert load_trajectories(tmp_path / "one.json") == [one]
    assert load_trajectories(tmp_path / "list.json") == [one, two]
    assert load_trajectories(tmp_path / "many.jsonl") == [one, two]
    (tmp_path / "bad.json").write_text(json.dumps({"steps": [{"no_such_field": 1}]}))
    with pytest.raises(ValueError, match="not a leap.v1.Trajectory"):
        load_trajectories(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        load_trajectories(tmp_path / "empty.json")


def _parse(argv, monkeypatch, **env):
    for name in ("LEAP_ENV_ADDR", "LEAP_PRIVILEGED_TOKEN", "LEAP_LLM_API_KEY", "OPENAI_API_KEY", "HF_TOKEN",
                 "LEAP_MAX_STEPS", "LEAP_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    configure(parser)
    return TeacherConfig.from_args(parser.parse_args(argv))


def test_config_from_flags_environment_and_files(monkeypatch, tmp_path):
    config = _parse(["serve"], monkeypatch)
    assert (config.backend, config.env_addr, config.max_steps, config.privileged_token) == \
        ("oracle", "127.0.0.1:50052", 100, "")
    config = _parse(["serve", "--max-steps", "20"], monkeypatch, LEAP_ENV_ADDR="env:50052",
                    LEAP_PRIVILEGED_TOKEN="s3cret", OPENAI_API_KEY="sk-test", LEAP_BACKEND="llm")
    assert (config.backend, config.env_addr, config.max_steps, config.privileged_token,
            config.backend_options.api_key) == \
        ("llm", "env:50052", 20, "s3cret", "sk-test")
    token = tmp_path / "token"
    token.write_text("from-file\n")
    config = _parse(["correct", "--trajectory", "t.json", "--env-addr", "h:1", "--privileged-token-file", str(token),
                     "--backend", "llm"],
                    monkeypatch, HF_TOKEN="hf-test")
    assert (config.env_addr, config.privileged_token, config.backend_options.api_key) == ("h:1", "from-file", "hf-test")


@pytest.mark.model
def test_local_transformers_chat_model():
    from services.teacher.backends.chat import LocalChatModel

    model = LocalChatModel("smollm2", device="cpu")
    reply = model.complete([{"role": "system", "content": "Answer in JSON."},
                            {"role": "user", "content": 'Write {"ok": true}.'}], max_tokens=8, temperature=0.0)
    assert model.loaded and model.model_id == "smollm2"
    assert reply.prompt_tokens > 10 and 0 < reply.completion_tokens <= 8 and reply.exact_usage
    again = model.complete([{"role": "user", "content": 'Write {"ok": true}.'}], max_tokens=8, temperature=0.0)
    assert again.completion_tokens > 0
