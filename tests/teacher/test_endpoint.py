"""The LLM teacher against an OpenAI-compatible HTTP server (a scripted one; no environment needed)."""

from __future__ import annotations

import json

import pytest

from services.runtime.errors import DeadlineExceeded, Unavailable
from services.teacher.backends.chat import EndpointChatModel
from services.teacher.backends.llm import LlmSettings, LlmTeacher, Pricing
from services.teacher.service import TeacherService
from tests.teacher.fake_llm import FakeChatServer
from tests.teacher.fakes import FakeSource, small_trajectory

VALID = json.dumps({"summary": "The student searched closed cabinets instead of the cold places first.",
                    "steps": [{"t": 0, "reason": "Fruit is usually kept cold, so I check the fridge first.",
                               "action": "go to fridge 1"},
                              {"t": 1, "reason": "Cabinet 1 was closed; cold places are likelier for fruit.",
                               "action": "go to fridge 1"}]})


def service_for(url: str, model: str = "") -> TeacherService:
    chat = EndpointChatModel(url, model=model, timeout_s=10)
    return TeacherService(LlmTeacher(chat, settings=LlmSettings(max_new_tokens=256),
                                     pricing=Pricing(prompt_per_1k=0.15, completion_per_1k=0.6)), FakeSource())


def test_valid_answer_over_http_with_usage_and_cost():
    with FakeChatServer([VALID]) as server:
        result = service_for(server.url + "/v1").correct(small_trajectory(), level=50)
        request = server.requests[0]
    assert result.ok and result.attempts == 1
    assert [s.action for s in result.steps] == ["go to fridge 1", "go to fridge 1"]
    assert request["model"] == "fake-teacher"  # discovered from GET /v1/models
    assert request["max_tokens"] == 256 and request["messages"][0]["role"] == "system"
    usage = result.usage
    assert usage.calls == 1 and usage.prompt_tokens > 100 and usage.completion_tokens > 10
    assert usage.cost_usd == pytest.approx(usage.prompt_tokens * 0.15 / 1000 + usage.completion_tokens * 0.6 / 1000)


def test_invalid_then_valid_over_http():
    with FakeChatServer(['{"summary": "x", "steps": []}', VALID]) as server:
        result = service_for(server.url, model="my-model").correct(small_trajectory(), level=0)
        retry_messages = server.requests[1]["messages"]
    assert result.ok and result.attempts == 2 and result.usage.calls == 2
    assert server.requests[0]["model"] == "my-model"
    assert "needs exactly 2 entries" in retry_messages[-1]["content"]


def test_endpoint_rejection_is_a_failed_correction():
    with FakeChatServer([(422, {"error": "Input validation error: inputs too long", "error_type": "validation"})]) as s:
        result = service_for(s.url, model="m").correct(small_trajectory(), level=50)
    assert not result.ok and "rejected the request (422)" in result.error and "inputs too long" in result.error


def test_overloaded_or_unreachable_endpoint_is_unavailable():
    with FakeChatServer([(503, {"error": "overloaded"})]) as s:
        with pytest.raises(Unavailable, match="not serving \\(503\\)"):
            service_for(s.url, model="m").correct(small_trajectory(), level=50)
        port = s.port
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port} is unreachable"):
        service_for(f"http://127.0.0.1:{port}", model="m").correct(small_trajectory(), level=50)


def test_the_callers_deadline_bounds_the_http_call():
    """A slow model must not hold a teacher thread past the caller's deadline (the endpoint's own
    timeout, 10 s here, is far longer): the call ends when the deadline does."""
    import time

    with FakeChatServer([VALID], delay_s=3.0) as server:
        chat = EndpointChatModel(server.url, model="m", timeout_s=10)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="did not answer within 0.5s"):
            chat.complete([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.0, timeout_s=0.5)
        assert time.monotonic() - started < 2.5
