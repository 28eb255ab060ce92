"""Remote backend: a TGI or OpenAI-compatible server the user already runs, via huggingface_hub.

- `tgi`: `InferenceClient.text_generation` against TGI's `POST /generate` with `details=True`, so the
  completion token ids come back exactly as sampled. The prompt is the chat template applied here
  (the same rendering as the local backend). Multi-LoRA TGI servers get `parameters.adapter_id`.
  `GET /health` and `GET /info` describe the server.
- `openai`: `InferenceClient.chat_completion` against `/v1/chat/completions` (vLLM, `transformers
  serve`, TGI's own OpenAI route). The request's `model` field selects the model or LoRA module.
  OpenAI-compatible responses carry text only: `completion_token_ids` is left empty rather than
  re-tokenised (re-tokenised ids can differ from what was sampled).

Retries: 429 and 5xx answers, timeouts and connection errors are retried with exponential backoff
and jitter (`retries` times); other 4xx answers are not (the request itself is wrong).

Health: `start` waits for the server to answer, then makes a real one-token generation (the call
every Act makes): a server that is up but cannot generate, a wrong model name, a refused key, or a
process where huggingface_hub refuses HTTP (HF_HUB_OFFLINE=1 blocks every request it makes, also to
a local endpoint) fail the start with a clear error instead of a "ready" server whose every Act
fails. While serving, `check_health` (every `health_interval` seconds) counts a recent successful
generation as proof of life and otherwise probes again; the service reports NOT_SERVING while that
fails.

Hot swap: a remote server's weights cannot be swapped from here (TGI loads LoRA adapters only at
startup). LoadAdapter registers a version whose requests carry `CheckpointRef.uri` as the adapter id
(TGI) or model name (OpenAI); the id is probed with a one-token request first, and an id the server
does not know is NOT_FOUND. ModelInfo says so: supports_hot_swap=false,
supports_per_request_adapter=true.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from services.runtime.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unavailable,
)
from services.student import metrics
from services.student.backends.base import Backend, PreparedAdapter
from services.student.prompts import chat_prompt
from services.student.types import (
    CheckpointSpec,
    EncodedPrompt,
    Generation,
    GenerationRequest,
    ModelDescription,
)

log = logging.getLogger("leap.student.remote")

T = TypeVar("T")


@dataclass
class RemoteOptions:
    #: "tgi" or "openai"
    flavor: str = "tgi"
    #: Base URL, e.g. http://tgi:80 or http://vllm:8000 (without /v1).
    endpoint: str = ""
    #: Where the tokenizer and chat template come from ("smollm2", a folder or a hub id).
    model: str = "smollm2"
    #: The `model` field of OpenAI requests; default: the resolved `model` location.
    remote_model: str = ""
    timeout: float = 120.0
    retries: int = 3
    backoff_seconds: float = 0.5
    max_concurrency: int = 8
    #: Seconds `start` waits for the server's health check.
    startup_timeout: float = 60.0
    api_key: str = ""
    #: Seconds between health checks while serving (0: none); see the module docstring.
    health_interval: float = 10.0
    #: Seconds one health probe may take.
    probe_timeout: float = 10.0


class RemoteError(Exception):
    """An HTTP answer from the remote server that is not retried (or retries ran out)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status behind a huggingface_hub exception (TGI errors wrap the HTTP error)."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        response = getattr(candidate, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _server_message(exc: BaseException) -> str:
    for candidate in (exc, exc.__cause__):
        response = getattr(candidate, "response", None)
        if response is None:
            continue
        try:
            payload = response.json()
            if isinstance(payload, dict):
                error = payload.get("error") or payload.get("detail") or payload.get("message")
                if isinstance(error, dict):
                    error = error.get("message")
                if error:
                    return str(error)
        except Exception:  # noqa: BLE001 - not JSON
            pass
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


OFFLINE_MESSAGE = (
    "huggingface_hub refuses every HTTP request while HF_HUB_OFFLINE is set, including those to the inference "
    "server at {endpoint}: unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) for the student process; give --model "
    "a local folder (or 'smollm2') so that the tokenizer needs no hub")


def is_retryable(status: int | None) -> bool:
    """429 and 5xx are worth retrying; other 4xx mean the request itself is wrong."""
    return status is None or status == 429 or status >= 500


def to_service_error(exc: RemoteError, what: str) -> ServiceError:
    """Map a final remote failure to the status the student's caller sees."""
    status, message = exc.status, exc.message
    text = f"{what}: the remote server answered {status or 'no response'}: {message}"
    if status in (400, 413, 422):
        return InvalidArgument(text)
    if status == 404:
        return NotFound(text)
    if status in (401, 403):
        return PermissionDenied(text + " (check the API key)")
    if status == 424:
        return Internal(text)
    return Unavailable(text)


