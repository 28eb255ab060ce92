"""The `tgi` remote backend: Hugging Face Text Generation Inference's native `POST /generate` route.

Requests go through `InferenceClient.text_generation` with `details=True`, so the completion token
ids come back exactly as sampled. The prompt is the chat template applied here (the same rendering
as the local backend). Multi-LoRA TGI servers get `parameters.adapter_id`; TGI loads LoRA adapters
only at startup. `GET /health` and `GET /info` describe the server.
"""

from __future__ import annotations

from typing import Any

from services.student.backends.remote.common import RemoteBackend, RemoteError, to_service_error
from services.student.types import EncodedPrompt, GenerationRequest


class TGIBackend(RemoteBackend):
    kind = "tgi"
    adapter_hint = "TGI loads LoRA adapters only at startup: add it to LORA_ADAPTERS and restart the server"

    def _make_client(self, timeout: float):
        from huggingface_hub import InferenceClient

        return InferenceClient(model=f"{self.endpoint}/generate", timeout=timeout, token=self.options.api_key or None)

    def _describe_server(self) -> None:
        self.server_info = self._get_json("/info")

    def _one_token(self, client, prompt: EncodedPrompt, adapter_id: str | None) -> None:
        adapter = {"adapter_id": adapter_id} if adapter_id is not None else {}
        client.text_generation(prompt.text, max_new_tokens=1, **adapter)

    def _generate(self, request: GenerationRequest) -> tuple[str, list[int], str]:
        sampling = request.sampling
        kwargs: dict[str, Any] = dict(details=True, max_new_tokens=sampling.max_new_tokens,
                                      return_full_text=False, adapter_id=request.adapter_handle)
        if not sampling.greedy:
            kwargs.update(do_sample=True, temperature=sampling.temperature)
            if sampling.top_p < 1.0:
                kwargs["top_p"] = sampling.top_p
            if sampling.seed > 0:
                kwargs["seed"] = sampling.seed
        try:
            output = self._call(lambda: self._client.text_generation(request.prompt.text, **kwargs), "generate")
        except RemoteError as exc:
            raise to_service_error(exc, "generate") from exc
        token_ids = [int(t.id) for t in (output.details.tokens if output.details else [])]
        finish = str(output.details.finish_reason) if output.details else "unknown"
        return output.generated_text, token_ids, finish
