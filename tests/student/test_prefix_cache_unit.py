"""The system-prompt cache's parts on their own: finding the system message's ids, keeping entries (LRU, per
adapter), refusing caches it cannot reuse, and laying entries into a batch's cache."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicSlidingWindowLayer

from services.student.backends.prefix_cache import MIN_PREFIX_TOKENS, PrefixCache, SystemMessageIds, seed_cache
from services.student.prompts import chat_prompt, render_messages
from tests.student.helpers import STATES


def _cache(value: float, length: int, layers: int = 2) -> DynamicCache:
    cache = DynamicCache()
    for i in range(layers):
        kv = torch.full((1, 2, length, 3), value + i)
        cache.update(kv, kv.clone(), i)
    return cache


def test_the_prefix_is_the_system_message_alone(smollm2):
    tokenizer = smollm2.tokenizer
    ids_of = SystemMessageIds(tokenizer)
    messages = render_messages(**STATES[0])
    text = chat_prompt(tokenizer, messages)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    n = ids_of.prefix_length(messages, text, ids)
    system = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=False, tokenize=False)
    assert n == len(tokenizer(system, add_special_tokens=False)["input_ids"]) and MIN_PREFIX_TOKENS <= n < len(ids)
    assert ids_of.prefix_length(messages[1:], text, ids) == 0           # no system message
    assert ids_of.prefix_length(messages, "other " + text, ids) == 0    # the text does not start with it
    assert ids_of.prefix_length(messages, text, ids[:n]) == 0           # nothing left to prefill


def test_entries_are_kept_per_adapter_and_the_least_recently_used_goes_first():
    cache = PrefixCache(enabled=True, max_entries=2)
    a, b, c = (None, (1, 2)), ("adapter_1", (1, 2)), (None, (3, 4))
    first = cache.put(a, _cache(1.0, 4))
    assert len(first) == 2 and first[1][0].shape == (1, 2, 4, 3) and float(first[1][0][0, 0, 0, 0]) == 2.0
    cache.put(b, _cache(5.0, 4))
    assert cache.get(a) is first  # `a` is now the most recently used
    cache.put(c, _cache(9.0, 4))
    assert list(cache.entries) == [a, c] and cache.get(b) is None
    cache.forget(None)
    assert not cache.entries


def test_only_prefixes_worth_caching_are_usable():
    cache = PrefixCache(enabled=True, max_entries=4)
    assert cache.usable(MIN_PREFIX_TOKENS, MIN_PREFIX_TOKENS + 1)
    assert not cache.usable(MIN_PREFIX_TOKENS - 1, 100)
    assert not cache.usable(40, 40)
    assert not PrefixCache(enabled=False, max_entries=4).usable(40, 100)


def test_a_cache_with_sliding_window_layers_turns_the_prefix_cache_off():
    cache = PrefixCache(enabled=True, max_entries=4)
    sliding = _cache(1.0, 4)
    sliding.layers[1] = DynamicSlidingWindowLayer(sliding_window=8)
    assert cache.put((None, (1,)), sliding) is None
    assert not cache.enabled and not cache.entries


def test_seeding_left_pads_each_rows_prefix_and_zeros_rows_without_one():
    long, short = PrefixCache(enabled=True, max_entries=4), PrefixCache(enabled=True, max_entries=4)
    long_kv, short_kv = long.put((None, (1,)), _cache(1.0, 5)), short.put((None, (2,)), _cache(7.0, 3))
    batch = DynamicCache()
    seed_cache(batch, [long_kv, None, short_kv], [5, 0, 3], 5)
    keys = batch.layers[1].keys
    assert keys.shape == (3, 2, 5, 3)
    assert keys[:, 0, :, 0].tolist() == [[2.0] * 5, [0.0] * 5, [0.0, 0.0, 8.0, 8.0, 8.0]]
