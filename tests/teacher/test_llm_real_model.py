"""The LLM teacher against a real OpenAI-compatible server: `transformers serve` running SmolLM2-135M.

The 135M model rarely writes the JSON the teacher asks for, so these tests exercise validation,
retries (with the problems fed back) and the per-trajectory failure for real; whatever the model
answers, the teacher must return either a fully validated correction or ok=false with the reason.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from leap.v1 import common_pb2
from services.teacher.backends.chat import EndpointChatModel
from services.teacher.backends.llm import LlmSettings, LlmTeacher
from services.teacher.client import TeacherClient
from tests.teacher.conftest import start_teacher

pytestmark = pytest.mark.model

STARTUP_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    from services.models import ensure_smollm2_folder

    folder = str(ensure_smollm2_folder())
    port = _free_port()
    executable = Path(sys.executable).with_name("transformers")
    log = tmp_path_factory.mktemp("transformers-serve") / "serve.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with open(log, "w") as out:
        proc = subprocess.Popen([str(executable), "serve", folder, "--host", "127.0.0.1", "--port", str(port),
                                 "--device", "cpu"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start in {STARTUP_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, folder
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _teacher(model_server, env_addr, max_new_tokens: int, default_max_retries: int = 2):
    url, folder = model_server
    # `transformers serve FOLDER` is pinned to that model and refuses any other name.
    chat = EndpointChatModel(url, model=folder, timeout_s=120)
    # A compact prompt: prefill dominates on a CPU (about 600 prompt tokens take seconds).
    settings = LlmSettings(max_new_tokens=max_new_tokens, max_observation_chars=160, max_candidates=8,
                           default_max_retries=default_max_retries)
    return start_teacher(LlmTeacher(chat, settings=settings), env_addr)


def _short(trajectory: common_pb2.Trajectory, steps: int) -> common_pb2.Trajectory:
    out = common_pb2.Trajectory()
    out.CopyFrom(trajectory)
    del out.steps[steps:]
    return out


def test_cut_off_answers_are_retried_then_fail_cleanly(model_server, env_addr, failed_trajectories):
    host = _teacher(model_server, env_addr, max_new_tokens=16)  # too few tokens for any complete answer
    try:
        with TeacherClient(f"127.0.0.1:{host.port}") as teacher:
            correction = teacher.correct(_short(failed_trajectories[0], 1), level=0, max_retries=1)
            assert teacher.info().backend == "llm"  # still serving
    finally:
        host.stop(grace=0)
    assert not correction.ok and not correction.steps
    assert correction.attempts == 2 and correction.usage.calls == 2
    assert correction.error.startswith("no valid correction after 2 attempt(s): ")
    assert correction.usage.prompt_tokens > 2 * 200  # the prompt, twice (the retry included)
    assert 0 < correction.usage.completion_tokens <= 2 * 16


def test_whatever_the_model_says_the_result_is_validated(model_server, env_addr, failed_trajectories):
    trajectory = _short(failed_trajectories[1], 2)
    host = _teacher(model_server, env_addr, max_new_tokens=100, default_max_retries=0)
    try:
        with TeacherClient(f"127.0.0.1:{host.port}") as teacher:
            correction = teacher.correct(trajectory, level=0)
    finally:
        host.stop(grace=0)
    assert correction.usage.calls == correction.attempts and correction.usage.prompt_tokens > 0
    if correction.ok:
        assert len(correction.steps) == 2
        for step, corrected in zip(trajectory.steps, correction.steps):
            assert corrected.action in step.candidates and corrected.reason
    else:
        assert correction.attempts == 1 and "no valid correction after 1 attempt(s)" in correction.error
