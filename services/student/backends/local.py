"""Local backend: transformers + peft, one model, continuous batching, LoRA hot swap.

Decoding
    One scheduler thread owns the model. It runs its own KV-cached decode loop rather than
    `generate()`, because it needs per-row control that `generate()` does not give:
    - rows join a running batch between decode steps (iteration-level batching): a newcomer's prompt
      is prefilled on its own, its KV cache is left-padded to the batch's length and concatenated;
      finished rows leave at once (their futures resolve, the cache shrinks);
    - every row has its own temperature, top_p, max_new_tokens and torch.Generator, so a seeded row
      draws the same random numbers whatever else is in the batch (reproducibility; exact in fp32,
      while in bf16 another batch shape may round differently and, rarely, flip a token);
    - a row stops at the end of its ACTION line (or at eos, or at max_new_tokens);
    - a row with `constrain_action` chooses its action among its candidates: its reason is free,
      then (once it writes the ACTION label, or has it written for it when the reason runs out of
      tokens or ends without one) each token is restricted to a prefix tree of the candidates'
      token ids, and the row ends as soon as one candidate is complete, or its remaining tokens
      are determined (they are appended without further forward passes);
    - rows of different adapter versions share a forward pass through peft's per-row
      `adapter_names`; a batch of one version runs on base weights with its LoRA delta merged in
      (see below).
    Left padding with explicit position ids keeps every row's positions as if it ran alone.

System-prompt cache
    Every prompt of an environment starts with the same rendered system message (about a third of a
    household prompt). Its KV cache is computed once per adapter and kept (LRU); a newcomer's
    prefill then runs only on the rest of its prompt, on top of a copy of that cache:
    `[pad][system KV][pad][rest of prompt]`, with the mask hiding both pads and positions continuing
    from the end of the system message, so the row computes what it would have computed alone.

Merged adapter
    peft's unmerged LoRA path adds two thin matmuls per targeted Linear (measured on a CPU in bf16, r=16 on
    all 7 projections: +20-35 % per decode step at ~50 rows, +45-65 % at 4 rows, +25-40 % on prefill). When
    every row of a forward pass uses one adapter (evaluation, rollouts), its delta scaling * B @ A is added
    to the base weights instead (in fp32, then cast) and peft's layers are disabled, so the pass runs at
    base-model speed. Leaving that state copies back a copy of the weights as loaded, kept before their
    first merge: subtracting the delta again would not restore bf16 weights bit for bit, and the error
    would grow with every swap. Base rows and mixed batches never see merged weights. Merged and unmerged
    compute the same function up to rounding, so the per-adapter system-prompt cache serves both.

Hot swap
    `prepare_adapter` reads and verifies the checkpoint on the caller's thread (hashes, config,
    safetensors structure, weight shapes against the model, every weight finite and at most
    MAX_ABS_WEIGHT in size) and loads its tensors; only the final injection runs on the scheduler
    thread, between two decode steps, so requests keep flowing and no forward pass ever sees a
    half-loaded adapter. The injected adapter then runs one probe forward pass; scores that are not
    finite refuse it. A failed injection is rolled back.

Failures and cancellation
    A row whose scores are not finite (weights gone bad) or whose sampling fails is failed on its own
    and leaves the batch; the other rows of the forward pass go on. A row whose request is cancelled
    (the caller's deadline passed, or its client cancelled the call) leaves the queue or the batch at
    the next decode step: it stops generating and frees its slot. `rows_in_flight()`,
    `cancelled_rows` and `failed_rows` say what the scheduler holds and has dropped.

Models: "smollm2" (default, offline), any local folder, or a hub id; bf16/fp16 on GPU, bf16 on CPUs with
AMX (native bf16 matmuls, 3-4x faster prefill there), fp32 on other CPUs.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import warnings
from collections import OrderedDict, deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from services.models import is_default_alias, load_model_and_tokenizer, resolve_model
from services.runtime.errors import FailedPrecondition, Internal, Unavailable, quote
from services.student import metrics
from services.student.backends.base import Backend, PreparedAdapter
from services.student.backends.kv_cache import drop_leading, is_full_attention, merge_into, new_decode_cache
from services.student.checkpoints import CheckpointLimits, check_base_model, read_checkpoint
from services.student.prompts import action_line_complete, chat_prompt, ends_with_action_label
from services.student.types import (
    CheckpointSpec,
    EncodedPrompt,
    Generation,
    GenerationRequest,
    ModelDescription,
)

log = logging.getLogger("leap.student.local")

_SMOLLM2_NAMES = ("smollm2", "smollm2-135m", "smollm2-135m-instruct", "default",
                  "HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")
_BASE_ROW = "__base__"  # peft's name for "no adapter" in per-row adapter_names
#: Largest absolute value of an adapter weight that is served. Trained LoRA weights stay far below 1;
#: a weight of 1e30 (finite in fp32) overflows any forward pass it takes part in.
MAX_ABS_WEIGHT = 1e4
#: The text of the probe forward pass a freshly injected adapter must answer with finite scores.
_PROBE_TEXT = "You are in the middle of a room. Your task is to: put a clean apple in fridge.\nREASON:"


@dataclass
class LocalOptions:
    model: str = "smollm2"
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 8
    #: Rows prefilled together; more newcomers join the running batch on the next steps. Prefill
    #: attention grows with rows x length^2, so a wide decode batch is best filled in chunks
    #: (0: up to max_batch_size at once).
    max_prefill_rows: int = 16
    #: How long the first queued row waits for companions before a new batch starts, and how long
    #: newcomers may wait before they are prefilled into a running batch.
    max_wait_ms: float = 10.0
    #: Stop a row at the end of its ACTION line (True) or only at eos / max_new_tokens.
    stop_at_action_line: bool = True
    #: The adapters root: LoadAdapter reads checkpoint folders under it only (relative URIs are taken
    #: from it; absolute ones, '..' and symlinks must stay in it). The server always sets one
    #: (--adapters-root); "" (embedding, tests) accepts any local folder.
    adapters_root: str = ""
    #: Caps on a checkpoint's files (weights size, JSON sizes, LoRA rank).
    checkpoint_limits: CheckpointLimits = CheckpointLimits()
    #: Cache the KV of the shared system message (per adapter) and prefill only the rest of a prompt.
    prefix_cache: bool = True
    #: System-message caches kept (one per system message and adapter), least recently used dropped.
    prefix_cache_entries: int = 16
    #: Keep the KV cache in buffers with spare columns, written in place each decode step (False:
    #: transformers' DynamicLayer, which concatenates the whole cache every step; for comparisons).
    kv_append_in_place: bool = True
    #: When every row of a forward pass uses the same adapter, run it on base weights with that adapter
    #: merged in, instead of peft's unmerged LoRA path (False: always unmerged; for comparisons, or
    #: for a model too large for the extra copy of its targeted weights that restoring needs).
    merge_uniform_adapter: bool = True


#: System messages shorter than this are not worth a cache entry.
_MIN_PREFIX_TOKENS = 16


#: Marks a complete candidate inside an action prefix tree.
_END = -1
#: Trailing tokens decoded to look for the ACTION label a constrained row waits for.
_LABEL_WINDOW = 8


class _ActionChoice:
    """A constrained row's action state: the candidates' prefix tree and where the row is in it.

    `tree` maps a token id to its subtree; `_END` in a subtree means a candidate ends there.
    `forced` holds label tokens the server writes for the row, fed one per step.
    """

    __slots__ = ("tree", "node", "forced", "free_tokens")

    def __init__(self, tree: dict):
        self.tree = tree
        self.node: dict | None = None  # None: still in the free-text reason
        self.forced: deque[int] = deque()
        self.free_tokens = 0


def _prefix_tree(sequences: list[list[int]]) -> dict:
    tree: dict = {}
    for ids in sequences:
        if not ids:
            continue
        node = tree
        for token in ids:
            node = node.setdefault(token, {})
        node[_END] = {}
    return tree


def _determined_tail(node: dict) -> list[int] | None:
    """The tokens that finish the only candidate left under `node`, or None while there is a choice."""
    tail: list[int] = []
    while True:
        children = [t for t in node if t != _END]
        if _END in node:
            return tail if not children else None
        if len(children) != 1:
            return None
        tail.append(children[0])
        node = node[children[0]]


class _Row:
    """A request inside the scheduler: its prompt, its sampling state and what it generated so far."""

    __slots__ = ("request", "future", "enqueued", "generator", "tokens", "position", "max_batch", "started",
                 "choice")

    def __init__(self, request: GenerationRequest, future: Future, choice: _ActionChoice | None = None):
        self.request = request
        self.future = future
        self.enqueued = time.monotonic()
        self.generator: torch.Generator | None = None
        self.tokens: list[int] = []
        self.position = 0
        self.max_batch = 0
        self.started = 0.0
        self.choice = choice


def _resolve(future: Future, result: Any) -> None:
    """Set a row's result unless the row was already resolved or cancelled."""
    try:
        if not future.done():
            future.set_result(result)
    except InvalidStateError:  # cancelled between the check and the set
        pass