class RemoteBackend(Backend):
    def __init__(self, options: RemoteOptions):
        if options.flavor not in ("tgi", "openai"):
            raise ValueError(f"unknown remote flavor {options.flavor!r}; use 'tgi' or 'openai'")
        if not options.endpoint:
            raise ValueError("the remote backend needs an endpoint URL")
        self.options = options
        self.kind = options.flavor
        self.endpoint = options.endpoint.rstrip("/")
        self.tokenizer = None
        self.remote_model = options.remote_model
        self.server_info: dict[str, Any] = {}
        self._client = None
        self._probe_client = None
        self._pool = ThreadPoolExecutor(max_workers=max(1, options.max_concurrency),
                                        thread_name_prefix=f"student-{options.flavor}")
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._tokenizer_lock = threading.Lock()
        self.health_interval = max(0.0, options.health_interval)
        self._last_success = 0.0  # time.monotonic() of the last generation the server answered

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        from transformers import AutoTokenizer

        from services.models import resolve_model

        # huggingface_hub's HTTP client logs every request at INFO; our own logs say what matters.
        logging.getLogger("httpx2").setLevel(logging.WARNING)
        spec = resolve_model(self.options.model)
        self.tokenizer = AutoTokenizer.from_pretrained(spec.location)
        if not self.remote_model:
            self.remote_model = spec.location
        self._client = self._make_client(self.options.timeout)
        self._probe_client = self._make_client(self.options.probe_timeout)  # health probes: no retries, short
        self._wait_healthy()
        if self.options.flavor == "tgi":
            self.server_info = self._get_json("/info")
        self._startup_probe()
        self._ready.set()
        log.info("remote server ready", extra={"endpoint": self.endpoint, "flavor": self.options.flavor,
                                               "model": self.server_info.get("model_id", self.remote_model)})

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def _get_json(self, path: str) -> dict:
        request = urllib.request.Request(self.endpoint + path, headers={"Accept": "application/json"})
        if self.options.api_key:
            request.add_header("Authorization", f"Bearer {self.options.api_key}")
        with urllib.request.urlopen(request, timeout=min(self.options.timeout, 30)) as reply:
            body = reply.read()
        return json.loads(body.decode("utf-8")) if body else {}

    def _wait_healthy(self) -> None:
        end = time.monotonic() + self.options.startup_timeout
        last: Exception | None = None
        while time.monotonic() < end:
            try:
                self._get_json("/health")
                return
            except urllib.error.HTTPError as exc:
                if self.options.flavor == "openai" and exc.code in (404, 405):
                    return  # OpenAI-compatible servers need not have /health: the probe call decides
                last = exc
                time.sleep(0.5)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = exc
                time.sleep(0.5)
        raise Unavailable(f"the remote server {self.endpoint} is not healthy after "
                          f"{self.options.startup_timeout:.0f}s: {last}")

    def _probe_call(self, client=None) -> None:
        """One real one-token generation on the served model (no adapter)."""
        client = client or self._client
        probe = self.encode_prompt([{"role": "user", "content": "ping"}])
        if self.options.flavor == "tgi":
            client.text_generation(probe.text, max_new_tokens=1)
        else:
            client.chat_completion(probe.messages, model=self.remote_model, max_tokens=1)

    def _make_client(self, timeout: float):
        from huggingface_hub import InferenceClient

        token = self.options.api_key or None
        if self.options.flavor == "tgi":
            return InferenceClient(model=f"{self.endpoint}/generate", timeout=timeout, token=token)
        return InferenceClient(base_url=self.endpoint, timeout=timeout, token=token)

    def _startup_probe(self) -> None:
        """The first real generation: any failure stops the start with a message that says why."""
        try:
            self._call(self._probe_call, "startup probe")
        except RemoteError as exc:
            raise to_service_error(exc, f"the first generation on {self.endpoint} (startup probe)") from None
        self._last_success = time.monotonic()

    def check_health(self) -> bool:
        """True when the server generated recently (an Act or a probe), else after a fresh probe."""
        if not self.ready or self._closed.is_set():
            return False
        if time.monotonic() - self._last_success < max(self.health_interval, 1.0):
            return True
        try:
            self._probe_call(self._probe_client)
        except Exception as exc:  # noqa: BLE001 - any failure of the probe: not healthy now
            log.warning("remote server health probe failed", extra={"endpoint": self.endpoint,
                                                                     "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            return False
        self._last_success = time.monotonic()
        return True

    # -- prompts ---------------------------------------------------------------------------------

    def encode_prompt(self, messages: list[dict[str, str]]) -> EncodedPrompt:
        with self._tokenizer_lock:  # one Rust tokenizer shared by the handler threads
            text = chat_prompt(self.tokenizer, messages)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return EncodedPrompt(messages=messages, text=text, ids=list(ids), token_count=len(ids))

    # -- calls with retries ----------------------------------------------------------------------

    def _call(self, fn: Callable[[], T], what: str) -> T:
        import httpx2
        from huggingface_hub.errors import (
            HfHubHTTPError,
            InferenceTimeoutError,
            OfflineModeIsEnabled,
            TextGenerationError,
        )

        attempts = max(0, self.options.retries) + 1
        for attempt in range(attempts):
            try:
                result = fn()
                self._last_success = time.monotonic()
                return result
            except OfflineModeIsEnabled:
                raise FailedPrecondition(OFFLINE_MESSAGE.format(endpoint=self.endpoint)) from None
            except (HfHubHTTPError, TextGenerationError, InferenceTimeoutError, httpx2.TransportError) as exc:
                timeout = isinstance(exc, (InferenceTimeoutError, httpx2.TimeoutException))
                status = None if timeout else _http_status(exc)
                if isinstance(exc, httpx2.TransportError) and not timeout:
                    status = None  # connection refused / reset: retry
                message = "timed out" if timeout else _server_message(exc)
                if not is_retryable(status) or attempt == attempts - 1:
                    raise RemoteError(status or 0, message) from exc
                delay = min(10.0, self.options.backoff_seconds * (2 ** attempt)) * (0.5 + random.random())
                log.warning("remote call failed; retrying", extra={"what": what, "status": status or 0,
                                                                   "attempt": attempt + 1, "delay_s": round(delay, 2),
                                                                   "error": message})
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _generate_one(self, request: GenerationRequest) -> Generation:
        if request.cancelled.is_set():
            raise Unavailable("cancelled")
        sampling = request.sampling
        if self.options.flavor == "tgi":
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
            text = output.generated_text
        else:
            kwargs = dict(model=request.adapter_handle or self.remote_model, max_tokens=sampling.max_new_tokens,
                          temperature=sampling.temperature)
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
            text = choice.message.content or ""
            token_ids = []
            finish = str(choice.finish_reason or "unknown")
        generated = len(token_ids) if token_ids else 0
        metrics.GENERATED_TOKENS.inc(generated)
        metrics.PROMPT_TOKENS.inc(request.prompt.token_count)
        return Generation(text=text, token_ids=token_ids, prompt_tokens=request.prompt.token_count,
                          batch_size=0, finish_reason=finish)

    def submit(self, requests: list[GenerationRequest]) -> list[Future[Generation]]:
        if not self.ready:
            raise Unavailable("the student is still connecting to its remote server")
        if self._closed.is_set():
            raise Unavailable("the student server is shutting down")
        return [self._pool.submit(self._generate_one, request) for request in requests]

    # -- adapters --------------------------------------------------------------------------------

    def prepare_adapter(self, spec: CheckpointSpec) -> PreparedAdapter:
        """Probe the adapter id (CheckpointRef.uri) with a one-token request."""
        adapter_id = spec.uri
        probe = self.encode_prompt([{"role": "user", "content": "ping"}])
        try:
            if self.options.flavor == "tgi":
                self._call(lambda: self._client.text_generation(probe.text, max_new_tokens=1, adapter_id=adapter_id),
                           "adapter probe")
            else:
                self._call(lambda: self._client.chat_completion(probe.messages, model=adapter_id, max_tokens=1),
                           "adapter probe")
        except RemoteError as exc:
            if exc.status and not is_retryable(exc.status):
                hint = ("TGI loads LoRA adapters only at startup: add it to LORA_ADAPTERS and restart the server"
                        if self.options.flavor == "tgi" else
                        "the server must know it as a model or LoRA module name (vLLM: --lora-modules)")
                raise NotFound(f"the remote server does not serve adapter {adapter_id!r} "
                               f"({exc.status}: {exc.message}); {hint}") from exc
            raise to_service_error(exc, "adapter probe") from exc
        if spec.base_model:
            served = self.server_info.get("model_id") or self.remote_model
            from services.student.checkpoints import base_model_matches

            if served and not base_model_matches(spec.base_model, [served, self.options.model, self.remote_model]):
                raise FailedPrecondition(f"adapter {adapter_id!r} was trained on {spec.base_model!r}, "
                                         f"but the remote server serves {served!r}")
        return PreparedAdapter(spec, digest=f"remote:{adapter_id}", payload=adapter_id)

    def install_adapter(self, prepared: PreparedAdapter, handle: str) -> str:
        return str(prepared.payload)  # requests carry the adapter id itself

    def remove_adapter(self, handle: str) -> None:
        """Nothing to free here: the remote server owns its adapters."""

    def describe(self) -> ModelDescription:
        info = self.server_info
        return ModelDescription(
            base_model=str(info.get("model_id") or self.remote_model or self.options.model),
            backend="remote",
            device=self.endpoint,
            dtype=str(info.get("model_dtype") or info.get("dtype") or "remote"),
            supports_hot_swap=False,
            supports_per_request_adapter=True,
            max_batch_size=self.options.max_concurrency,
        )
