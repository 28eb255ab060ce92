"""The in-place KV cache layer against transformers' DynamicLayer: same tensors after any sequence of
the operations the decode loop performs (append, drop rows, drop leading columns, merge batches,
direct assignment), and no copy of the cached sequence on an ordinary decode step."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from services.student.backends.kv_cache import GROW, AppendLayer, is_full_attention, merge_into, new_decode_cache

HEADS, DIM = 3, 4


def kv(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, HEADS, length, DIM, generator=g), torch.randn(rows, HEADS, length, DIM, generator=g))


def same(a: DynamicLayer, b: DynamicLayer) -> bool:
    return torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_every_decode_loop_operation_gives_what_dynamic_layer_gives():
    plain, fast = DynamicLayer(), AppendLayer()
    for layer in (plain, fast):
        layer.update(*kv(4, 7, seed=0))                      # prefill
    assert same(plain, fast)
    for step in range(GROW + 5):                             # decode past the spare columns
        new = kv(4, 1, seed=100 + step)
        assert all(torch.equal(x, y) for x, y in zip(plain.update(*new), fast.update(*new)))
    keep = torch.tensor([0, 2, 3])
    for layer in (plain, fast):
        layer.batch_select_indices(keep)                     # rows finished
    assert same(plain, fast)
    fast.drop_leading(2)                                      # padding no row uses any more
    plain.keys, plain.values = plain.keys[:, :, 2:], plain.values[:, :, 2:]
    assert same(plain, fast)
    joined_plain, joined_fast = DynamicLayer(), AppendLayer()
    for layer in (joined_plain, joined_fast):
        layer.update(*kv(2, 9, seed=7))
    width = plain.keys.shape[2]
    merge_into(plain, joined_plain, width)                    # newcomers join, left-padded with zeros
    merge_into(fast, joined_fast, width)
    assert same(plain, fast) and fast.keys.shape[:3] == (5, HEADS, width)
    assert torch.count_nonzero(fast.keys[3:, :, :width - 9]) == 0
    for step in range(3):
        new = kv(5, 1, seed=300 + step)
        plain.update(*new)
        fast.update(*new)
    assert same(plain, fast)
    replacement = kv(5, 4, seed=9)                            # someone assigns keys/values directly
    plain.keys, plain.values = replacement
    fast.keys, fast.values = replacement
    new = kv(5, 1, seed=11)
    plain.update(*new)
    fast.update(*new)
    assert same(plain, fast) and fast.get_seq_length() == 5


def test_a_decode_step_writes_in_place_until_the_spare_columns_run_out():
    layer = AppendLayer()
    layer.update(*kv(2, 5, seed=1))
    buffer = layer._key_buffer
    for step in range(GROW):
        layer.update(*kv(2, 1, seed=step))
        assert layer._key_buffer is buffer                   # no new buffer, no copy
    layer.update(*kv(2, 1, seed=99))
    assert layer._key_buffer is not buffer and layer.get_seq_length() == 5 + GROW + 1


def test_new_decode_cache_swaps_only_full_attention_layers():
    from transformers import AutoConfig

    config = AutoConfig.for_model("llama", num_hidden_layers=2, hidden_size=16, num_attention_heads=2,
                                  num_key_value_heads=1, intermediate_size=32, vocab_size=32)
    cache = new_decode_cache(config)
    assert [type(layer) for layer in cache.layers] == [AppendLayer, AppendLayer]
    assert all(is_full_attention(layer) for layer in cache.layers)
    plain = new_decode_cache(config, append_in_place=False)
    assert [type(layer) for layer in plain.layers] == [DynamicLayer, DynamicLayer]
