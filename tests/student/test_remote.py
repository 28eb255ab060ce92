"""The remote backend through the real gRPC service.

- TGI route: against tests/student/tgi_server.py, a TGI-compatible server of our own (no real TGI can
  be installed here: it ships as a Docker image and no Docker engine runs on this machine).
- OpenAI route: against a real `transformers serve` process (`/v1/chat/completions`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from services.models import ensure_smollm2_folder
from services.runtime.config import ServerConfig
from services.student.backends.remote import RemoteOptions, create_remote_backend
from services.student.client import StudentClient, act_item
from services.student.prompts import chat_prompt, format_target, render_messages
from services.student.server import start_in_background
from services.student.service import StudentLimits, StudentService
from tests.student.helpers import FIXED_ACTION, FIXED_REASON, STATES, free_port
from tests.student.tgi_server import TGITestServer

pytestmark = pytest.mark.model

FIXED_TEXT = format_target(FIXED_REASON, FIXED_ACTION)
SHORT = 8
RETRIES = 2


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def serve_remote(options: RemoteOptions):
    service = StudentService(create_remote_backend(options), StudentLimits(default_max_new_tokens=SHORT))
    host, startup = start_in_background(service, ServerConfig(port=0, log_format="text"))
    client = StudentClient(f"127.0.0.1:{host.port}", timeout=180)
    client.wait_ready(timeout=180)
    assert startup.error is None
    return host, client


# -- TGI -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tgi(trained_adapter, smollm2):
    path, _ = trained_adapter
    with smollm2.borrow() as loaded:
        server = TGITestServer("smollm2", adapters={"leap/fixed-v1": str(path)}, loaded=loaded).start()
        host, client = serve_remote(RemoteOptions(flavor="tgi", endpoint=server.url, retries=RETRIES,
                                                  backoff_seconds=0.01, timeout=120))
        yield SimpleNamespace(server=server, client=client, address=f"127.0.0.1:{host.port}")
        client.close()
        host.stop(grace=0)
        server.stop()


def test_tgi_model_info_says_what_can_be_swapped(tgi):
    info = tgi.client.model_info()
    assert (info.backend, info.base_model, info.device) == ("remote", "smollm2", tgi.server.url)
    assert info.supports_hot_swap is False and info.supports_per_request_adapter is True
    assert info.current_version == "base"


def test_tgi_generate_request_and_exact_token_ids(tgi):
    [result] = tgi.client.act([act_item(**STATES[0], request_id="t1", max_new_tokens=SHORT)])
    request = tgi.server.requests[-1]
    prompt = chat_prompt(tgi.server.tokenizer, render_messages(**STATES[0]))
    assert request["inputs"] == prompt
    params = request["parameters"]
    assert params["details"] is True and params["max_new_tokens"] == SHORT
    assert "temperature" not in params and "adapter_id" not in params     # greedy, base model
    assert result.request_id == "t1" and result.adapter_version == "base"
    assert 0 < len(result.completion_token_ids) <= SHORT
    assert result.raw_output == tgi.server.tokenizer.decode(list(result.completion_token_ids), skip_special_tokens=True)
    assert result.batch_size == 0  # the remote server batches; not visible from here


def test_tgi_sampling_parameters_and_seed(tgi):
    item = act_item(**STATES[1], temperature=0.8, top_p=0.9, seed=42, max_new_tokens=SHORT)
    first, second = tgi.client.act([item]), tgi.client.act([item])
    params = tgi.server.requests[-1]["parameters"]
    assert (params["do_sample"], params["temperature"], params["top_p"], params["seed"]) == (True, 0.8, 0.9, 42)
    assert list(first[0].completion_token_ids) == list(second[0].completion_token_ids)


def test_tgi_adapter_per_request_and_unknown_adapter(tgi):
    assert code_of(lambda: tgi.client.load_adapter(version="v-missing", uri="leap/not-loaded")) == \
        grpc.StatusCode.NOT_FOUND
    assert tgi.client.list_adapters().current_version == "base"
    info = tgi.client.load_adapter(version="v1", uri="leap/fixed-v1", base_model="smollm2")
    assert info.current and info.version == "v1"
    [result] = tgi.client.act([act_item(**STATES[2], max_new_tokens=24)])
    assert tgi.server.requests[-1]["parameters"]["adapter_id"] == "leap/fixed-v1"
    assert (result.adapter_version, result.raw_output, result.action_valid) == ("v1", FIXED_TEXT, True)
    [pinned] = tgi.client.act([act_item(**STATES[2], adapter_version="base", max_new_tokens=SHORT)])
    assert pinned.adapter_version == "base" and "adapter_id" not in tgi.server.requests[-1]["parameters"]
    wrong_base = tgi.client.load_adapter
    assert code_of(lambda: wrong_base(version="v-qwen", uri="leap/fixed-v1", base_model="Qwen/Qwen2.5-0.5B")) == \
        grpc.StatusCode.FAILED_PRECONDITION


def test_tgi_refuses_constrained_actions_with_a_clear_message(tgi):
    assert tgi.client.model_info().supports_action_constraint is False
    with pytest.raises(grpc.RpcError) as err:
        tgi.client.act([act_item(**STATES[0], constrain_action=True)])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "constrain_action" in err.value.details() and "'tgi'" in err.value.details()


def test_a_run_asking_for_guided_actions_stops_before_any_phase_on_a_remote_student(tgi, tmp_path):
    from orchestrator.config import load_config
    from orchestrator.episodes import ServiceStubs
    from orchestrator.loop import ConfigMismatch, LeapRun
    from orchestrator.progress import ProgressReporter

    config = load_config(preset="default")
    assert config.student.constrain_action
    # Nothing listens on port 9: the run must stop before it talks to the other services.
    stubs = ServiceStubs({"student": tgi.address, "environment": "127.0.0.1:9", "teacher": "127.0.0.1:9"})
    try:
        run = LeapRun(config, tmp_path, stubs, ProgressReporter(enabled=False))
        with pytest.raises(ConfigMismatch, match="constrain_action"):
            run.run()
    finally:
        stubs.close()
    assert not (tmp_path / "manifest.json").exists()  # nothing started


def test_tgi_retries_429_and_5xx_but_not_4xx(tgi):
    item = act_item(**STATES[0], max_new_tokens=2)
    seen = len(tgi.server.requests)
    tgi.server.fail_next(429, 2)
    assert tgi.client.act([item])[0].completion_token_ids
    assert len(tgi.server.requests) - seen == 3          # two overloaded answers, then success

    seen = len(tgi.server.requests)
    tgi.server.fail_next(422)
    assert code_of(lambda: tgi.client.act([item])) == grpc.StatusCode.INVALID_ARGUMENT
    assert len(tgi.server.requests) - seen == 1          # a validation error is not retried

    # Retries exhausted: UNAVAILABLE (seen here through a channel without gRPC-level retries; the
    # default client channel would itself retry an UNAVAILABLE call).
    seen = len(tgi.server.requests)
    tgi.server.fail_next(500, RETRIES + 1)
    with grpc.insecure_channel(tgi.address) as channel:
        plain = StudentClient(tgi.address, channel=channel)
        assert code_of(lambda: plain.act([item])) == grpc.StatusCode.UNAVAILABLE
    assert len(tgi.server.requests) - seen == RETRIES + 1

    seen = len(tgi.server.requests)
    tgi.server.fail_next(424)
    assert code_of(lambda: tgi.client.act([item])) == grpc.StatusCode.INTERNAL
    assert len(tgi.server.requests) - seen == 1


# -- OpenAI-compatible: a real `transformers serve` ----------------------------------------------

@pytest.fixture(scope="module")
def openai_server():
    folder = str(ensure_smollm2_folder())
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen([str(exe), "serve", folder, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("transformers serve did not start within 180 s")
                time.sleep(0.5)
        host, client = serve_remote(RemoteOptions(flavor="openai", endpoint=url, remote_model=folder, retries=1,
                                                  backoff_seconds=0.01, timeout=180))
        yield SimpleNamespace(client=client, url=url, folder=folder)
        client.close()
        host.stop(grace=0)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_openai_route_against_transformers_serve(openai_server, tgi):
    client = openai_server.client
    info = client.model_info()
    assert (info.backend, info.device, info.supports_hot_swap) == ("remote", openai_server.url, False)
    item = act_item(**STATES[0], request_id="o1", max_new_tokens=SHORT)
    [result] = client.act([item])
    assert result.request_id == "o1" and result.adapter_version == "base" and result.prompt_tokens > 100
    assert result.raw_output
    assert list(result.completion_token_ids) == []   # OpenAI answers carry text only; never re-tokenised
    # The same model and prompt, greedy: the same text as through the TGI route.
    [via_tgi] = tgi.client.act([act_item(**STATES[0], adapter_version="base", max_new_tokens=SHORT)])
    assert result.raw_output == via_tgi.raw_output


def test_openai_route_switches_the_model_name_requests_carry(openai_server):
    client = openai_server.client
    assert code_of(lambda: client.load_adapter(version="v-x", uri="no-such-model")) == grpc.StatusCode.NOT_FOUND
    assert client.list_adapters().current_version == "base"
    info = client.load_adapter(version="served", uri=openai_server.folder)
    assert info.current
    [result] = client.act([act_item(**STATES[1], max_new_tokens=2)])
    assert result.adapter_version == "served" and result.raw_output
