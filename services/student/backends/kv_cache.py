"""The local backend's KV cache: transformers' DynamicCache with layers that append in place.

`DynamicLayer.update` concatenates the whole cached sequence with every new token, so each decode
step copies every layer's keys and values (at 48 rows of ~400 tokens on SmolLM2-135M, about 440 MB
per step). `AppendLayer` keeps them as views of buffers with spare sequence columns instead: a
decode step writes one column, and only a full buffer is copied (into one with room for
`GROW` more steps). Dropping leading padding columns moves the view's start, no copy.

Anything that assigns `keys` / `values` directly (merging two batches) is detected at the next
update, which then starts a new buffer from what was assigned: the layer stays a correct
DynamicLayer whatever its callers do.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

#: Spare sequence columns allocated whenever a buffer is (re)made.
GROW = 64


class AppendLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views `[:, :, start:end]` of preallocated buffers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._start = 0
        self._end = 0

    def _owns_views(self) -> bool:
        """True while `keys`/`values` are still the views this layer made (nobody assigned others)."""
        return (self._key_buffer is not None and self.keys is self._key_view
                and self.values is self._value_view)

    def _publish(self) -> None:
        self._key_view = self._key_buffer[:, :, self._start:self._end]
        self._value_view = self._value_buffer[:, :, self._start:self._end]
        self.keys, self.values = self._key_view, self._value_view

    def _rebuild(self, keys: torch.Tensor, values: torch.Tensor, extra: int) -> None:
        """New buffers holding `keys`/`values` with room for `extra` + GROW more columns."""
        batch, heads, length, dim = keys.shape
        capacity = length + extra + GROW
        self._key_buffer = keys.new_empty((batch, heads, capacity, dim))
        self._value_buffer = values.new_empty((batch, values.shape[1], capacity, values.shape[3]))
        self._key_buffer[:, :, :length] = keys
        self._value_buffer[:, :, :length] = values
        self._start, self._end = 0, length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if not self._owns_views() or self._end + n > self._key_buffer.shape[2]:
            if self.keys.numel() == 0:  # first update: nothing cached yet
                self._rebuild(key_states[:, :, :0], value_states[:, :, :0], n)
            else:
                self._rebuild(self.keys, self.values, n)
        self._key_buffer[:, :, self._end:self._end + n] = key_states
        self._value_buffer[:, :, self._end:self._end + n] = value_states
        self._end += n
        self._publish()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._owns_views():  # one copy, spare columns included
            self._key_buffer = self._key_buffer.index_select(0, indices)
            self._value_buffer = self._value_buffer.index_select(0, indices)
            self._publish()
        else:
            super().batch_select_indices(indices)

    def drop_leading(self, columns: int) -> None:
        """Forget the first `columns` sequence positions (padding no row uses any more)."""
        if self._owns_views():
            self._start += columns
            self._publish()
        else:
            _slice_leading(self, columns)


def _slice_leading(layer: DynamicLayer, columns: int) -> None:
    layer.keys, layer.values = layer.keys[:, :, columns:], layer.values[:, :, columns:]


def drop_leading(layer: DynamicLayer, columns: int) -> None:
    """Forget a layer's first `columns` sequence positions: a view move for AppendLayer, else a slice."""
    if isinstance(layer, AppendLayer):
        layer.drop_leading(columns)
    else:
        _slice_leading(layer, columns)


def merge_into(running: DynamicLayer, joined: DynamicLayer, width: int) -> None:
    """`running` := its rows then `joined`'s, each left-padded with zeros to `width` columns.

    Padding must be zeros, not uninitialised memory: masked positions get zero attention weight, but
    0 x NaN would still be NaN.
    """
    parts = [(running.keys, running.values), (joined.keys, joined.values)]
    if not isinstance(running, AppendLayer):
        def widen(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, 0, width - t.shape[2], 0))
        running.keys = torch.cat([widen(k) for k, _ in parts], dim=0)
        running.values = torch.cat([widen(v) for _, v in parts], dim=0)
        return
    rows = sum(k.shape[0] for k, _ in parts)
    first_k, first_v = parts[0]
    keys = first_k.new_zeros((rows, first_k.shape[1], width + GROW, first_k.shape[3]))
    values = first_v.new_zeros((rows, first_v.shape[1], width + GROW, first_v.shape[3]))
    row = 0
    for k, v in parts:
        keys[row:row + k.shape[0], :, width - k.shape[2]:width] = k
        values[row:row + v.shape[0], :, width - v.shape[2]:width] = v
        row += k.shape[0]
    running._key_buffer, running._value_buffer = keys, values
    running._start, running._end = 0, width
    running._publish()


def new_decode_cache(config, *, append_in_place: bool = True) -> DynamicCache:
    """A DynamicCache for `config` whose plain (full-attention) layers append in place.

    Other layer kinds (sliding windows, ...) are left as transformers makes them.
    """
    cache = DynamicCache(config=config)
    if append_in_place:
        cache.layers = [AppendLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def is_full_attention(layer) -> bool:
    """A layer whose cache is the whole sequence (what batch merging and the prefix cache rely on)."""
    return type(layer) in (DynamicLayer, AppendLayer)
