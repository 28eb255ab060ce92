"""Chat models the LLM teacher talks to: a remote endpoint or a local transformers model.

- `EndpointChatModel`: any TGI or OpenAI-compatible server through
  `huggingface_hub.InferenceClient(base_url=...).chat_completion` (`/v1/chat/completions`).
- `LocalChatModel`: a transformers model loaded with services.models (torch is imported only here,
  and only when the model is loaded).

Both return the text and the token counts of one call. Failures of the endpoint itself are raised
as services.runtime errors: an unreachable endpoint or an overloaded one (429, 5xx) is UNAVAILABLE
for the teacher's caller; a request the endpoint rejects (400, 422: prompt too long, bad parameter)
is a ChatRejected, which the teacher reports as a failed correction.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol

from services.runtime.errors import DeadlineExceeded, Unavailable

log = logging.getLogger("leap.teacher.chat")


@dataclass(frozen=True)
class ChatReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    # False when the endpoint reported no usage and the counts are estimates (4 characters a token).
    exact_usage: bool = True


class ChatRejected(Exception):
    """The model server refused the request itself (not a transport failure)."""


class ChatModel(Protocol):
    model_id: str

    def complete(self, messages: list[dict], *, max_tokens: int, temperature: float,
                 timeout_s: float | None = None) -> ChatReply: ...

    def close(self) -> None: ...


def _estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4) if text else 0


class EndpointChatModel:
    """A TGI or OpenAI-compatible chat endpoint (`base_url` without the /v1/chat/completions path)."""

    def __init__(self, base_url: str, *, model: str = "", api_key: str = "", timeout_s: float = 120.0):
        from huggingface_hub import InferenceClient

        self.base_url = base_url.rstrip("/")
        for suffix in ("/v1/chat/completions", "/chat/completions", "/v1"):
            if self.base_url.endswith(suffix):
                self.base_url = self.base_url[: -len(suffix)]
                break
        self._model = model or None
        self._timeout_s = timeout_s
        self._discovered = bool(model)
        self._api_key = api_key or None
        self._client = InferenceClient(base_url=self.base_url, api_key=self._api_key, timeout=timeout_s)

    @property
    def model_id(self) -> str:
        if not self._discovered:
            self._discover_model()
        return self._model or "(served model)"

    def _discover_model(self) -> None:
        """Ask the server which model it serves (OpenAI `GET /v1/models`): a server pinned to one model
        refuses any other name. TGI serves one model and ignores the name, so no answer is fine too.
        An unreachable server is asked again next time; any HTTP answer settles it."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/v1/models", timeout=min(3.0, self._timeout_s)) as response:
                listing = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError:
            self._discovered = True
            return
        except (OSError, ValueError):
            return
        self._discovered = True
        data = listing.get("data", []) if isinstance(listing, dict) else []
        models = [m.get("id") for m in data if isinstance(m, dict) and m.get("id")]
        if models:
            self._model = models[0]

    def complete(self, messages, *, max_tokens, temperature, timeout_s=None) -> ChatReply:
        from huggingface_hub.errors import HfHubHTTPError

        if not self._discovered:
            self._discover_model()
        kwargs = {"max_tokens": max_tokens, "temperature": max(0.0, float(temperature))}
        if self._model:
            kwargs["model"] = self._model
        # The caller's deadline bounds the call (a thread held past it serves nobody): a client of that
        # timeout for this call when it is shorter than the endpoint's.
        limit = self._timeout_s
        client = self._client
        if timeout_s is not None and 0 < timeout_s < self._timeout_s:
            from huggingface_hub import InferenceClient

            limit = timeout_s
            client = InferenceClient(base_url=self.base_url, api_key=self._api_key, timeout=timeout_s)
        try:
            out = client.chat_completion(messages, **kwargs)
        except HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            body = getattr(getattr(exc, "response", None), "text", "") or ""
            text = (body or str(exc)).strip().replace("\n", " ")[:300]
            if status in (408, 429) or (status is not None and status >= 500):
                raise Unavailable(f"the LLM endpoint {self.base_url} is not serving ({status}): {text}") from None
            raise ChatRejected(f"the LLM endpoint {self.base_url} rejected the request ({status}): {text}") from None
        except Exception as exc:  # transport errors of the HTTP client (connect, read, timeout)
            kind = " ".join(c.__name__ for c in type(exc).__mro__).lower()
            if "timeout" in kind:
                raise DeadlineExceeded(f"the LLM endpoint {self.base_url} did not answer within "
                                       f"{limit:.1f}s") from None
            if any(word in kind for word in ("connect", "network", "transport", "request")):
                raise Unavailable(f"the LLM endpoint {self.base_url} is unreachable: {exc}") from None
            raise
        choice = out.choices[0] if out.choices else None
        text = (choice.message.content if choice and choice.message else "") or ""
        usage = getattr(out, "usage", None)
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            return ChatReply(text, int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0))
        prompt_chars = "".join(str(m.get("content", "")) for m in messages)
        return ChatReply(text, _estimate_tokens(prompt_chars), _estimate_tokens(text), exact_usage=False)

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if callable(close):
            close()


class LocalChatModel:
    """A local transformers model (a folder, a hub id, or the `smollm2` alias of services.models)."""

    def __init__(self, model: str, *, device: str | None = None, dtype: str | None = None):
        self.requested = model
        self.model_id = model
        self._device = device
        self._dtype = dtype
        self._lock = threading.Lock()
        self._model = None
        self._tokenizer = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from services.models import load_model_and_tokenizer

            model, tokenizer, spec = load_model_and_tokenizer(self.requested, device=self._device, dtype=self._dtype)
            self._model, self._tokenizer = model, tokenizer
            self.model_id = spec.requested
            log.info("teacher model loaded", extra={"model": spec.requested, "location": spec.location})

    def complete(self, messages, *, max_tokens, temperature, timeout_s=None) -> ChatReply:
        if self._model is None:
            self.load()
        import torch

        with self._lock:
            encoded = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            encoded = {k: v.to(self._model.device) for k, v in encoded.items()}
            if temperature > 0:
                sampling = {"do_sample": True, "temperature": float(temperature)}
            else:
                sampling = {"do_sample": False}
            with torch.inference_mode():
                output = self._model.generate(**encoded, max_new_tokens=max_tokens,
                                              pad_token_id=self._tokenizer.pad_token_id, **sampling)
            prompt_len = encoded["input_ids"].shape[1]
            new_tokens = output[0][prompt_len:]
            text = self._tokenizer.decode(new_tokens, skip_special_tokens=True)
        return ChatReply(text, int(prompt_len), int(new_tokens.shape[0]))

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
