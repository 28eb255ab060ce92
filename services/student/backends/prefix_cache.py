"""The system-prompt KV cache of the local backend.

Every prompt of an environment starts with the same rendered system message (about a third of a
household prompt). Its KV cache is computed once per adapter and kept (LRU); a newcomer's prefill
then runs only on the rest of its prompt, on top of a copy of that cache:
`[pad][system KV][pad][rest of prompt]`, with the mask hiding both pads and positions continuing
from the end of the system message, so the row computes what it would have computed alone.

`SystemMessageIds` finds, on the tokenizer's side, how many leading ids of a prompt are its system
message alone; `PrefixCache` keeps the KV entries; `seed_cache` lays them into a batch's cache.

`PromptCache` goes further: it keeps every prefilled prompt's KV (per adapter, bounded in bytes) and
a later prompt starts from the longest common prefix it shares with any of them. An agent's next
step repeats most of its last prompt (system message, task, the notes up to the first line that
changed), so that part is not prefilled again; nothing about the prompt changes, only what is
recomputed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from services.student.backends.kv_cache import is_full_attention

#: System messages shorter than this are not worth a cache entry.
MIN_PREFIX_TOKENS = 16
#: Rendered system messages whose ids are remembered before the memo is cleared.
_MAX_SYSTEM_MESSAGES = 64

#: Per-layer (keys, values) of one system message, each of shape [1, heads, P, dim].
PrefixKV = list[tuple[torch.Tensor, torch.Tensor]]


class SystemMessageIds:
    """How many leading ids of a prompt are its system message alone (callers hold the tokenizer's lock)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {}  # rendered system message -> its ids

    def prefix_length(self, messages: list[dict[str, str]], text: str, ids: list[int]) -> int:
        """The count of leading `ids` that are the system message alone, when that is a clean token
        boundary of at least MIN_PREFIX_TOKENS tokens; 0 otherwise."""
        if len(messages) < 2 or messages[0].get("role") != "system":
            return 0
        try:
            head = self.tokenizer.apply_chat_template(messages[:1], add_generation_prompt=False, tokenize=False)
        except Exception:  # noqa: BLE001 - a template without a system role: no shared prefix
            return 0
        if not isinstance(head, str) or not text.startswith(head):
            return 0
        head_ids = self._ids.get(head)
        if head_ids is None:
            head_ids = list(self.tokenizer(head, add_special_tokens=False)["input_ids"])
            if len(self._ids) >= _MAX_SYSTEM_MESSAGES:
                self._ids.clear()
            self._ids[head] = head_ids
        n = len(head_ids)
        if n < MIN_PREFIX_TOKENS or n >= len(ids) or ids[:n] != head_ids:
            return 0
        return n


class PrefixCache:
    """System-message KV entries keyed by (adapter handle, system ids), least recently used dropped first."""

    def __init__(self, *, enabled: bool, max_entries: int):
        #: False when disabled, or once the model turned out to have layers that are not full attention.
        self.enabled = enabled
        self.max_entries = max(1, max_entries)
        self.entries: OrderedDict[tuple[str | None, tuple[int, ...]], PrefixKV] = OrderedDict()

    def usable(self, prefix_tokens: int, prompt_tokens: int) -> bool:
        """True when a prompt's shared prefix is worth caching (and leaves something to prefill)."""
        return self.enabled and MIN_PREFIX_TOKENS <= prefix_tokens < prompt_tokens

    def get(self, key: tuple[str | None, tuple[int, ...]]) -> PrefixKV | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def put(self, key: tuple[str | None, tuple[int, ...]], cache) -> PrefixKV | None:
        """Keep the layers of a prefilled DynamicCache as `key`'s entry.

        A cache with sliding-window or other special layers cannot be reused: the cache turns itself
        off (whole prompts are prefilled from then on) and returns None.
        """
        if not all(is_full_attention(layer) for layer in cache.layers):
            self.enabled = False
            return None
        entry = [(layer.keys, layer.values) for layer in cache.layers]
        self.entries[key] = entry
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return entry

    def forget(self, handle: str | None) -> None:
        """Drop every entry of one adapter (its weights changed or it was removed)."""
        for key in [k for k in self.entries if k[0] == handle]:
            del self.entries[key]


class Reuse(NamedTuple):
    """A prompt's reusable prefix: its KV and how many tokens."""

    kv: PrefixKV
    tokens: int


@dataclass
class _Prompt:
    ids: np.ndarray
    kv: PrefixKV
    nbytes: int


class PromptCache:
    """Prompts' KV after their prefill, keyed by (adapter handle, ids); reused up to the longest common
    prefix with a new prompt. Least recently used entries are dropped beyond `max_bytes`.

    An entry another prompt reused stays: an episode's earlier steps are what a student coming back to
    a place or going round in a loop asks again. Replaying the default run's prompts
    (bench/prompt_cache_bench.py), keeping only each episode's latest step prefilled 1.7x as many
    tokens in BC's evaluation and 6x as many in the untrained student's."""

    def __init__(self, *, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        #: False when disabled (max_bytes 0), or once the model turned out not to be full attention.
        self.enabled = self.max_bytes > 0
        self.entries: OrderedDict[tuple[str | None, tuple[int, ...]], _Prompt] = OrderedDict()
        self.nbytes = 0

    def longest(self, handle: str | None, ids: list[int]) -> Reuse | None:
        """The KV of the longest prefix of `ids` that a kept prompt of `handle` starts with, and its
        length: at least MIN_PREFIX_TOKENS, and one token short of `ids` at most (the last prompt token
        is always prefilled: its scores start the answer). None when no prompt qualifies."""
        if not self.enabled or not self.entries:
            return None
        wanted = np.asarray(ids, dtype=np.int64)
        best_key, best = None, 0
        for key, entry in self.entries.items():
            if key[0] != handle:
                continue
            n = min(len(entry.ids), len(wanted) - 1)
            if n <= best:
                continue
            differ = np.flatnonzero(entry.ids[:n] != wanted[:n])
            common = int(differ[0]) if differ.size else n
            if common > best:
                best_key, best = key, common
        if best_key is None or best < MIN_PREFIX_TOKENS:
            return None
        self.entries.move_to_end(best_key)
        kv = self.entries[best_key].kv
        return Reuse([(k[:, :, :best], v[:, :, :best]) for k, v in kv], best)

    def put_rows(self, handles: list[str | None], prompts: list[list[int]], cache, mask: torch.Tensor) -> None:
        """Keep each row's prompt KV from a batch `cache` just prefilled: row i's prompt tokens are the
        columns where `mask[i]` is 1, in order."""
        if not self.enabled:
            return
        if not all(is_full_attention(layer) for layer in cache.layers):
            self.enabled = False
            self.clear()
            return
        for i, (handle, ids) in enumerate(zip(handles, prompts)):
            columns = mask[i].nonzero().squeeze(1).to(cache.layers[0].keys.device)
            if columns.numel() != len(ids):
                continue  # not laid out as this method expects: keep nothing rather than a wrong KV
            kv = [(layer.keys[i:i + 1].index_select(2, columns), layer.values[i:i + 1].index_select(2, columns))
                  for layer in cache.layers]
            nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
            if nbytes > self.max_bytes:
                continue
            key = (handle, tuple(ids))
            old = self.entries.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self.entries[key] = _Prompt(np.asarray(ids, dtype=np.int64), kv, nbytes)
            self.nbytes += nbytes
            while self.nbytes > self.max_bytes:
                _, dropped = self.entries.popitem(last=False)
                self.nbytes -= dropped.nbytes

    def forget(self, handle: str | None) -> None:
        """Drop every prompt of one adapter (its weights changed or it was removed)."""
        for key in [k for k in self.entries if k[0] == handle]:
            self.nbytes -= self.entries.pop(key).nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0


def seed_cache(cache, prefixes: list[PrefixKV | None], shared: list[int], width: int) -> None:
    """Fill an empty cache with each row's system-message KV (`shared[i]` columns), left-padded with
    zeros to `width`; a row without one gets zeros only."""
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
