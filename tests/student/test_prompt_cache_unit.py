"""The whole-prompt KV cache on its own: the longest common prefix wins, per adapter; a prompt always
leaves its last token to prefill; rows are cut out of a padded batch by their mask; an entry another
prompt reused stays; entries are bounded in bytes (least recently used dropped); caches it cannot reuse
turn it off."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicSlidingWindowLayer

from services.student.backends.prefix_cache import MIN_PREFIX_TOKENS, PromptCache

LAYERS, HEADS, DIM = 2, 2, 3


def _batch(prompts: list[list[int]], pad_left: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    """A prefilled-looking batch cache: row i holds `pad_left[i]` pad columns, then its prompt, where the
    key of token t in layer l is the number 1000 * l + t (values: minus that), pads are NaN."""
    width = max(len(p) + pad for p, pad in zip(prompts, pad_left))
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    cache = DynamicCache()
    for layer in range(LAYERS):
        keys = torch.full((len(prompts), HEADS, width, DIM), float("nan"))
        for i, (prompt, pad) in enumerate(zip(prompts, pad_left)):
            start = width - len(prompt)
            keys[i, :, start:] = (1000.0 * layer + torch.tensor(prompt, dtype=torch.float))[None, :, None]
            mask[i, start:] = 1
        cache.update(keys, -keys, layer)
    return cache, mask


def _filled(cache: PromptCache, handle, prompts: list[list[int]]) -> None:
    batch, mask = _batch(prompts, [0] * len(prompts))
    cache.put_rows([handle] * len(prompts), prompts, batch, mask)


def _tokens(kv) -> list[int]:
    keys = kv[0][0]
    return [int(x) for x in keys[0, 0, :, 0]]


def test_the_longest_common_prefix_of_the_same_adapter_is_reused():
    cache = PromptCache(max_bytes=10**8)
    episode = list(range(100, 140))
    other = list(range(100, 120)) + list(range(500, 520))
    _filled(cache, None, [other, episode])
    _filled(cache, "adapter_1", [episode + [7, 8, 9]])
    step = episode[:35] + [1, 2, 3]  # the next prompt: 35 tokens in common with `episode`, 20 with `other`
    kv, n = cache.longest(None, step)
    assert n == 35 and _tokens(kv) == step[:35]
    assert len(kv) == LAYERS and float(kv[1][0][0, 0, 0, 0]) == 1000 + step[0]
    assert float(kv[1][1][0, 0, 0, 0]) == -(1000 + step[0]), "values travel with their keys"
    kv, n = cache.longest("adapter_1", step)
    assert n == 35, "the adapter's own entry, not the base model's"
    assert cache.longest("adapter_2", step) is None, "no entry of this adapter"


def test_a_prompt_keeps_its_last_token_to_prefill_and_short_prefixes_are_not_reused():
    cache = PromptCache(max_bytes=10**8)
    prompt = list(range(MIN_PREFIX_TOKENS + 10))
    _filled(cache, None, [prompt])
    kv, n = cache.longest(None, prompt)
    assert n == len(prompt) - 1 and _tokens(kv) == prompt[:-1]
    kv, n = cache.longest(None, prompt[:MIN_PREFIX_TOKENS + 1])
    assert n == MIN_PREFIX_TOKENS
    assert cache.longest(None, prompt[:MIN_PREFIX_TOKENS]) is None  # would reuse fewer than the minimum
    assert cache.longest(None, prompt[:MIN_PREFIX_TOKENS - 1] + [-5] * 20) is None
    assert cache.longest(None, []) is None and cache.longest(None, [3]) is None


def test_rows_are_cut_out_of_a_padded_batch_by_their_mask():
    cache = PromptCache(max_bytes=10**8)
    prompts = [list(range(200, 230)), list(range(300, 320)), list(range(400, 440))]
    batch, mask = _batch(prompts, [5, 0, 2])
    # A mask with holes in it too: a row seeded with a cached prefix is [pad][prefix][pad][rest].
    mask[1] = 0
    width = mask.shape[1]
    holes = list(range(width - 25, width - 15)) + list(range(width - 10, width))
    mask[1, holes] = 1
    for layer in batch.layers:
        layer.keys[1] = float("nan")
        layer.keys[1, :, holes] = (torch.tensor(prompts[1], dtype=torch.float) + 1000.0 * batch.layers.index(layer))[None, :, None]
        layer.values[1] = -layer.keys[1]
    cache.put_rows([None, None, None], prompts, batch, mask)
    for prompt in prompts:
        kv, n = cache.longest(None, prompt + [1])
        assert n == len(prompt) and _tokens(kv) == prompt
        assert not any(torch.isnan(k).any() or torch.isnan(v).any() for k, v in kv), "no pad column kept"
    # A row whose mask does not count its prompt's tokens is not kept (never a wrong KV).
    fresh = PromptCache(max_bytes=10**8)
    batch, mask = _batch([prompts[0]], [0])
    fresh.put_rows([None], [prompts[0] + [9]], batch, mask)
    assert not fresh.entries


def test_entries_are_bounded_in_bytes_least_recently_used_first():
    one = 30 * LAYERS * HEADS * DIM * 4 * 2  # 30 tokens, keys and values in float32
    cache = PromptCache(max_bytes=2 * one)
    a, b, c = ([base + t for t in range(30)] for base in (1000, 2000, 3000))
    _filled(cache, None, [a])
    _filled(cache, None, [b])
    assert cache.nbytes == 2 * one
    assert cache.longest(None, a + [0]).tokens == 30  # `a` is now the most recently used
    _filled(cache, None, [c])
    assert [key[1][0] for key in cache.entries] == [1000, 3000] and cache.nbytes == 2 * one
    _filled(cache, None, [c])  # the same prompt again replaces its entry
    assert len(cache.entries) == 2 and cache.nbytes == 2 * one
    _filled(cache, None, [list(range(5000, 5100))])  # larger than the whole budget: not kept
    assert len(cache.entries) == 2
    cache.forget(None)
    assert not cache.entries and cache.nbytes == 0


def test_a_zero_budget_keeps_nothing_and_sliding_windows_turn_the_cache_off():
    off = PromptCache(max_bytes=0)
    _filled(off, None, [list(range(40))])
    assert not off.enabled and not off.entries and off.longest(None, list(range(41))) is None
    cache = PromptCache(max_bytes=10**8)
    _filled(cache, None, [list(range(40))])
    batch, mask = _batch([list(range(40))], [0])
    batch.layers[1] = DynamicSlidingWindowLayer(sliding_window=8)
    cache.put_rows([None], [list(range(40))], batch, mask)
    assert not cache.enabled and not cache.entries and cache.longest(None, list(range(41))) is None


@pytest.mark.parametrize("budget", [-1, 0])
def test_a_negative_or_zero_budget_is_off(budget):
    assert not PromptCache(max_bytes=budget).enabled


def test_an_episode_coming_back_to_an_earlier_step_finds_it_whole():
    cache = PromptCache(max_bytes=10**8)
    # Steps share 30 tokens; the student goes to place 1, place 2, and back to place 1.
    at = {k: list(range(100, 130)) + [k] * 5 for k in (1, 2)}
    for place in (1, 2):
        _filled(cache, None, [at[place]])
    hit = cache.longest(None, at[1])
    assert hit.tokens == len(at[1]) - 1, "the earlier step stays, reused whole but for its last token"
    assert [list(key[1]) for key in cache.entries] == [at[2], at[1]], "and is now the most recently used"
    assert cache.nbytes == sum(e.nbytes for e in cache.entries.values())
