"""The local backend's KV cache: transformers' DynamicCache with layers that append in place.

`DynamicLayer.update` concatenates the whole cached sequence with every new token, so each decode
step copies every layer's keys and values (at 48 rows of ~400 tokens on SmolLM2-135M, about 440 MB
per step). `AppendLayer` keeps them as views of buffers with spare sequence columns instead: a
decode step writes one column, and only a full buffer is copied (into one with room for
`GROW` more steps). Dropping leading padding columns moves the view's start, no copy.

The buffers also keep spare rows (up to `ROW_GROW`, never past the batch's `max_rows`: a spare row
costs as much memory as a used one). Rows that finish leave by `retire_rows`: the last rows move into
their slots (one row's copy per finished row, instead of copying every row that stays), and the
batch's row order changes accordingly. Newcomers join by `merge_into`, written into spare rows and,
where they are longer than the running rows, into the columns left of the view: nothing of the
running rows is copied unless the buffer has no room (it is then rebuilt with room to spare).

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
#: Spare rows allocated whenever a buffer is (re)made: room for newcomers to join without a copy
#: (fewer where the layer's `max_rows` leaves less room).
ROW_GROW = 16


class AppendLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views `[:rows, :, start:end]` of preallocated buffers.

    `max_rows`: the most rows this cache will hold (a batch's size limit; a prefill that is merged into
    a running batch, or a cached prefix, holds just its own rows): spare rows are never made past it.
    None: always ROW_GROW spare rows."""

    def __init__(self, *args, max_rows: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_rows = max_rows
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._rows = 0
        self._start = 0
        self._end = 0

    def _owns_views(self) -> bool:
        """True while `keys`/`values` are still the views this layer made (nobody assigned others)."""
        return (self._key_buffer is not None and self.keys is self._key_view
                and self.values is self._value_view)

    def _publish(self) -> None:
        self._key_view = self._key_buffer[:self._rows, :, self._start:self._end]
        self._value_view = self._value_buffer[:self._rows, :, self._start:self._end]
        self.keys, self.values = self._key_view, self._value_view

    def spare_rows(self, rows: int) -> int:
        """Spare rows to allocate beside `rows` used ones."""
        if self.max_rows is None:
            return ROW_GROW
        return max(0, min(ROW_GROW, self.max_rows - rows))

    def _rebuild(self, keys: torch.Tensor, values: torch.Tensor, extra: int) -> None:
        """New buffers holding `keys`/`values` with room for `extra` + GROW more columns and
        `spare_rows` more rows. The spare rows are zeros: a row that joins later widens the view to the
        left over columns it never wrote, and masked positions must hold finite values (0 x NaN is NaN)."""
        batch, heads, length, dim = keys.shape
        capacity, spare = length + extra + GROW, self.spare_rows(batch)
        self._key_buffer = keys.new_zeros((batch + spare, heads, capacity, dim))
        self._value_buffer = values.new_zeros((batch + spare, values.shape[1], capacity, values.shape[3]))
        self._key_buffer[:batch, :, :length] = keys
        self._value_buffer[:batch, :, :length] = values
        self._rows, self._start, self._end = batch, 0, length

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if not self._owns_views() or self._end + n > self._key_buffer.shape[2]:
            if self.keys.numel() == 0:  # first update: nothing cached yet
                self._rebuild(key_states[:, :, :0], value_states[:, :, :0], n)
            else:
                self._rebuild(self.keys, self.values, n)
        self._key_buffer[:self._rows, :, self._end:self._end + n] = key_states
        self._value_buffer[:self._rows, :, self._end:self._end + n] = value_states
        self._end += n
        self._publish()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """transformers' API: rows `indices`, in that order (any order, repeats allowed): one copy."""
        if self._owns_views():
            self._rebuild(self.keys.index_select(0, indices), self.values.index_select(0, indices), 0)
            self._publish()
        else:
            super().batch_select_indices(indices)

    def retire_rows(self, holes: torch.Tensor, movers: torch.Tensor, rows: int) -> None:
        """Rows `movers` (at or past `rows`) move into slots `holes` (before `rows`); the batch then has
        `rows` rows. Only the moved rows' columns are copied."""
        if holes.numel():
            for buffer in (self._key_buffer, self._value_buffer):
                view = buffer[:, :, self._start:self._end]
                view.index_copy_(0, holes, view.index_select(0, movers))
        self._rows = rows
        self._publish()

    def join(self, joined: DynamicLayer, width: int) -> bool:
        """Append `joined`'s rows in place, right-aligned, the view widened to `width` columns on the left
        (zeros where a row has no data); False, with nothing changed, when the buffers have no room."""
        if not self._owns_views():
            return False
        new_rows, length = joined.keys.shape[0], joined.keys.shape[2]
        start = self._end - width
        if self._rows + new_rows > self._key_buffer.shape[0] or start < 0 or width < self._end - self._start:
            return False
        top, bottom = self._rows, self._rows + new_rows
        for buffer, part in ((self._key_buffer, joined.keys), (self._value_buffer, joined.values)):
            if start < self._start:
                buffer[:top, :, start:self._start].zero_()  # columns new to the running rows: padding
            buffer[top:bottom, :, start:self._end - length].zero_()
            buffer[top:bottom, :, self._end - length:self._end] = part
        self._rows, self._start = bottom, start
        self._publish()
        return True

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


def merge_into(running: DynamicLayer, joined: DynamicLayer, width: int, *, max_rows: int | None = None) -> None:
    """`running` := its rows then `joined`'s, each left-padded with zeros to `width` columns.
    `max_rows` (the batch's size limit) becomes the running layer's, bounding its spare rows.

    Padding must be zeros, not uninitialised memory: masked positions get zero attention weight, but
    0 x NaN would still be NaN.
    """
    if isinstance(running, AppendLayer) and max_rows is not None:
        running.max_rows = max_rows
    if isinstance(running, AppendLayer) and running.join(joined, width):
        return
    parts = [(running.keys, running.values), (joined.keys, joined.values)]
    if not isinstance(running, AppendLayer):
        def widen(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, 0, width - t.shape[2], 0))
        running.keys = torch.cat([widen(k) for k, _ in parts], dim=0)
        running.values = torch.cat([widen(v) for _, v in parts], dim=0)
        return
    rows = sum(k.shape[0] for k, _ in parts)
    first_k, first_v = parts[0]
    spare = running.spare_rows(rows)
    keys = first_k.new_zeros((rows + spare, first_k.shape[1], width + GROW, first_k.shape[3]))
    values = first_v.new_zeros((rows + spare, first_v.shape[1], width + GROW, first_v.shape[3]))
    row = 0
    for k, v in parts:
        keys[row:row + k.shape[0], :, width - k.shape[2]:width] = k
        values[row:row + v.shape[0], :, width - v.shape[2]:width] = v
        row += k.shape[0]
    running._key_buffer, running._value_buffer = keys, values
    running._rows, running._start, running._end = rows, 0, width
    running._publish()


