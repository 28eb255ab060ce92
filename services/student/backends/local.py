"""Local backend: transformers + peft, one model, continuous batching, LoRA hot swap.

`LocalBackend` loads the model and composes the parts that serve it:
- `scheduler.Scheduler`: the thread that owns the model, its request queue and continuous batching;
- `batching`: rows and the batch they decode in (joining, leaving, trimming padding);
- `decoding.RowDecoder` and `constrained.ActionConstraint`: each row's next token and when it stops;
- `prefix_cache`: the KV cache of the shared system message, per adapter, and of whole prompts, which
  later prompts reuse up to their longest common prefix;
- `kv_cache`: decode caches that append in place;
- `cpu_kernels.DecodeKernelChooser`: oneDNN or torch's own kernels for small bf16 decode steps, measured;
- `lora.LoraAdapters`: peft's per-row adapters and uniform batches merged into the base weights;
- `adapter_loading`: reading and verifying a checkpoint before it is injected.

The backend itself runs the model: it prefills newcomers (on top of their cached system message)
and decodes one token per step. Left padding with explicit position ids keeps every row's positions
as if it ran alone.

Hot swap: `prepare_adapter` reads and verifies the checkpoint on the caller's thread and loads its
tensors; only the final injection runs on the scheduler thread, between two decode steps, so
requests keep flowing and no forward pass ever sees a half-loaded adapter.

Models: "smollm2" (default, offline), any local folder, or a hub id; bf16/fp16 on GPU, bf16 on CPUs with
AMX (native bf16 matmuls, 3-4x faster prefill there), fp32 on other CPUs.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from services.models import is_default_alias, load_model_and_tokenizer, resolve_model
from services.runtime.errors import Unavailable
from services.student import metrics
from services.student.backends.adapter_loading import linear_shapes, load_adapter
from services.student.backends.base import Backend, PreparedAdapter
from services.student.backends.batching import Batch, Row, merge_batches
from services.student.backends.constrained import ActionConstraint
from services.student.backends.cpu_kernels import DecodeKernelChooser, can_switch_onednn, onednn_enabled
from services.student.backends.decoding import RowDecoder, generator_for
from services.student.backends.kv_cache import is_full_attention, new_decode_cache
from services.student.backends.lora import LoraAdapters
from services.student.backends.prefill_plan import left_padded_inputs, plan_groups
from services.student.backends.prefix_cache import PrefixCache, PrefixKV, PromptCache, SystemMessageIds, seed_cache
from services.student.backends.scheduler import Scheduler
from services.student.checkpoints import CheckpointLimits
from services.student.defaults import DEFAULT_PREFILL_GROUP_OVERHEAD_TOKENS
from services.student.prompts import chat_prompt
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
    #: Newcomers of uneven lengths are prefilled in separate forward passes when that saves more
    #: padding than a pass costs, in tokens' worth of compute (`prefill_plan`). -1: always one pass;
    #: None: the measured CPU default, and one pass on a GPU (padding runs in parallel there).
    prefill_group_overhead_tokens: int | None = None
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
    #: With prefix_cache: keep every prefilled prompt's KV (up to this many MiB, least recently used
    #: dropped) and prefill a new prompt only past its longest common prefix with one of them (0: the
    #: system message only). An agent's next prompt repeats most of its last one.
    prompt_cache_mb: int = 1024
    #: Keep the KV cache in buffers with spare columns, written in place each decode step (False:
    #: transformers' DynamicLayer, which concatenates the whole cache every step; for comparisons).
    kv_append_in_place: bool = True
    #: When every row of a forward pass uses the same adapter, run it on base weights with that adapter
    #: merged in, instead of peft's unmerged LoRA path (False: always unmerged; for comparisons, or
    #: for a model too large for the extra copy of its targeted weights that restoring needs).
    merge_uniform_adapter: bool = True
    #: For a bf16/fp16 model on a CPU, time the first decode steps of small batches on oneDNN and on
    #: torch's own kernels and keep the faster per batch size (`cpu_kernels`; False: always oneDNN).
    choose_decode_kernels: bool = True


class LocalBackend(Backend):
    """`loader` loads (model, tokenizer, spec) as `load_model_and_tokenizer` does (tests hand in one that
    lends a model already in memory)."""

    kind = "local"
    supports_action_constraint = True

    def __init__(self, options: LocalOptions | None = None, *,
                 loader: Callable[..., tuple] = load_model_and_tokenizer):
        self.options = options or LocalOptions()
        self._loader = loader
        if self.options.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model = None
        self.tokenizer = None
        self.spec = None
        self.device = ""
        self.dtype = None
        self.lora: LoraAdapters | None = None  # once the model is loaded
        self.prefix_cache = PrefixCache(enabled=self.options.prefix_cache,
                                        max_entries=self.options.prefix_cache_entries)
        self.prompt_cache = PromptCache(
            max_bytes=self.options.prompt_cache_mb * 2**20 if self.options.prefix_cache else 0)
        self.scheduler = Scheduler(self, max_batch_size=self.options.max_batch_size,
                                   max_prefill_rows=self.options.max_prefill_rows,
                                   max_wait_ms=self.options.max_wait_ms)
        #: False once a forward pass made a cache that cannot be merged or trimmed (read by the scheduler).
        self.can_join = True
        self._decoder: RowDecoder | None = None
        self._constraint: ActionConstraint | None = None
        self._system_ids: SystemMessageIds | None = None
        self._linear_shapes: dict[str, tuple[int, int]] = {}
        self._base_names: list[str] = []
        self._probe_ids: list[int] = []
        #: Decode steps hand SDPA an explicit (rows, 1, 1, columns) mask (see `decode`).
        self._explicit_decode_mask = False
        self.decode_kernels = DecodeKernelChooser(active=False)
        self._ready = threading.Event()
        self._tokenizer_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.perf_counter()
        import peft  # noqa: F401 - imported now so that the first LoadAdapter does not pay for it
        self.model, self.tokenizer, self.spec = self._loader(
            self.options.model, device=self.options.device, dtype=self.options.dtype, padding_side="left")
        self.device = str(next(self.model.parameters()).device)
        self.dtype = next(self.model.parameters()).dtype
        eos = self.tokenizer.eos_token_id
        eos_ids = {eos} if eos is not None else set()
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            eos_ids.add(gen_eos)
        elif isinstance(gen_eos, (list, tuple)):
            eos_ids.update(int(e) for e in gen_eos)
        self._constraint = ActionConstraint(self.tokenizer, self._tokenizer_lock, eos_ids)
        self._decoder = RowDecoder(self.tokenizer, self._tokenizer_lock, eos_ids, self._constraint,
                                   stop_at_action_line=self.options.stop_at_action_line,
                                   on_cancelled=self.scheduler.count_cancelled)
        self._system_ids = SystemMessageIds(self.tokenizer)
        self.lora = LoraAdapters(self.model, merge_uniform=self.options.merge_uniform_adapter)
        self._probe_ids = list(self.tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"])
        self._explicit_decode_mask = (self.device == "cpu"
                                      and getattr(self.model.config, "_attn_implementation", "") == "sdpa")
        self.decode_kernels = DecodeKernelChooser(
            active=(self.options.choose_decode_kernels and self.device == "cpu"
                    and self.dtype in (torch.bfloat16, torch.float16) and can_switch_onednn()))
        self._linear_shapes = linear_shapes(self.model)
        names = {self.options.model, self.spec.location, getattr(self.model.config, "_name_or_path", "")}
        if self._is_default_model():
            names.update(_SMOLLM2_NAMES)
        self._base_names = [self.spec.requested] + sorted(n for n in names if n and n != self.spec.requested)
        self.scheduler.start()
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
        self.scheduler.close()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def peft(self):
        """peft's PeftModel around the model once the first adapter is installed, else None."""
        return self.lora.peft if self.lora is not None else None

    def rows_in_flight(self) -> int:
        """Rows the scheduler holds: queued plus generating."""
        return self.scheduler.rows_in_flight()

    def rows_generating(self) -> int:
        """Rows of the running batch."""
        return self.scheduler.rows_generating()

    @property
    def cancelled_rows(self) -> int:
        """Rows dropped because their request was cancelled."""
        return self.scheduler.cancelled_rows

    @property
    def failed_rows(self) -> int:
        """Rows failed on their own (the batch went on)."""
        return self._decoder.failed_rows if self._decoder is not None else 0

    # -- prompts ---------------------------------------------------------------------------------

    def encode_prompt(self, messages: list[dict[str, str]]) -> EncodedPrompt:
        with self._tokenizer_lock:  # one Rust tokenizer shared by the handler threads
            text = chat_prompt(self.tokenizer, messages)
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            prefix = self._system_ids.prefix_length(messages, text, ids) if self.prefix_cache.enabled else 0
        return EncodedPrompt(messages=messages, text=text, ids=ids, token_count=len(ids), prefix_tokens=prefix)

    # -- generation ------------------------------------------------------------------------------

    def submit(self, requests: list[GenerationRequest]) -> list[Future[Generation]]:
        if not self.ready:
            raise Unavailable("the model is still loading; retry when the health check reports SERVING")
        for request in requests:
            if request.prompt.ids is None:
                raise ValueError("the local backend needs token ids")
        rows = [Row(request, Future(), self._constraint.choice_for(request)) for request in requests]
        self.scheduler.submit(rows)
        return [row.future for row in rows]

    # -- the model side of the scheduler (its thread only) ---------------------------------------

    def forward(self, rows: list[Row], **inputs):
        """One forward pass for `rows`, with peft's layers set for their adapters; last position's logits only."""
        model = self.lora.prepare_forward([row.request.adapter_handle for row in rows], inputs)
        metrics.BATCH_SIZE.observe(len(rows))
        for row in rows:
            row.max_batch = max(row.max_batch, len(rows))
        return model(**inputs, use_cache=True, logits_to_keep=1)

    def prefill(self, rows: list[Row]) -> Batch:
        """Prefill newcomers on top of their cached prefixes, in groups that waste little on padding
        (`prefill_plan`), merged into one batch."""
        for row in rows:
            row.generator = generator_for(row.request.sampling, self.device)
        prefixes = [self._prefix_for(row) for row in rows]  # a miss is computed here, for this row
        shared = [p[0][0].shape[2] if p else 0 for p in prefixes]
        rest = [len(row.request.prompt.ids) - n for row, n in zip(rows, shared)]
        overhead = self.options.prefill_group_overhead_tokens
        overhead = (DEFAULT_PREFILL_GROUP_OVERHEAD_TOKENS if self.device == "cpu" else -1) if overhead is None else overhead
        groups = [list(range(len(rows)))] if overhead < 0 else plan_groups(rest, shared, overhead_tokens=overhead)
        batch = None
        for group in groups:  # widest first, with spare rows: the later groups join its KV buffers in place
            part = self._prefill_group([rows[i] for i in group], [prefixes[i] for i in group],
                                       [shared[i] for i in group], max_rows=len(rows) if batch is None else len(group))
            batch = part if batch is None else merge_batches(batch, part, max_rows=len(rows))
        return batch

    def _prefill_group(self, rows: list[Row], prefixes: list[PrefixKV | None], shared: list[int], *, max_rows: int):
        """One forward pass over `rows`' uncached tokens, each left-padded to the longest."""
        pad = self.tokenizer.pad_token_id or 0
        input_ids, mask, positions = left_padded_inputs([row.request.prompt.ids for row in rows], shared, pad)
        for row in rows:
            row.position = len(row.request.prompt.ids)
        prefix_width = max(shared)
        metrics.PREFILL_PADDING_TOKENS.inc(input_ids.numel() + sum(shared) - sum(len(r.request.prompt.ids) for r in rows))
        # Spare rows for the other groups only: a prefill joins a running batch and is dropped, or gets
        # more on its first join (a copy once per batch, not a buffer of zeros kept through every merge).
        cache = new_decode_cache(self.model.config, append_in_place=self.options.kv_append_in_place, max_rows=max_rows)
        if prefix_width:
            seed_cache(cache, prefixes, shared, prefix_width)
            metrics.PREFIX_CACHED_TOKENS.inc(sum(row.cached_tokens for row in rows))  # hits; a miss was prefilled
        out = self.forward(rows, input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                           position_ids=positions.to(self.device), past_key_values=cache)
        self.can_join = self.can_join and all(is_full_attention(layer) for layer in cache.layers)
        self.prompt_cache.put_rows([row.request.adapter_handle for row in rows],
                                   [row.request.prompt.ids for row in rows], cache, mask)
        return Batch(rows, cache, mask.to(self.device), out.logits[:, -1, :].float())

    def _prefix_for(self, row: Row) -> PrefixKV | None:
        """The cached KV of this row's prompt's longest known prefix: an earlier prompt's, else the
        system message's (computed on a miss)."""
        n = row.request.prompt.prefix_tokens
        ids = row.request.prompt.ids
        reused = self.prompt_cache.longest(row.request.adapter_handle, ids) if self.prefix_cache.enabled else None
        if reused is not None and reused.tokens >= n:
            row.cached_tokens = reused.tokens
            return reused.kv
        if not self.prefix_cache.usable(n, len(ids)):
            return None
        key = (row.request.adapter_handle, tuple(ids[:n]))
        cached = self.prefix_cache.get(key)
        if cached is not None:
            row.cached_tokens = n
            return cached
        cache = new_decode_cache(self.model.config, append_in_place=self.options.kv_append_in_place, max_rows=1)
        self.forward([row], input_ids=torch.tensor([ids[:n]], dtype=torch.long, device=self.device),
                     attention_mask=torch.ones((1, n), dtype=torch.long, device=self.device),
                     position_ids=torch.arange(n, dtype=torch.long, device=self.device)[None],
                     past_key_values=cache)
        return self.prefix_cache.put(key, cache)

    def step(self, batch: Batch) -> Batch | None:
        return self._decoder.step(batch, trim=self.can_join)

    def decode(self, batch: Batch) -> Batch:
        last = torch.tensor([[row.tokens[-1]] for row in batch.rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[row.position] for row in batch.rows], dtype=torch.long, device=self.device)
        for row in batch.rows:
            row.position += 1
        ones = torch.ones((len(batch.rows), 1), dtype=batch.mask.dtype, device=self.device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        mask = batch.mask
        if self._explicit_decode_mask:
            # Without padding, transformers drops a 2D mask and asks SDPA for grouped-query attention
            # (enable_gqa), which torch's CPU kernel runs 4-7x slower than one query of 1 token per
            # head group against a given mask (SmolLM2, 1-16 rows). Same scores; bench/engine_bench.py.
            mask = mask[:, None, None, :].bool()
        rows = len(batch.rows)
        onednn = self.decode_kernels.use_onednn(rows)
        started = time.perf_counter()
        with nullcontext() if onednn else onednn_enabled(False):
            out = self.forward(batch.rows, input_ids=last, attention_mask=mask, position_ids=positions,
                               past_key_values=batch.cache)
            batch.logits = out.logits[:, -1, :].float()
        self.decode_kernels.record(rows, onednn, time.perf_counter() - started)
        return batch

    # -- adapters --------------------------------------------------------------------------------

    def prepare_adapter(self, spec: CheckpointSpec) -> PreparedAdapter:
        return load_adapter(spec, adapters_root=self.options.adapters_root, limits=self.options.checkpoint_limits,
                            base_names=self._base_names, shapes=self._linear_shapes, device=self.device,
                            dtype=self.dtype)

    def install_adapter(self, prepared: PreparedAdapter, handle: str) -> str:
        config, state, files = prepared.payload

        def inject() -> None:
            self.prefix_cache.forget(handle)
            self.prompt_cache.forget(handle)
            probe = torch.tensor([self._probe_ids], dtype=torch.long, device=self.device)
            self.lora.inject(handle, config, state, str(files.directory), probe)
            metrics.LOADED_ADAPTERS.set(self.lora.count)

        self.scheduler.call(inject).result()
        return handle

    def remove_adapter(self, handle: str) -> None:
        def delete() -> None:
            if self.lora.remove(handle):
                self.prefix_cache.forget(handle)
                self.prompt_cache.forget(handle)
                metrics.LOADED_ADAPTERS.set(self.lora.count)
                log.info("adapter unloaded", extra={"handle": handle})

        self.scheduler.call(delete)  # fire and forget: may be called from the scheduler thread

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