def _fail(future: Future, exc: BaseException) -> None:
    """Set a row's exception unless the row was already resolved or cancelled."""
    try:
        if not future.done():
            future.set_exception(exc)
    except InvalidStateError:
        pass


class _Batch:
    """Rows decoding together: their shared KV cache, attention mask and next-token logits."""

    def __init__(self, rows: list[_Row], cache, mask: torch.Tensor, logits: torch.Tensor):
        self.rows = rows
        self.cache = cache
        self.mask = mask
        self.logits = logits


class LocalBackend(Backend):
    kind = "local"
    supports_action_constraint = True

    def __init__(self, options: LocalOptions | None = None):
        self.options = options or LocalOptions()
        if self.options.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model = None
        self.tokenizer = None
        self.peft = None  # peft.PeftModel once the first adapter is installed
        self.spec = None
        self.device = ""
        self.dtype = None
        self._eos_ids: set[int] = set()
        self._linear_shapes: dict[str, tuple[int, int]] = {}
        self._base_names: list[str] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._tokenizer_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending: deque[_Row] = deque()
        self._control: deque[tuple[Callable[[], Any], Future]] = deque()
        self._thread: threading.Thread | None = None
        self._can_join = True
        self._adapter_mode: str | None = None  # what the peft layers are set to: handle, "disabled", "mixed" or None
        self._merged: str | None = None  # the adapter whose delta the base weights carry (layers then disabled)
        self._mergeable: set[str] = set()  # adapters that are plain LoRA on Linear layers
        #: Base Linear -> its weight as loaded, kept before its first merge.
        self._pristine: dict[torch.nn.Linear, torch.Tensor] = {}
        #: (adapter handle, system ids) -> per-layer (keys, values) of shape [1, heads, P, dim].
        self._prefix_kv: OrderedDict[tuple[str | None, tuple[int, ...]], list[tuple[torch.Tensor, torch.Tensor]]] = \
            OrderedDict()
        self._prefix_ok = self.options.prefix_cache
        self._system_ids: dict[str, list[int]] = {}  # rendered system message -> its ids (tokenizer thread)
        self._colon_ids: frozenset[int] = frozenset()  # tokens whose text has a ":" (may end an ACTION label)
        self._label_ids: dict[bool, list[int]] = {}  # after a newline? -> ids of the ACTION label to write
        self._probe_ids: list[int] = []
        self._active_rows = 0  # rows of the running batch (written by the scheduler thread)
        #: Rows dropped because their request was cancelled / failed alone (the batch went on).
        self.cancelled_rows = 0
        self.failed_rows = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.perf_counter()
        import peft  # noqa: F401 - imported now so that the first LoadAdapter does not pay for it
        self.model, self.tokenizer, self.spec = load_model_and_tokenizer(
            self.options.model, device=self.options.device, dtype=self.options.dtype, padding_side="left")
        self.device = str(next(self.model.parameters()).device)
        self.dtype = next(self.model.parameters()).dtype
        eos = self.tokenizer.eos_token_id
        self._eos_ids = {eos} if eos is not None else set()
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            self._eos_ids.add(gen_eos)
        elif isinstance(gen_eos, (list, tuple)):
            self._eos_ids.update(int(e) for e in gen_eos)
        vocab = self.tokenizer.get_vocab()
        self._colon_ids = frozenset(i for token, i in vocab.items() if ":" in token)
        self._label_ids = {
            True: list(self.tokenizer("ACTION:", add_special_tokens=False)["input_ids"]),
            False: list(self.tokenizer("\nACTION:", add_special_tokens=False)["input_ids"]),
        }
        self._probe_ids = list(self.tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"])
        self._linear_shapes = {
            name: (module.in_features, module.out_features)
            for name, module in self.model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
        names = {self.options.model, self.spec.location, getattr(self.model.config, "_name_or_path", "")}
        if self._is_default_model():
            names.update(_SMOLLM2_NAMES)
        self._base_names = [self.spec.requested] + sorted(n for n in names if n and n != self.spec.requested)
        self._thread = threading.Thread(target=self._loop, name="student-batcher", daemon=True)
        self._thread.start()
        self._ready.set()
        log.info("model loaded", extra={"model": self.spec.location, "device": self.device,
                                        "dtype": str(self.dtype).replace("torch.", ""),
                                        "seconds": round(time.perf_counter() - started, 2)})

    def _is_default_model(self) -> bool:
        """True when the loaded model is the embedded SmolLM2 (whose checkpoints may name it by any alias).

        A machine serving another model need not have the embedded one installed at all.
        """
        if is_default_alias(self.options.model):
            return True
        try:
            return Path(self.spec.location).resolve() == Path(resolve_model("smollm2").location).resolve()
        except (FileNotFoundError, ImportError, OSError):  # the embedded model is not installed here
            return False

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._cond:
            while self._pending:
                row = self._pending.popleft()
                _fail(row.future, Unavailable("the student server is shutting down"))
            while self._control:
                _, fut = self._control.popleft()
                if not fut.done():
                    fut.set_exception(Unavailable("the student server is shutting down"))

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def rows_in_flight(self) -> int:
        """Rows the scheduler holds: queued plus generating."""
        with self._cond:
            return len(self._pending) + self._active_rows

    def rows_generating(self) -> int:
        """Rows of the running batch."""
        return self._active_rows

    # -- prompts ---------------------------------------------------------------------------------

    def encode_prompt(self, messages: list[dict[str, str]]) -> EncodedPrompt:
        with self._tokenizer_lock:  # one Rust tokenizer shared by the handler threads
            text = chat_prompt(self.tokenizer, messages)
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            prefix = self._system_prefix(messages, text, ids) if self._prefix_ok else 0
        return EncodedPrompt(messages=messages, text=text, ids=ids, token_count=len(ids), prefix_tokens=prefix)

    def _system_prefix(self, messages: list[dict[str, str]], text: str, ids: list[int]) -> int:
        """How many leading ids are the system message alone, when that is a clean token boundary."""
        if len(messages) < 2 or messages[0].get("role") != "system":
            return 0
        try:
            head = self.tokenizer.apply_chat_template(messages[:1], add_generation_prompt=False, tokenize=False)
        except Exception:  # noqa: BLE001 - a template without a system role: no shared prefix
            return 0
        if not isinstance(head, str) or not text.startswith(head):
            return 0
        head_ids = self._system_ids.get(head)
        if head_ids is None:
            head_ids = list(self.tokenizer(head, add_special_tokens=False)["input_ids"])
            if len(self._system_ids) >= 64:
                self._system_ids.clear()
            self._system_ids[head] = head_ids
        n = len(head_ids)
        if n < _MIN_PREFIX_TOKENS or n >= len(ids) or ids[:n] != head_ids:
            return 0
        return n

    # -- generation ------------------------------------------------------------------------------

    def submit(self, requests: list[GenerationRequest]) -> list[Future[Generation]]:
        if not self.ready:
            raise Unavailable("the model is still loading; retry when the health check reports SERVING")
        for request in requests:
            if request.prompt.ids is None:
                raise ValueError("the local backend needs token ids")
        choices = [self._action_choice(request) for request in requests]
        futures: list[Future[Generation]] = []
        with self._cond:
            if self._stop.is_set():
                raise Unavailable("the student server is shutting down")
            for request, choice in zip(requests, choices):
                future: Future[Generation] = Future()
                self._pending.append(_Row(request, future, choice))
                futures.append(future)
            metrics.QUEUE_DEPTH.set(len(self._pending))
            self._cond.notify_all()
        return futures

    def _action_choice(self, request: GenerationRequest) -> _ActionChoice | None:
        """The prefix tree of a constrained row's candidates (as tokenized after "ACTION:")."""
        if not request.sampling.constrain_action or not request.candidates:
            return None
        with self._tokenizer_lock:
            encoded = self.tokenizer([" " + " ".join(c.split()) for c in request.candidates],
                                     add_special_tokens=False)["input_ids"]
        tree = _prefix_tree([list(ids) for ids in encoded])
        return _ActionChoice(tree) if tree else None

    def _loop(self) -> None:
        """The scheduler: sample, retire finished rows, run control commands, decode, admit newcomers."""
        batch: _Batch | None = None
        with torch.inference_mode():
            while not self._stop.is_set():
                newcomers: list[_Row] = []
                self._active_rows = len(batch.rows) if batch is not None else 0
                with self._cond:
                    self._drop_cancelled_pending()  # a full batch takes no newcomers: drop them here too
                try:
                    if batch is None:
                        self._wait_for_work()
                        self._run_control()
                        newcomers = self._take_newcomers(self._prefill_room(self.options.max_batch_size),
                                                         first_batch=True)
                        if newcomers:
                            batch = self._prefill(newcomers)
                        continue
                    batch = self._step(batch)
                    self._run_control()
                    if batch is not None:
                        batch = self._decode(batch)
                        self._run_control()  # an adapter load waits for one forward pass at most
                    room = self.options.max_batch_size - (len(batch.rows) if batch else 0)
                    if room > 0 and (batch is None or self._can_join):
                        newcomers = self._take_newcomers(self._prefill_room(room), first_batch=batch is None)
                        if newcomers:
                            joined = self._prefill(newcomers)
                            batch = joined if batch is None else self._merge(batch, joined)
                except Exception as exc:  # noqa: BLE001 - fail the rows involved, keep serving
                    # A failed forward pass (out of memory, a broken layer) leaves no usable cache for
                    # any of its rows; failures of single rows are handled in _step and never get here.
                    log.exception("generation failed; failing the rows of this batch")
                    for row in (batch.rows if batch is not None else []) + newcomers:
                        _fail(row.future, exc)
                    batch = None
            self._active_rows = 0
            for row in batch.rows if batch is not None else []:
                _fail(row.future, Unavailable("the student server is shutting down"))

    def _wait_for_work(self) -> None:
        with self._cond:
            while not self._pending and not self._control and not self._stop.is_set():
                self._cond.wait(timeout=1.0)

    def _prefill_room(self, room: int) -> int:
        cap = self.options.max_prefill_rows
        return min(room, cap) if cap > 0 else room

    def _take_newcomers(self, room: int, *, first_batch: bool) -> list[_Row]:
        """Rows to start now: up to `room`, once enough are queued or the oldest has waited long enough."""
        wait_s = self.options.max_wait_ms / 1000.0
        with self._cond:
            while True:
                self._drop_cancelled_pending()
                if not self._pending or self._stop.is_set():
                    return []
                oldest_wait = time.monotonic() - self._pending[0].enqueued
                if len(self._pending) >= room or oldest_wait >= wait_s:
                    break
                if not first_batch:
                    return []  # a batch is running: check again after the next step
                if self._control:
                    return []
                self._cond.wait(timeout=wait_s - oldest_wait)
            rows = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            metrics.QUEUE_DEPTH.set(len(self._pending))
        now = time.monotonic()
        for row in rows:
            metrics.QUEUE_WAIT.observe(now - row.enqueued)
            row.started = now
        return rows

    def _drop_cancelled_pending(self) -> None:
        """Drop queued rows whose request was cancelled (call with self._cond held)."""
        if any(row.request.cancelled.is_set() for row in self._pending):
            kept = deque()
            for row in self._pending:
                if row.request.cancelled.is_set():
                    row.future.cancel()
                    self._count_cancelled()
                else:
                    kept.append(row)
            self._pending = kept
            metrics.QUEUE_DEPTH.set(len(self._pending))

    def _count_cancelled(self) -> None:
        self.cancelled_rows += 1
        metrics.DROPPED_ROWS.labels("cancelled").inc()

    # -- model calls -----------------------------------------------------------------------------

    def _forward(self, rows: list[_Row], **inputs):
        model = self.peft if self.peft is not None else self.model
        handles = [row.request.adapter_handle for row in rows]
        if self.peft is not None:
            if len(set(handles)) == 1:
                handle = handles[0]
                if not handle:  # the base model
                    self._set_adapter_mode("disabled")
                elif self.options.merge_uniform_adapter and handle in self._mergeable:
                    self._set_adapter_mode("disabled", merged=handle)
                else:
                    self._set_adapter_mode(handle)
            else:
                self._set_adapter_mode("mixed")
                inputs["adapter_names"] = [h or _BASE_ROW for h in handles]
        metrics.BATCH_SIZE.observe(len(rows))
        for row in rows:
            row.max_batch = max(row.max_batch, len(rows))
        return model(**inputs, use_cache=True, logits_to_keep=1)

    def _set_adapter_mode(self, mode: str, merged: str | None = None) -> None:
        """Put peft's layers and the base weights in the state a forward pass needs.

        `mode`: "disabled" (every LoRA layer calls only its base layer), "mixed" (rows pass adapter_names) or
        a handle (peft's unmerged path for that adapter). `merged`, with "disabled": the adapter whose delta
        the base weights must carry (None: the weights as loaded).
        """
        if merged != self._merged:
            self._restore_base_weights()
            if merged is not None:
                self._merge_into_base(merged)
        if mode == self._adapter_mode:
            return
        if mode == "disabled":
            self.peft.base_model.disable_adapter_layers()
        else:
            if self._adapter_mode in ("disabled", None):
                self.peft.base_model.enable_adapter_layers()
            if mode != "mixed":
                self.peft.base_model.set_adapter(mode, inference_mode=True)
        self._adapter_mode = mode

    def _lora_layers(self, handle: str) -> list:
        """peft's LoRA layers that hold `handle`."""
        from peft.tuners.lora import LoraLayer

        return [m for m in self.peft.modules() if isinstance(m, LoraLayer) and handle in m.lora_A]

    def _merge_into_base(self, handle: str) -> None:
        """Set each targeted base weight to its weight as loaded + scaling * B @ A, summed in fp32.

        With peft's layers disabled, a LoRA Linear calls only its base layer (peft 0.21 `Linear.forward`:
        `disable_adapters` and no peft-merged adapters), so the pass computes base + delta.
        """
        self._merged = handle  # before any write, so that the restore below undoes a partial merge
        try:
            for layer in self._lora_layers(handle):
                base = layer.get_base_layer()
                pristine = self._pristine.get(base)
                if pristine is None:  # a weight is only written after this copy: it is the weight as loaded
                    pristine = self._pristine[base] = base.weight.detach().clone()
                a, b = layer.lora_A[handle].weight.float(), layer.lora_B[handle].weight.float()
                left, right = (a.T, b.T) if layer.fan_in_fan_out else (b, a)  # (B @ A).T for a transposed weight
                base.weight.copy_(torch.addmm(pristine.float(), left, right, alpha=layer.scaling[handle]))
        except BaseException:  # a half-merged model must not serve the next pass for this handle
            self._restore_base_weights()
            raise

    def _restore_base_weights(self) -> None:
        """Copy the weights as loaded back over a merged adapter (bit-exact)."""
        if self._merged is None:
            return
        for base, pristine in self._pristine.items():
            base.weight.copy_(pristine)
        self._merged = None

    def _can_merge(self, handle: str, config) -> bool:
        """Plain LoRA on Linear layers: DoRA and other variants, LoRA biases and fully trained modules change
        more than a weight delta, so such an adapter stays on peft's unmerged path."""
        from peft.tuners.lora import Linear as LoraLinear

        if getattr(config, "modules_to_save", None) or getattr(config, "trainable_token_indices", None):
            return False
        layers = self._lora_layers(handle)
        return bool(layers) and all(
            type(layer) is LoraLinear and isinstance(layer.get_base_layer(), torch.nn.Linear)
            and handle not in layer.lora_variant and not layer.lora_bias.get(handle, False)
            for layer in layers)

    def _prefill(self, rows: list[_Row]) -> _Batch:
        for row in rows:
            row.generator = self._generator_for(row)
        prefixes = [self._prefix_for(row) for row in rows]
        lengths = [len(row.request.prompt.ids) for row in rows]
        shared = [p[0][0].shape[2] if p else 0 for p in prefixes]
        prefix_width = max(shared)
        rest = [length - n for length, n in zip(lengths, shared)]
        width = max(rest)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), prefix_width + width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, length, n, m) in enumerate(zip(rows, lengths, shared, rest)):
            input_ids[i, width - m:] = torch.tensor(row.request.prompt.ids[n:], dtype=torch.long)
            mask[i, prefix_width - n:prefix_width] = 1
            mask[i, prefix_width + width - m:] = 1
            positions[i, width - m:] = torch.arange(n, length, dtype=torch.long)
            row.position = length
        cache = new_decode_cache(self.model.config, append_in_place=self.options.kv_append_in_place)
        if prefix_width:
            self._seed_cache(cache, prefixes, shared, prefix_width)
            metrics.PREFIX_CACHED_TOKENS.inc(sum(shared))
        out = self._forward(rows, input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=positions.to(self.device), past_key_values=cache)
        self._can_join = self._can_join and all(is_full_attention(layer) for layer in cache.layers)
        return _Batch(rows, cache, mask.to(self.device), out.logits[:, -1, :].float())

    def _seed_cache(self, cache, prefixes: list, shared: list[int], width: int) -> None:
        """Fill an empty cache with each row's system-message KV, left-padded to `width`."""
        template = next(p for p in prefixes if p)
        for layer_idx in range(len(template)):
            keys, values = [], []
            for prefix, n in zip(prefixes, shared):
                if prefix:
                    k, v = prefix[layer_idx]
                    keys.append(torch.nn.functional.pad(k, (0, 0, width - n, 0)))
                    values.append(torch.nn.functional.pad(v, (0, 0, width - n, 0)))
                else:
                    k, v = template[layer_idx]
                    keys.append(k.new_zeros((1, k.shape[1], width, k.shape[3])))
                    values.append(v.new_zeros((1, v.shape[1], width, v.shape[3])))
            cache.update(torch.cat(keys, dim=0), torch.cat(values, dim=0), layer_idx)

    def _prefix_for(self, row: _Row) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The cached system-message KV of this row's prompt and adapter, computed on a miss."""
        n = row.request.prompt.prefix_tokens
        ids = row.request.prompt.ids
        if not self._prefix_ok or n < _MIN_PREFIX_TOKENS or n >= len(ids):
            return None
        key = (row.request.adapter_handle, tuple(ids[:n]))
        cached = self._prefix_kv.get(key)
        if cached is not None:
            self._prefix_kv.move_to_end(key)
            return cached
        cache = new_decode_cache(self.model.config, append_in_place=self.options.kv_append_in_place)
        self._forward([row], input_ids=torch.tensor([ids[:n]], dtype=torch.long, device=self.device),
                      attention_mask=torch.ones((1, n), dtype=torch.long, device=self.device),
                      position_ids=torch.arange(n, dtype=torch.long, device=self.device)[None],
                      past_key_values=cache)
        if not all(is_full_attention(layer) for layer in cache.layers):
            self._prefix_ok = False  # sliding-window or other special layers: prefill whole prompts
            return None
        entry = [(layer.keys, layer.values) for layer in cache.layers]
        self._prefix_kv[key] = entry
        while len(self._prefix_kv) > max(1, self.options.prefix_cache_entries):
            self._prefix_kv.popitem(last=False)
        return entry

    def _forget_prefixes(self, handle: str) -> None:
        for key in [k for k in self._prefix_kv if k[0] == handle]:
            del self._prefix_kv[key]

    def _generator_for(self, row: _Row) -> torch.Generator | None:
        sampling = row.request.sampling
        if sampling.greedy:
            return None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(sampling.seed if sampling.seed else secrets.randbits(63))
        return generator

    def _decode(self, batch: _Batch) -> _Batch:
        last = torch.tensor([[row.tokens[-1]] for row in batch.rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[row.position] for row in batch.rows], dtype=torch.long, device=self.device)
        for row in batch.rows:
            row.position += 1
        ones = torch.ones((len(batch.rows), 1), dtype=batch.mask.dtype, device=self.device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        out = self._forward(batch.rows, input_ids=last, attention_mask=batch.mask, position_ids=positions,
                            past_key_values=batch.cache)
        batch.logits = out.logits[:, -1, :].float()
        return batch

    def _merge(self, running: _Batch, joined: _Batch) -> _Batch:
        """Concatenate two batches: left-pad the shorter cache (and mask) to the longer length."""
        width = max(running.mask.shape[1], joined.mask.shape[1])

        def widen(mask: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(mask, (width - mask.shape[1], 0))

        for layer_a, layer_b in zip(running.cache.layers, joined.cache.layers):
            merge_into(layer_a, layer_b, width)
        running.mask = torch.cat([widen(running.mask), widen(joined.mask)], dim=0)
        running.logits = torch.cat([running.logits, joined.logits], dim=0)
        running.rows = running.rows + joined.rows
        return running

    # -- sampling and stopping -------------------------------------------------------------------

    def _step(self, batch: _Batch) -> _Batch | None:
        """Pick each row's next token, finish rows that are done, drop them from the batch.

        A row whose scores are not finite, or whose sampling or stopping check fails, fails on its own
        (its caller gets the error) and leaves the batch like a finished row; the others go on.
        """
        chosen = self._select_tokens(batch)
        keep: list[int] = []
        for i, (row, token) in enumerate(zip(batch.rows, chosen)):
            try:
                if isinstance(token, Exception):
                    raise token
                if row.choice is not None:
                    reason = self._constrained_step(row, token)
                else:
                    row.tokens.append(token)
                    reason = self._finish_reason(row, token)
                if reason is not None:
                    self._complete(row, reason)
            except Exception as exc:  # noqa: BLE001 - this row fails; its batch companions go on
                self._fail_row(row, exc)
                continue
            if reason is None:
                keep.append(i)
        if len(keep) == len(batch.rows):
            return batch
        if not keep:
            return None
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        batch.cache.batch_select_indices(index)
        batch.mask = batch.mask[index]
        batch.logits = batch.logits[index]
        batch.rows = [batch.rows[i] for i in keep]
        if self._can_join:
            self._trim_left(batch)
        return batch

    def _trim_left(self, batch: _Batch) -> None:
        """Drop cache columns that are padding for every remaining row."""
        used = batch.mask.sum(dim=0) > 0
        first = int(torch.nonzero(used)[0]) if bool(used.any()) else 0
        if first == 0:
            return
        batch.mask = batch.mask[:, first:]
        for layer in batch.cache.layers:
            drop_leading(layer, first)

    def _constrained_step(self, row: _Row, token: int) -> str | None:
        """Advance a constrained row by the sampled `token`; the finish reason once it is done."""
        choice = row.choice
        if row.request.cancelled.is_set():
            return "cancelled"
        if choice.forced:  # the server is writing the ACTION label: the sampled token is ignored
            return self._write_label_token(row)
        if choice.node is not None:  # inside the action: `token` was restricted to the tree
            if token == _END:
                return "action_choice"
            row.tokens.append(token)
            choice.node = choice.node[token]
            tail = _determined_tail(choice.node)
            if tail is not None:
                row.tokens.extend(tail)
                return "action_choice"
            return None
        # Free reason text.
        if token not in self._eos_ids:
            row.tokens.append(token)
            choice.free_tokens += 1
            if token in self._colon_ids:
                with self._tokenizer_lock:
                    tail_text = self.tokenizer.decode(row.tokens[-_LABEL_WINDOW:], skip_special_tokens=True)
                if len(row.tokens) <= _LABEL_WINDOW:
                    tail_text = "\n" + tail_text  # the window reaches the start of the answer
                if ends_with_action_label(tail_text):
                    choice.node = choice.tree
                    return self._finish_if_determined(row)
            sampling = row.request.sampling
            if choice.free_tokens < (sampling.max_reason_tokens or sampling.max_new_tokens):
                return None
            # The reason budget is spent without a label: the server writes "ACTION:" from the next
            # step on (this step's token still has to go through the model).
            choice.forced.extend(self._label_ids[self._ends_line(row)])
            return None
        # eos before any label: the label replaces it.
        choice.forced.extend(self._label_ids[self._ends_line(row)])
        return self._write_label_token(row)

    def _write_label_token(self, row: _Row) -> str | None:
        """Append the next token of the label the server writes; enter the tree after the last one."""
        choice = row.choice
        row.tokens.append(choice.forced.popleft())
        if choice.forced:
            return None
        choice.node = choice.tree
        return self._finish_if_determined(row)

    def _ends_line(self, row: _Row) -> bool:
        if not row.tokens:
            return True
        with self._tokenizer_lock:
            return self.tokenizer.decode(row.tokens[-1:]).endswith("\n")

    @staticmethod
    def _finish_if_determined(row: _Row) -> str | None:
        tail = _determined_tail(row.choice.node)
        if tail is None:
            return None
        row.tokens.extend(tail)  # a single candidate: nothing left to choose
        return "action_choice"

    def _select_tokens(self, batch: _Batch) -> list[int | Exception]:
        """Each row's next token, or the exception that row failed with."""
        logits = batch.logits
        chosen: list[int | Exception] = logits.argmax(dim=-1).tolist()
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        for i, row in enumerate(batch.rows):
            if not finite[i]:
                chosen[i] = self._non_finite(row)
                continue
            try:
                chosen[i] = self._select_token(logits[i], row, chosen[i])
            except Exception as exc:  # noqa: BLE001 - reported on this row alone
                chosen[i] = exc
        return chosen

    @staticmethod
    def _non_finite(row: _Row) -> Exception:
        version = row.request.version
        if row.request.adapter_handle:
            return FailedPrecondition(
                f"the model's scores for this row are non-finite (NaN or inf) on adapter version {version!r}: "
                "its weights are broken; unload it and load a sound checkpoint, or pin another version")
        return Internal("the model's scores for this row are non-finite (NaN or inf) on the base model")

    def _select_token(self, logits: torch.Tensor, row: _Row, greedy_token: int) -> int:
        sampling = row.request.sampling
        choice = row.choice
        if choice is not None and choice.node is not None and not choice.forced:
            return self._choose_in_tree(logits, choice.node, row)
        if sampling.greedy:
            return greedy_token
        probs = torch.softmax(logits / max(sampling.temperature, 1e-5), dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            drop = (cumulative - sorted_probs) >= sampling.top_p  # keep the smallest set reaching top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=row.generator).item())

    def _choose_in_tree(self, logits: torch.Tensor, node: dict, row: _Row) -> int:
        """The next action token among `node`'s children (`_END` when eos wins and a candidate ends here)."""
        options = [t for t in node if t != _END]
        eos = next(iter(self._eos_ids), None) if _END in node else None
        ids = options + ([eos] if eos is not None else [])
        scores = logits[torch.tensor(ids, dtype=torch.long, device=logits.device)]
        sampling = row.request.sampling
        if sampling.greedy:
            pick = int(scores.argmax())
        else:
            probs = torch.softmax(scores / max(sampling.temperature, 1e-5), dim=-1)
            pick = int(torch.multinomial(probs, 1, generator=row.generator).item())
        return _END if pick >= len(options) else options[pick]

    def _finish_reason(self, row: _Row, token: int) -> str | None:
        if row.request.cancelled.is_set():
            return "cancelled"
        if token in self._eos_ids:
            return "eos"
        if len(row.tokens) >= row.request.sampling.max_new_tokens:
            return "length"
        if self.options.stop_at_action_line:
            with self._tokenizer_lock:
                if "\n" not in self.tokenizer.decode([token]):
                    return None
                text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            if action_line_complete(text):
                return "action_line"
        return None

    def _complete(self, row: _Row, reason: str) -> None:
        if reason == "cancelled":
            row.future.cancel()
            self._count_cancelled()
            return
        with self._tokenizer_lock:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        metrics.GENERATED_TOKENS.inc(len(row.tokens))
        metrics.PROMPT_TOKENS.inc(row.request.prompt.token_count)
        _resolve(row.future, Generation(text=text, token_ids=list(row.tokens),
                                        prompt_tokens=row.request.prompt.token_count,
                                        batch_size=row.max_batch, finish_reason=reason))

    def _fail_row(self, row: _Row, exc: Exception) -> None:
        """Fail one row on its own (it leaves the batch; the others go on)."""
        self.failed_rows += 1
        metrics.DROPPED_ROWS.labels("failed").inc()
        if isinstance(exc, (FailedPrecondition, Internal)) and "non-finite" in exc.message:
            log.warning("a row failed alone: %s", exc.message, extra={"version": row.request.version})
        else:
            log.error("a row failed alone", exc_info=exc, extra={"version": row.request.version})
            exc = Internal(f"generation failed for this row: {type(exc).__name__}: {str(exc)[:200]}")
        _fail(row.future, exc)

    # -- control commands (run on the scheduler thread between decode steps) ---------------------

    def _call_on_model_thread(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        with self._cond:
            self._control.append((fn, future))
            self._cond.notify_all()
        return future

    def _run_control(self) -> None:
        while True:
            with self._cond:
                if not self._control:
                    return
                fn, future = self._control.popleft()
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                future.set_exception(exc)

    # -- adapters --------------------------------------------------------------------------------

    def prepare_adapter(self, spec: CheckpointSpec) -> PreparedAdapter:
        from peft import PeftConfig
        from safetensors.torch import load as load_safetensors

        files = read_checkpoint(spec, self.options.adapters_root or None, self.options.checkpoint_limits)
        check_base_model(files, self._base_names)
        try:
            config = PeftConfig.from_peft_type(**files.config)
        except Exception as exc:  # noqa: BLE001 - any config error is the checkpoint's fault
            raise FailedPrecondition(f"{files.directory}/adapter_config.json is not a valid LoRA config: {exc}") from exc
        config.inference_mode = True
        self._check_shapes(files.tensors, config, str(files.directory))
        try:
            state = load_safetensors(files.weights_bytes)
        except Exception as exc:  # noqa: BLE001
            raise FailedPrecondition(f"{files.directory}/adapter_model.safetensors cannot be read: {exc}") from exc
        self._check_values(state, str(files.directory))
        # LoRA weights run in the model's dtype: kept in fp32 beside a bf16 model, every LoRA layer would
        # cast its input to fp32 and multiply without the bf16 units (measured on a 2-core CPU with AMX:
        # the LoRA path then cost as much as the base layers).
        state = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                 for k, v in state.items()}
        self._check_values(state, str(files.directory))  # again in the model's dtype (fp16 overflows at 65504)
        return PreparedAdapter(spec, files.digest, payload=(config, state, files))

    @staticmethod
    def _check_values(state: dict, where: str) -> None:
        """Every floating weight finite and at most MAX_ABS_WEIGHT in size (FailedPrecondition otherwise)."""
        for key, tensor in state.items():
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            if not bool(torch.isfinite(tensor).all()):
                raise FailedPrecondition(f"{where}: {quote(key)} holds values that are not finite (NaN or inf); "
                                         "the adapter is broken and is not served")
            peak = float(tensor.abs().max())
            if peak > MAX_ABS_WEIGHT:
                raise FailedPrecondition(f"{where}: {quote(key)} holds values up to {peak:.3g}, which exceed the "
                                         f"{MAX_ABS_WEIGHT:g} a LoRA weight can sensibly have; the adapter is not served")

    def _check_shapes(self, tensors: dict[str, tuple[str, tuple[int, ...]]], config, where: str) -> None:
        """Every LoRA tensor must sit on a Linear layer of this model, with matching in/out sizes."""
        rank_pattern = getattr(config, "rank_pattern", None) or {}
        for key, (_dtype, shape) in tensors.items():
            name = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
            for part in (".lora_A.weight", ".lora_B.weight"):
                if name.endswith(part):
                    module = name[: -len(part)]
                    if module not in self._linear_shapes:
                        raise FailedPrecondition(
                            f"{where}: the adapter targets {quote(module)}, which this base model does not have "
                            "(trained on another model?)")
                    in_f, out_f = self._linear_shapes[module]
                    if len(shape) != 2:
                        raise FailedPrecondition(f"{where}: {quote(key)} has {len(shape)} dimensions; a LoRA "
                                                 "weight is a matrix")
                    rank = shape[0] if part == ".lora_A.weight" else shape[1]
                    expected = (rank, in_f) if part == ".lora_A.weight" else (out_f, rank)
                    if tuple(shape) != expected or (not rank_pattern and rank != config.r):
                        raise FailedPrecondition(
                            f"{where}: {quote(key)} has shape {list(shape)[:8]}, but {quote(module)} needs "
                            f"{[config.r if not rank_pattern else 'r', in_f] if part == '.lora_A.weight' else [out_f, 'r']}"
                            " (r from adapter_config.json): the adapter does not fit this base model")
                    break

    def install_adapter(self, prepared: PreparedAdapter, handle: str) -> str:
        config, state, files = prepared.payload
        self._call_on_model_thread(lambda: self._inject(handle, config, state, str(files.directory))).result()
        return handle

    def _inject(self, handle: str, config, state: dict, where: str) -> None:
        from peft import PeftModel, set_peft_model_state_dict

        created = False
        self._forget_prefixes(handle)
        # peft may read base weights while it adds layers (PiSSA-style inits), and a rollback's unload hands the
        # bare model back: both need the weights as loaded.
        self._restore_base_weights()
        try:
            if self.peft is None:
                with warnings.catch_warnings():  # transformers deprecation noise triggered inside peft
                    warnings.simplefilter("ignore", FutureWarning)
                    self.peft = PeftModel(self.model, config, adapter_name=handle, autocast_adapter_dtype=False)
                created = True
                self._adapter_mode = handle
            else:
                self.peft.add_adapter(handle, config, autocast_adapter_dtype=False)
            result = set_peft_model_state_dict(self.peft, state, adapter_name=handle)
            unexpected = [k for k in result.unexpected_keys]
            missing = [k for k in result.missing_keys if f".{handle}." in k or k.endswith(f".{handle}")]
            if unexpected or missing:
                raise FailedPrecondition(
                    f"{where}: the adapter weights do not match its config "
                    f"(unexpected: {unexpected[:3]}, missing: {missing[:3]})")
            self.peft.eval()
            for name, param in self.peft.named_parameters():
                if f".{handle}." in name:
                    param.requires_grad_(False)
            self._probe(handle, where)
            # A new PeftModel starts with `handle` active; after add_adapter the layers' state is
            # re-asserted before the next uniform forward.
            self._adapter_mode = handle if created else None
            if self._can_merge(handle, config):
                self._mergeable.add(handle)
        except FailedPrecondition:
            self._rollback(handle, created)
            raise
        except Exception as exc:  # noqa: BLE001 - refuse the adapter, keep serving the current one
            self._rollback(handle, created)
            raise FailedPrecondition(f"{where}: the adapter could not be loaded: {type(exc).__name__}: {exc}") from exc
        metrics.LOADED_ADAPTERS.set(len(self.peft.peft_config))

    def _probe(self, handle: str, where: str) -> None:
        """One forward pass on the fresh adapter: scores that are not finite refuse it (FailedPrecondition).

        Finite weights can still overflow together (large A and B in a low-precision model); this pass
        catches that before any request runs on the adapter.
        """
        self._set_adapter_mode(handle)
        ids = torch.tensor([self._probe_ids], dtype=torch.long, device=self.device)
        logits = self.peft(input_ids=ids, use_cache=False).logits
        if not bool(torch.isfinite(logits).all()):
            raise FailedPrecondition(f"{where}: the adapter's scores on a probe prompt are not finite (NaN or inf); "
                                     "its weights are broken and it is not served")

    def _rollback(self, handle: str, created: bool) -> None:
        self._mergeable.discard(handle)
        try:
            if created:
                self.peft.unload()
                self.peft = None
                self._adapter_mode = None
            elif handle in self.peft.peft_config:
                self._delete_peft_adapter(handle)
        except Exception:  # noqa: BLE001
            log.exception("rollback of a failed adapter load failed", extra={"handle": handle})

    def _delete_peft_adapter(self, handle: str) -> None:
        """Delete an adapter from the peft model and leave peft's notion of the active adapter valid.

        peft 0.21 picks the new active adapter per layer; when the last layer it visits held only the
        deleted adapter, the tuner ends with none active and PeftModel.active_adapter keeps naming the
        deleted one, so the next forward fails with a KeyError. A survivor is made active instead; the
        next forward re-asserts the mode it needs (_adapter_mode None).
        """
        self.peft.delete_adapter(handle)
        if self.peft.active_adapter not in self.peft.peft_config:
            self.peft.set_adapter(next(iter(self.peft.peft_config)), inference_mode=True)
        self._adapter_mode = None

    def remove_adapter(self, handle: str) -> None:
        def delete() -> None:
            if self.peft is not None and handle in self.peft.peft_config and len(self.peft.peft_config) > 1:
                if handle == self._merged:
                    self._restore_base_weights()
                self._delete_peft_adapter(handle)
                self._mergeable.discard(handle)
                self._adapter_mode = None
                self._forget_prefixes(handle)
                metrics.LOADED_ADAPTERS.set(len(self.peft.peft_config))
                log.info("adapter unloaded", extra={"handle": handle})

        self._call_on_model_thread(delete)  # fire and forget: may be called from the scheduler thread

    # -- description -----------------------------------------------------------------------------

    def describe(self) -> ModelDescription:
        return ModelDescription(
            base_model=self.spec.requested if self.spec else self.options.model,
            backend="local",
            device=self.device or self.options.device,
            dtype=str(self.dtype).replace("torch.", "") if self.dtype is not None else self.options.dtype,
            supports_hot_swap=True,
            supports_per_request_adapter=True,
            max_batch_size=self.options.max_batch_size,
            supports_action_constraint=self.supports_action_constraint,
        )

    @property
    def base_model_names(self) -> list[str]:
        return list(self._base_names)
