"""Which newcomers are prefilled together: groups that waste the least compute on padding.

A prefill runs its rows as one `[rows, width]` forward pass, every row left-padded to the longest
one's uncached tokens, and padding costs as much as a real token. Newcomers are uneven: one reuses
almost all of its previous prompt (a few dozen tokens to prefill), the next starts an episode (a few
hundred). In a default run's evaluation, 21 % of the tokens its prefills computed were padding.

`plan_groups` splits the rows into groups, each run as its own forward pass, minimizing

    sum over groups of (overhead + rows in the group x the group's longest row)

where `overhead` is the fixed cost of one more forward pass, in tokens' worth of compute. With the
rows sorted by length, an optimal split groups neighbours only, so a dynamic programme over the sorted
order finds it exactly (at most a few dozen rows: quadratic is nothing).
"""

from __future__ import annotations

import torch

from services.student.defaults import DEFAULT_PREFILL_GROUP_OVERHEAD_TOKENS


def plan_groups(lengths: list[int], cached: list[int] | None = None, *,
                overhead_tokens: int = DEFAULT_PREFILL_GROUP_OVERHEAD_TOKENS) -> list[list[int]]:
    """Row indices grouped for separate prefills: every index exactly once, no empty group.

    `lengths[i]`: the tokens row i prefills; `cached[i]` (default 0): the tokens of its prompt whose
    KV comes from a cache. A group's KV is as wide as its longest cached prefix plus its longest new
    part; groups come widest first, so each later one joins the first one's KV buffers in place.
    `overhead_tokens` < 0 is refused; 0 gives no padding at all (rows of equal length stay
    together: splitting them gains nothing).
    """
    if overhead_tokens < 0:
        raise ValueError(f"overhead_tokens must be >= 0, got {overhead_tokens}")
    if any(n < 0 for n in lengths):
        raise ValueError("lengths must be >= 0")
    n = len(lengths)
    if n == 0:
        return []
    cached = [0] * n if cached is None else list(cached)
    if len(cached) != n:
        raise ValueError(f"{n} lengths but {len(cached)} cached prefixes")
    order = sorted(range(n), key=lambda i: lengths[i])
    # best[j]: the least cost of the first j rows in sorted order; cut[j]: where its last group starts.
    best = [0] * (n + 1)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        choice, value = 0, None
        for i in range(j):
            cost = best[i] + overhead_tokens + (j - i) * longest
            # Ties keep the larger group (fewer passes for the same compute).
            if value is None or cost < value:
                choice, value = i, cost
        best[j], cut[j] = value, choice
    groups: list[list[int]] = []
    j = n
    while j > 0:
        i = cut[j]
        groups.append([order[k] for k in range(i, j)])
        j = i
    groups.sort(key=lambda g: (-(max(cached[i] for i in g) + max(lengths[i] for i in g)), min(g)))
    return groups


def padded_tokens(lengths: list[int], groups: list[list[int]]) -> int:
    """Tokens a plan computes, padding included (what `plan_groups` keeps low)."""
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


def left_padded_inputs(prompts: list[list[int]], cached: list[int], pad_id: int):
    """One forward pass's `(input_ids, attention_mask, position_ids)` for prompts whose first
    `cached[i]` tokens' KV is already in the cache, laid out as `seed_cache` lays the prefixes out:
    the cached parts right-aligned in `max(cached)` columns, the new tokens right-aligned after them,
    zeros (masked) on the left of both; positions count from each row's own start, as if it ran alone."""
    prefix_width = max(cached)
    rest = [len(ids) - n for ids, n in zip(prompts, cached)]
    width = max(rest)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), prefix_width + width), dtype=torch.long)
    positions = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, (ids, n, m) in enumerate(zip(prompts, cached, rest)):
        input_ids[i, width - m:] = torch.tensor(ids[n:], dtype=torch.long)
        mask[i, prefix_width - n:prefix_width] = 1
        mask[i, prefix_width + width - m:] = 1
        positions[i, width - m:] = torch.arange(n, len(ids), dtype=torch.long)
    return input_ids, mask, positions
