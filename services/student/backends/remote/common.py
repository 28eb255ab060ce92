"""What every remote backend shares: options, health, probes, retries and error mapping.

A flavour (`tgi`, `openai`) subclasses `RemoteBackend` and supplies its client, its one-token
generation (the probe) and its generate call; everything else is here.

Retries: 429 and 5xx answers, timeouts and connection errors are retried with exponential backoff
and jitter (`retries` times); other 4xx answers are not (the request itself is wrong).

Health: `start` waits for the server to answer, then makes a real one-token generation (the call
every Act makes): a server that is up but cannot generate, a wrong model name, a refused key, or a
process where huggingface_hub refuses HTTP (HF_HUB_OFFLINE=1 blocks every request it makes, also to
a local endpoint) fail the start with a clear error instead of a "ready" server whose every Act
fails. While serving, `check_health` (every `health_interval` seconds) counts a recent successful
generation as proof of life and otherwise probes again; the service reports NOT_SERVING while that
fails.

Hot swap: a remote server's weights cannot be swapped from here. LoadAdapter registers a version
whose requests carry `CheckpointRef.uri` as the adapter id; the id is probed with a one-token request
first, and an id the server does not know is NOT_FOUND. ModelInfo says so: supports_hot_swap=false,
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
from abc import abstractmethod
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

#: The conversation of every one-token probe.
_PING = [{"role": "user", "content": "ping"}]


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
    """A backend that sends every row to an inference server over HTTP (one flavour per subclass)."""

    #: False when the server need not have `GET /health` (a 404 or 405 there: the probe decides).
    health_route_required: bool = True
    #: What an unknown adapter id needs on this kind of server (said in the NOT_FOUND message).
    adapter_hint: str = ""

    def __init__(self, options: RemoteOptions):
        if not options.endpoint:
            raise ValueError("the remote backend needs an endpoint URL")
        self.options = options
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

    # -- what a flavour supplies -----------------------------------------------------------------

    @abstractmethod
    def _make_client(self, timeout: float):
        """A huggingface_hub InferenceClient for this server."""

    @abstractmethod
    def _one_token(self, client, prompt: EncodedPrompt, adapter_id: str | None) -> None:
        """One real one-token generation on the served model (`adapter_id` None) or on an adapter."""

    @abstractmethod
    def _generate(self, request: GenerationRequest) -> tuple[str, list[int], str]:
        """(text, completion token ids, finish reason) for one row; ServiceError when the server refuses."""

    def _describe_server(self) -> None:
        """Fill `server_info` from the server, for servers that describe themselves."""

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
        self._describe_server()
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
                if not self.health_route_required and exc.code in (404, 405):
                    return
                last = exc
                time.sleep(0.5)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = exc
                time.sleep(0.5)
        raise Unavailable(f"the remote server {self.endpoint} is not healthy after "
                          f"{self.options.startup_timeout:.0f}s: {last}")

    def _probe_call(self, client=None) -> None:
        """One real one-token generation on the served model (no adapter)."""
        self._one_token(client or self._client, self.encode_prompt(_PING), None)

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
        text, token_ids, finish = self._generate(request)
        metrics.GENERATED_TOKENS.inc(len(token_ids))
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
        probe = self.encode_prompt(_PING)
        try:
            self._call(lambda: self._one_token(self._client, probe, adapter_id), "adapter probe")
        except RemoteError as exc:
            if exc.status and not is_retryable(exc.status):
                raise NotFound(f"the remote server does not serve adapter {adapter_id!r} "
                               f"({exc.status}: {exc.message}); {self.adapter_hint}") from exc
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
