"""The in-place KV cache layer against transformers' DynamicLayer: same tensors after any sequence of
the operations the decode loop performs (append, drop rows, drop leading columns, merge batches,
direct assignment), and no copy of the cached sequence on an ordinary decode step."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from services.student.backends.kv_cache import (GROW, AppendLayer, is_full_attention, merge_into, new_decode_cache,
                                              retire_rows)

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


def _reference_after(plain: DynamicLayer, order: list[int]) -> None:
    plain.keys, plain.values = plain.keys[order], plain.values[order]


def test_finished_rows_are_replaced_by_the_last_rows_without_copying_the_others():
    plain, fast = DynamicLayer(), AppendLayer()
    for layer in (plain, fast):
        layer.update(*kv(6, 5, seed=3))
    buffer = fast._key_buffer
    cache = type("Cache", (), {"layers": [fast]})()
    order = retire_rows(cache, [1, 2, 4, 5])                  # rows 0 and 3 finished
    assert order == [4, 1, 2, 5]                              # rows 4 and 5 fill the holes
    _reference_after(plain, order)
    assert same(plain, fast) and fast._key_buffer is buffer   # no new buffer
    assert retire_rows(cache, [0, 1]) == [0, 1]               # only the tail left: nothing moves
    _reference_after(plain, [0, 1])
    assert same(plain, fast) and fast._key_buffer is buffer


def test_newcomers_join_in_place_while_the_buffers_have_room():
    plain, fast = DynamicLayer(), AppendLayer()
    for layer in (plain, fast):
        layer.update(*kv(3, 6, seed=4))
    for step in range(4):                                     # the running rows decode 4 steps: 10 columns
        new = kv(3, 1, seed=50 + step)
        plain.update(*new)
        fast.update(*new)
    fast.drop_leading(3)                                      # columns no row uses any more
    plain.keys, plain.values = plain.keys[:, :, 3:], plain.values[:, :, 3:]
    buffer = fast._key_buffer
    joined_plain, joined_fast = DynamicLayer(), AppendLayer()
    for layer in (joined_plain, joined_fast):
        layer.update(*kv(2, 9, seed=5))                       # longer than the running rows' 7 columns
    merge_into(plain, joined_plain, 9)
    merge_into(fast, joined_fast, 9)
    assert same(plain, fast) and fast._key_buffer is buffer   # written into spare rows, view widened left
    assert torch.count_nonzero(fast.keys[:3, :, :2]) == 0     # the running rows' new columns are padding
    too_long = AppendLayer()
    too_long.update(*kv(1, 20, seed=6))                       # more columns than the buffer holds left of the end
    joined_plain = DynamicLayer()
    joined_plain.update(too_long.keys.clone(), too_long.values.clone())
    merge_into(plain, joined_plain, 20)
    merge_into(fast, too_long, 20)
    assert same(plain, fast) and fast._key_buffer is not buffer and fast.keys.shape[0] == 6


def test_random_decode_loop_operations_agree_with_dynamic_layer():
    """Long random runs of everything the decode loop does, rows reordered as retire_rows says."""
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        plain, fast = DynamicLayer(), AppendLayer()
        first = kv(int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 12, (1,), generator=g)), seed=trial)
        for layer in (plain, fast):
            layer.update(*first)
        cache = type("Cache", (), {"layers": [fast]})()
        for op in range(60):
            choice = int(torch.randint(0, 4, (1,), generator=g))
            rows = fast.keys.shape[0]
            if choice == 0:                                   # a decode step
                new = kv(rows, 1, seed=1000 * trial + op)
                plain.update(*new)
                fast.update(*new)
            elif choice == 1 and rows > 1:                    # some rows finish
                keep = sorted(torch.randperm(rows, generator=g)[:int(torch.randint(1, rows, (1,), generator=g))]
                              .tolist())
                _reference_after(plain, retire_rows(cache, keep))
            elif choice == 2:                                 # newcomers join
                joined_plain, joined_fast = DynamicLayer(), AppendLayer()
                new = kv(int(torch.randint(1, 8, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g)),
                         seed=2000 * trial + op)
                joined_plain.update(*new)
                joined_fast.update(*new)
                width = max(plain.keys.shape[2], new[0].shape[2])
                merge_into(plain, joined_plain, width)
                merge_into(fast, joined_fast, width)
            elif plain.keys.shape[2] > 1:                     # leading padding dropped
                cut = int(torch.randint(1, plain.keys.shape[2], (1,), generator=g))
                fast.drop_leading(cut)
                plain.keys, plain.values = plain.keys[:, :, cut:], plain.values[:, :, cut:]
            assert same(plain, fast), (trial, op, choice)
            assert torch.isfinite(fast.keys).all() and torch.isfinite(fast.values).all()


def test_spare_rows_never_go_past_the_batch_limit():
    """A spare row costs as much memory as a used one: none is made past `max_rows`, and a merge hands
    the running batch its limit."""
    from services.student.backends.kv_cache import ROW_GROW

    unbounded, capped, exact = AppendLayer(), AppendLayer(max_rows=5), AppendLayer(max_rows=3)
    for layer in (unbounded, capped, exact):
        layer.update(*kv(3, 4, seed=7))
    assert unbounded._key_buffer.shape[0] == 3 + ROW_GROW
    assert capped._key_buffer.shape[0] == 5 and exact._key_buffer.shape[0] == 3
    assert capped._value_buffer.shape[0] == 5
    for step in range(GROW + 1):                               # a column rebuild keeps the cap
        exact.update(*kv(3, 1, seed=200 + step))
    assert exact._key_buffer.shape[0] == 3
    plain = DynamicLayer()
    plain.update(exact.keys.clone(), exact.values.clone())
    joined_plain, joined = DynamicLayer(), AppendLayer(max_rows=2)
    for layer in (joined_plain, joined):
        layer.update(*kv(2, 5, seed=8))
    merge_into(plain, joined_plain, exact.keys.shape[2])
    merge_into(exact, joined, exact.keys.shape[2], max_rows=6)  # no spare rows: rebuilt, up to 6 rows
    assert same(plain, exact) and exact.max_rows == 6 and exact._key_buffer.shape[0] == 6
