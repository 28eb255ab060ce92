"""The remote backend's flavours without a model: which class a flavour gets, what each sends for a row
and reads back, and which health routes each needs."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from services.runtime.errors import Unavailable
from services.student.backends.remote import (
    OpenAIBackend,
    RemoteOptions,
    TGIBackend,
    create_remote_backend,
)
from services.student.types import EncodedPrompt, GenerationRequest, Sampling

MESSAGES = [{"role": "user", "content": "hi"}]


def _request(sampling: Sampling, handle: str | None = None) -> GenerationRequest:
    return GenerationRequest(prompt=EncodedPrompt(MESSAGES, "<user>hi", [1, 2, 3], 3), sampling=sampling,
                             version="v", adapter_handle=handle)


class FakeClient:
    """Records the calls a backend makes and answers like huggingface_hub's InferenceClient."""

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []

    def text_generation(self, *args, **kwargs):
        self.calls.append(("text_generation", args, kwargs))
        tokens = [SimpleNamespace(id=7), SimpleNamespace(id=8)]
        return SimpleNamespace(generated_text="ok.", details=SimpleNamespace(tokens=tokens, finish_reason="eos_token"))

    def chat_completion(self, *args, **kwargs):
        self.calls.append(("chat_completion", args, kwargs))
        message = SimpleNamespace(content="ok.")
        return SimpleNamespace(choices=[SimpleNamespace(message=message, finish_reason="stop")])


def _backend(flavor: str, **options):
    backend = create_remote_backend(RemoteOptions(flavor=flavor, endpoint="http://127.0.0.1:1/", remote_model="served",
                                                  **options))
    backend._client = FakeClient()
    return backend


def test_each_flavour_gets_its_own_backend():
    assert type(_backend("tgi")) is TGIBackend and _backend("tgi").kind == "tgi"
    assert type(_backend("openai")) is OpenAIBackend and _backend("openai").kind == "openai"
    assert _backend("tgi").endpoint == "http://127.0.0.1:1"
    with pytest.raises(ValueError, match="unknown remote flavor 'vllm'"):
        create_remote_backend(RemoteOptions(flavor="vllm", endpoint="http://x"))
    with pytest.raises(ValueError, match="needs an endpoint"):
        create_remote_backend(RemoteOptions(flavor="tgi"))


def test_tgi_sends_the_rendered_prompt_and_returns_the_sampled_ids():
    backend = _backend("tgi")
    generation = backend._generate_one(_request(Sampling(temperature=0.7, top_p=0.9, seed=5, max_new_tokens=9),
                                                handle="leap/a"))
    (name, args, kwargs), = backend._client.calls
    assert name == "text_generation" and args == ("<user>hi",)
    assert kwargs == dict(details=True, max_new_tokens=9, return_full_text=False, adapter_id="leap/a",
                          do_sample=True, temperature=0.7, top_p=0.9, seed=5)
    assert (generation.text, generation.token_ids, generation.finish_reason) == ("ok.", [7, 8], "eos_token")
    backend._generate_one(_request(Sampling(max_new_tokens=4)))
    assert backend._client.calls[1][2] == dict(details=True, max_new_tokens=4, return_full_text=False,
                                               adapter_id=None)  # greedy: no sampling parameters


def test_openai_sends_the_messages_to_the_adapters_model_name_and_returns_text_only():
    backend = _backend("openai")
    generation = backend._generate_one(_request(Sampling(temperature=0.7, top_p=0.9, seed=5, max_new_tokens=9),
                                                handle="lora-a"))
    (name, args, kwargs), = backend._client.calls
    assert name == "chat_completion" and args == (MESSAGES,)
    assert kwargs == dict(model="lora-a", max_tokens=9, temperature=0.7, top_p=0.9, seed=5)
    assert (generation.text, generation.token_ids, generation.finish_reason) == ("ok.", [], "stop")
    backend._generate_one(_request(Sampling(max_new_tokens=4)))
    assert backend._client.calls[1][2] == dict(model="served", max_tokens=4, temperature=0.0)


def test_a_cancelled_row_is_not_sent():
    backend = _backend("tgi")
    request = _request(Sampling())
    request.cancelled.set()
    with pytest.raises(Unavailable):
        backend._generate_one(request)
    assert backend._client.calls == []


@pytest.fixture
def no_health_route():
    """A server answering 404 to everything."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_only_tgi_needs_a_health_route(no_health_route):
    options = dict(flavor="openai", endpoint=no_health_route, startup_timeout=1.0)
    create_remote_backend(RemoteOptions(**options))._wait_healthy()  # the probe call decides
    options["flavor"] = "tgi"
    with pytest.raises(Unavailable, match="is not healthy"):
        create_remote_backend(RemoteOptions(**options))._wait_healthy()
