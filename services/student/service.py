"""StudentService logic, transport-free: validate, render prompts, admit on an adapter version,
generate through a backend, parse. The gRPC servicer (server.py) only translates messages.

Errors (services.runtime.errors -> gRPC codes by the runtime interceptor):
- INVALID_ARGUMENT: empty batch, too many items, empty observation or env, a prompt over the token
  limit, sampling values out of range, a malformed checkpoint reference;
- NOT_FOUND: a pinned adapter version that is not loaded, a checkpoint folder that does not exist;
- FAILED_PRECONDITION: a corrupt or incompatible checkpoint (the current version keeps serving);
  constrain_action asked of a backend that cannot restrict tokens;
- ALREADY_EXISTS: a version name reused for other weights;
- UNAVAILABLE: the model is still loading, or the server is shutting down;
- DEADLINE_EXCEEDED: the caller's deadline passed (its rows are dropped from the batch).

A call whose client cancels it (or goes away) is `CallCancellation.cancel()`ed by the servicer: its
rows leave the backend's queue or batch at the next decode step, as for an expired deadline.
Client strings echoed in errors go through services.runtime.errors.quote (bounded).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from services.runtime.deadline import NO_DEADLINE, Deadline
from services.runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ServiceError,
    Unavailable,
    quote,
)
from services.runtime.paths import check_text_field
from services.student import metrics
from services.student.adapters import AdapterRegistry, AdapterVersion
from services.student.backends.base import Backend
from services.student.prompts import DEFAULT_HISTORY_WINDOW, parse_for_env, render_messages, spec_for
from services.student.types import (
    BASE_VERSION,
    ActInput,
    ActOutput,
    AdapterStatus,
    CheckpointSpec,
    GenerationRequest,
    ModelDescription,
    Sampling,
)

log = logging.getLogger("leap.student")

_VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+\-]{0,127}$")


#: Past turns one item may carry (an environment's horizon is at most 10,000 steps).
MAX_HISTORY_ENTRIES = 10_000
#: Candidate actions one item may list.
MAX_CANDIDATES = 4_096
#: Characters of observations (history and current) an item of an environment with notes may carry: the
#: notes read every one of them, and such an episode's observations are a few hundred characters a step.
MAX_NOTES_TEXT = 256 * 1024


def item_size_problem(item) -> str | None:
    """Why an item (an ActInput or a leap.v1.ActItem) is too big to render, or None: checked before any
    of its text is converted or parsed."""
    if len(item.history) > MAX_HISTORY_ENTRIES:
        return (f"the history has {len(item.history)} entries, more than {MAX_HISTORY_ENTRIES}; "
                "send the episode's turns only")
    if len(item.candidates) > MAX_CANDIDATES:
        return f"there are {len(item.candidates)} candidate actions, more than {MAX_CANDIDATES}"
    if spec_for(item.env).notes:
        text = len(item.observation) + sum(len(turn.observation) for turn in item.history)
        if text > MAX_NOTES_TEXT:
            return (f"the observations hold {text} characters; the {item.env.strip()} notes read at most "
                    f"{MAX_NOTES_TEXT} (an episode of this environment holds a few hundred a step)")
    return None


def _decimal(value: float) -> float:
    """A float32 from the wire as the decimal the caller wrote (0.800000011920929 -> 0.8)."""
    return float(f"{value:.7g}")


class CallCancellation:
    """Whether anybody still waits for a call's answer; hooks run once when nobody does.

    The servicer cancels it when the gRPC call ends: while the handler still works, that means the
    client cancelled the call or went away (after a normal end it changes nothing). `on_cancel` hooks
    registered once it is cancelled run at once.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._cancelled = False
        self._hooks: list = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def on_cancel(self, hook) -> None:
        with self._lock:
            if not self._cancelled:
                self._hooks.append(hook)
                return
        hook()