def retire_rows(cache, keep: list[int]) -> list[int]:
    """Keep the rows at indices `keep` (increasing) of `cache`; returns the rows' new order as old indices.

    Where every layer is an AppendLayer still holding its own views, finished rows' slots are filled
    with the last kept rows (the order changes, one row copied per moved row); otherwise the cache is
    reindexed by `keep`, in that order.
    """
    layers = cache.layers
    if not layers or not all(isinstance(layer, AppendLayer) and layer._owns_views() for layer in layers):
        device = layers[0].keys.device if layers else None
        cache.batch_select_indices(torch.tensor(keep, dtype=torch.long, device=device))
        return list(keep)
    rows = layers[0].keys.shape[0]
    kept = set(keep)
    count = len(keep)
    holes = [i for i in range(count) if i not in kept]
    movers = [i for i in keep if i >= count]
    order = list(range(count))
    for hole, mover in zip(holes, movers):
        order[hole] = mover
    device = layers[0].keys.device
    holes_t = torch.tensor(holes, dtype=torch.long, device=device)
    movers_t = torch.tensor(movers, dtype=torch.long, device=device)
    assert len(holes) == len(movers) and rows >= count
    for layer in layers:
        layer.retire_rows(holes_t, movers_t, count)
    return order


def new_decode_cache(config, *, append_in_place: bool = True, max_rows: int | None = None) -> DynamicCache:
    """A DynamicCache for `config` whose plain (full-attention) layers append in place, with spare rows
    up to `max_rows` (see AppendLayer).

    Other layer kinds (sliding windows, ...) are left as transformers makes them.
    """
    cache = DynamicCache(config=config)
    if append_in_place:
        cache.layers = [AppendLayer(max_rows=max_rows) if type(layer) is DynamicLayer else layer
                        for layer in cache.layers]
    return cache


def is_full_attention(layer) -> bool:
    """A layer whose cache is the whole sequence (what batch merging and the prefix cache rely on)."""
    return type(layer) in (DynamicLayer, AppendLayer)
