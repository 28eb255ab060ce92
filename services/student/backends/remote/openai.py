"""The `openai` remote backend: an OpenAI-compatible `/v1/chat/completions` route.

Works with vLLM, `transformers serve` and TGI's own OpenAI route, through
`InferenceClient.chat_completion`. The request's `model` field selects the model or LoRA module.
OpenAI-compatible responses carry text only: the completion token ids are left empty rather than
re-tokenised (re-tokenised ids can differ from what was sampled). Such servers need not have
`GET /health`.
"""

from __future__ import annotations

from typing import Any

from services.student.backends.remote.common import RemoteBackend, RemoteError, to_service_error
from services.student.types import EncodedPrompt, GenerationRequest


class OpenAIBackend(RemoteBackend):
    kind = "openai"
    health_route_required = False
    adapter_hint = "the server must know it as a model or LoRA module name (vLLM: --lora-modules)"

    def _make_client(self, timeout: float):
        from huggingface_hub import InferenceClient

        return InferenceClient(base_url=self.endpoint, timeout=timeout, token=self.options.api_key or None)

    def _one_token(self, client, prompt: EncodedPrompt, adapter_id: str | None) -> None:
        client.chat_completion(prompt.messages, model=self.remote_model if adapter_id is None else adapter_id,
                              max_tokens=1)

    def _generate(self, request: GenerationRequest) -> tuple[str, list[int], str]:
        sampling = request.sampling
        kwargs: dict[str, Any] = dict(model=request.adapter_handle or self.remote_model,
                                      max_tokens=sampling.max_new_tokens, temperature=sampling.temperature)
        if not sampling.greedy and sampling.top_p < 1.0:
            kwargs["top_p"] = sampling.top_p
        if sampling.seed > 0:
            kwargs["seed"] = sampling.seed
        try:
            output = self._call(lambda: self._client.chat_completion(request.prompt.messages, **kwargs),
                                "chat completion")
        except RemoteError as exc:
            raise to_service_error(exc, "chat completion") from exc
        choice = output.choices[0]
        return choice.message.content or "", [], str(choice.finish_reason or "unknown")