@dataclass
class StudentLimits:
    """Request limits and defaults of one student server."""

    history_window: int = DEFAULT_HISTORY_WINDOW
    max_prompt_tokens: int = 2048
    max_items: int = 64
    default_max_new_tokens: int = 64
    max_new_tokens_limit: int = 512
    #: LoRA adapters kept loaded at most (base excluded); current and previous are always kept.
    max_adapters: int = 3
    #: Act calls handled at once, on threads of their own (more wait in line); health and control
    #: calls keep the server's --max-workers threads however many Acts are held.
    act_workers: int = 64


class StudentService:
    """Acting with the student policy and swapping its LoRA adapters while serving."""

    def __init__(self, backend: Backend, limits: StudentLimits | None = None):
        self.backend = backend
        self.limits = limits or StudentLimits()
        self.adapters = AdapterRegistry(backend.remove_adapter, max_adapters=self.limits.max_adapters)
        self._load_lock = threading.Lock()
        self._handle_serial = 0
        #: Set by close(): background work of the server (the health watcher) stops.
        self.closed = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the model (slow). The server reports SERVING once this returns."""
        self.backend.start()

    def close(self) -> None:
        self.closed.set()
        self.backend.close()

    def check_health(self) -> bool:
        """The backend's own health check (a remote server that answers); True when it has none."""
        return self.backend.check_health()

    @property
    def ready(self) -> bool:
        return self.backend.ready

    def _require_ready(self) -> None:
        if not self.backend.ready:
            raise Unavailable("the student model is still loading; retry when the health check reports SERVING")

    # -- Act -------------------------------------------------------------------------------------

    def _sampling(self, item: ActInput, where: str) -> Sampling:
        if not math.isfinite(item.temperature) or item.temperature < 0:
            raise InvalidArgument(f"{where}: sampling.temperature must be >= 0 (0 is greedy), got {item.temperature}")
        if not math.isfinite(item.top_p) or not 0 <= item.top_p <= 1:
            raise InvalidArgument(f"{where}: sampling.top_p must be in [0, 1] (0 means 1.0), got {item.top_p}")
        if item.max_new_tokens < 0 or item.max_new_tokens > self.limits.max_new_tokens_limit:
            raise InvalidArgument(
                f"{where}: sampling.max_new_tokens must be in [0, {self.limits.max_new_tokens_limit}] "
                f"(0 means the server default, {self.limits.default_max_new_tokens}), got {item.max_new_tokens}")
        if item.seed < 0:
            raise InvalidArgument(f"{where}: sampling.seed must be >= 0 (0 means unseeded), got {item.seed}")
        if item.max_reason_tokens < 0 or item.max_reason_tokens > self.limits.max_new_tokens_limit:
            raise InvalidArgument(
                f"{where}: sampling.max_reason_tokens must be in [0, {self.limits.max_new_tokens_limit}] "
                f"(0 means max_new_tokens), got {item.max_reason_tokens}")
        # Guided decoding applies where the action is one of the candidates: an item without any, or in
        # an environment that also accepts free text (webshop's search[...], bash), is decoded freely.
        constrain = bool(item.constrain_action and item.candidates and not spec_for(item.env).free_form)
        if constrain and not self.backend.supports_action_constraint:
            raise FailedPrecondition(
                f"{where}: sampling.constrain_action is not supported by the {self.backend.kind!r} backend "
                "(only the local transformers backend can restrict tokens to the candidates); "
                "send constrain_action=false")
        max_new_tokens = item.max_new_tokens or self.limits.default_max_new_tokens
        return Sampling(
            temperature=_decimal(item.temperature),
            max_new_tokens=max_new_tokens,
            seed=int(item.seed),
            top_p=_decimal(item.top_p) if item.top_p > 0 else 1.0,
            constrain_action=constrain,
            max_reason_tokens=(item.max_reason_tokens or max_new_tokens) if constrain else 0,
        )

    def act(self, items: list[ActInput], deadline: Deadline = NO_DEADLINE,
            cancellation: CallCancellation | None = None) -> list[ActOutput]:
        """Reason + action for each item. All items are validated before any is generated.

        When `cancellation` is cancelled (the client went away), the items leave the backend's
        scheduler and the call ends without answers.
        """
        self._require_ready()
        if not items:
            raise InvalidArgument("the request has no items; send at least one agent state")
        if len(items) > self.limits.max_items:
            raise InvalidArgument(
                f"the request has {len(items)} items; at most {self.limits.max_items} are accepted per call "
                "(split the batch; concurrent calls are batched together by the server)")
        prepared = []
        for index, item in enumerate(items):
            where = f"item {index}" + (f" ({quote(item.request_id, 60)})" if item.request_id else "")
            if not item.env.strip():
                raise InvalidArgument(f"{where}: env is empty; name the environment (household, alfworld, bash, ...)")
            if not item.observation.strip():
                raise InvalidArgument(f"{where}: observation is empty; send the current observation text")
            problem = item_size_problem(item)
            if problem is not None:
                raise InvalidArgument(f"{where}: {problem}")
            sampling = self._sampling(item, where)
            messages = render_messages(item.env, item.goal, item.history, item.observation, item.candidates,
                                       history_window=self.limits.history_window)
            prompt = self.backend.encode_prompt(messages)
            if prompt.token_count > self.limits.max_prompt_tokens:
                raise InvalidArgument(
                    f"{where}: the prompt has {prompt.token_count} tokens, more than the limit of "
                    f"{self.limits.max_prompt_tokens}; shorten the observation or candidates, or start the server "
                    "with a smaller --history-window or a larger --max-prompt-tokens")
            prepared.append((item, sampling, prompt))
        deadline.check("Act")

        admitted: list[AdapterVersion] = []
        try:
            for item, _, _ in prepared:
                admitted.append(self.adapters.admit(item.adapter_version))
        except ServiceError:
            for record in admitted:
                self.adapters.release(record)
            raise

        requests = [GenerationRequest(prompt=prompt, sampling=sampling, version=record.version,
                                      adapter_handle=record.handle,
                                      candidates=tuple(item.candidates) if sampling.constrain_action else ())
                    for (item, sampling, prompt), record in zip(prepared, admitted)]
        if cancellation is not None and cancellation.cancelled:
            for record in admitted:
                self.adapters.release(record)
            raise Unavailable("the call was cancelled by its client before generation started")
        try:
            futures = self.backend.submit(requests)
        except BaseException:
            for record in admitted:
                self.adapters.release(record)
            raise
        if cancellation is not None:
            # The backend drops rows whose request is cancelled at its next step (queued or generating).
            cancellation.on_cancel(lambda: [request.cancelled.set() for request in requests])
        for future, record in zip(futures, admitted):
            future.add_done_callback(lambda _f, r=record: self.adapters.release(r))
        generations = self._wait(futures, requests, deadline)

        outputs = []
        for (item, _, prompt), record, generation in zip(prepared, admitted, generations):
            parsed = parse_for_env(item.env, generation.text, item.candidates)
            metrics.ACT_ITEMS.labels(record.version, str(parsed.valid).lower()).inc()
            outputs.append(ActOutput(
                request_id=item.request_id, reason=parsed.reason, action=parsed.action,
                raw_output=generation.text, action_valid=parsed.valid, adapter_version=record.version,
                prompt_tokens=generation.prompt_tokens or prompt.token_count,
                completion_token_ids=list(generation.token_ids), batch_size=generation.batch_size,
                cached_prompt_tokens=generation.cached_prompt_tokens, reason_cut=generation.reason_cut))
        return outputs

    @staticmethod
    def _wait(futures: list[Future], requests: list[GenerationRequest], deadline: Deadline):
        results = []
        try:
            for future in futures:
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    raise FutureTimeout()
                results.append(future.result(timeout=remaining))
        except FutureTimeout:
            for request in requests:
                request.cancelled.set()
            raise DeadlineExceeded(
                "deadline exceeded while generating; the rows were dropped. Retry with a longer deadline, "
                "fewer items per call or a smaller max_new_tokens") from None
        except CancelledError:
            if any(request.cancelled.is_set() for request in requests):
                raise Unavailable("the call was cancelled; its rows were dropped from the batch") from None
            raise Unavailable("generation was cancelled (the server is shutting down)") from None
        except BaseException:
            for request in requests:
                request.cancelled.set()
            raise
        return results

    # -- adapters --------------------------------------------------------------------------------

    def load_adapter(self, spec: CheckpointSpec, keep_current: bool = False) -> AdapterStatus:
        """Verify and load a LoRA adapter beside the base model; make it current unless keep_current."""
        self._require_ready()
        if not spec.version:
            raise InvalidArgument("checkpoint.version is empty; every adapter needs a version name (e.g. 'iter-1')")
        if spec.version == BASE_VERSION:
            raise InvalidArgument(f"{BASE_VERSION!r} names the bare model and cannot be used for an adapter")
        if not _VERSION_NAME.match(spec.version):
            raise InvalidArgument(
                f"checkpoint.version {quote(spec.version, 60)} is not a valid version name (letters, digits and ._:@+- , "
                "at most 128 characters, starting with a letter or digit)")
        if not spec.uri:
            raise InvalidArgument("checkpoint.uri is empty; give the adapter folder (or the remote adapter id)")
        check_text_field(spec.uri, "checkpoint.uri")
        for name in ("name", "sha256", "base_model"):
            check_text_field(getattr(spec, name), f"checkpoint.{name}", max_chars=256)
        started = time.perf_counter()
        outcome = "OK"
        try:
            with self._load_lock:
                prepared = self.backend.prepare_adapter(spec)
                existing = self.adapters.check_new(spec.version, prepared.digest)
                if existing is not None:
                    if not keep_current:
                        self.adapters.make_current(spec.version)
                    log.info("adapter already loaded", extra={"version": spec.version, "current": not keep_current})
                    return self.adapters.status(spec.version)
                verified = time.perf_counter()
                self._handle_serial += 1
                handle = self.backend.install_adapter(prepared, f"adapter_{self._handle_serial}")
                seconds = time.perf_counter() - started
                record = AdapterVersion(version=spec.version, handle=handle, digest=prepared.digest,
                                        checkpoint=spec, load_seconds=seconds)
                self.adapters.add(record, make_current=not keep_current)
                metrics.ADAPTER_LOAD_SECONDS.observe(seconds)
                log.info("adapter loaded", extra={"version": spec.version, "uri": spec.uri, "handle": handle,
                                                  "seconds": round(seconds, 3),
                                                  "verify_seconds": round(verified - started, 3),
                                                  "current": not keep_current})
                return self.adapters.status(spec.version)
        except ServiceError as exc:
            outcome = exc.code.name
            log.warning("adapter refused", extra={"version": spec.version, "uri": spec.uri, "code": outcome,
                                                  "reason": exc.message})
            raise
        except BaseException:
            outcome = "INTERNAL"
            raise
        finally:
            metrics.ADAPTER_LOADS.labels(outcome).inc()

    def unload_adapter(self, version: str) -> AdapterStatus:
        self._require_ready()
        if not version:
            raise InvalidArgument("version is empty; name the adapter version to unload")
        status = self.adapters.retire(version)
        log.info("adapter retired", extra={"version": version, "in_flight": status.in_flight})
        return status

    def list_adapters(self) -> tuple[str, list[AdapterStatus]]:
        return self.adapters.snapshot()

    def model_info(self) -> ModelDescription:
        description = self.backend.describe()
        description.max_prompt_tokens = self.limits.max_prompt_tokens
        description.current_version = self.adapters.current
        return description
