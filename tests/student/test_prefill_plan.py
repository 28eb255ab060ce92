"""How newcomers are grouped for prefill (`prefill_plan`): the least padding plus per-pass overhead,
checked against every possible split of small sets, and the padded layout of one pass."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from services.student.backends.prefill_plan import left_padded_inputs, padded_tokens, plan_groups


def _cost(lengths, groups, overhead):
    return padded_tokens(lengths, groups) + overhead * len(groups)


def _partitions(items):
    """Every set partition of `items` (Bell(n) of them)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _partitions(rest):
        yield [[first]] + partition
        for k in range(len(partition)):
            yield partition[:k] + [[first] + partition[k]] + partition[k + 1:]


def _check_cover(groups, n):
    flat = sorted(i for g in groups for i in g)
    assert flat == list(range(n)) and all(groups), groups


@pytest.mark.parametrize("seed", range(40))
def test_the_plan_is_optimal_among_every_possible_split(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    lengths = [rng.choice([1, 5, 30, 31, 80, 120, 200, 260]) for _ in range(n)]
    overhead = rng.choice([0, 1, 24, 100, 10_000])
    groups = plan_groups(lengths, overhead_tokens=overhead)
    _check_cover(groups, n)
    best = min(_cost(lengths, p, overhead) for p in _partitions(list(range(n))))
    assert _cost(lengths, groups, overhead) == best


def test_uneven_newcomers_are_split_and_even_ones_stay_together():
    # A prefill seen in a default-run evaluation: four rows reusing most of their last prompt and two
    # starting an episode.
    lengths = [40, 44, 38, 41, 230, 236]
    groups = plan_groups(lengths, overhead_tokens=24)
    assert sorted(map(sorted, groups)) == [[0, 1, 2, 3], [4, 5]]
    assert padded_tokens(lengths, groups) == 4 * 44 + 2 * 236 < 6 * 236
    assert plan_groups([100] * 16, overhead_tokens=0) == [list(range(16))]


def test_no_overhead_means_no_padding_and_a_huge_one_means_one_pass():
    lengths = [3, 9, 9, 27, 81]
    groups = plan_groups(lengths, overhead_tokens=0)
    assert padded_tokens(lengths, groups) == sum(lengths) and len(groups) == 4
    assert plan_groups(lengths, overhead_tokens=10**9) == [[0, 1, 2, 3, 4]]


def test_the_widest_group_comes_first_counting_its_cached_prefix():
    # Row 0 prefills little on top of a long cached prompt: its group's KV is the widest.
    lengths, cached = [20, 300, 310], [400, 0, 0]
    groups = plan_groups(lengths, cached, overhead_tokens=0)
    assert groups[0] == [0]
    widths = [max(cached[i] for i in g) + max(lengths[i] for i in g) for g in groups]
    assert widths == sorted(widths, reverse=True)


def test_hostile_plans_are_refused():
    assert plan_groups([]) == []
    with pytest.raises(ValueError):
        plan_groups([1, 2], overhead_tokens=-1)
    with pytest.raises(ValueError):
        plan_groups([1, -2])
    with pytest.raises(ValueError):
        plan_groups([1, 2], [0])


def test_the_plan_of_a_full_batch_is_quick():
    rng = random.Random(0)
    lengths = [rng.randint(1, 4000) for _ in range(256)]
    groups = plan_groups(lengths)
    _check_cover(groups, 256)
    # Contiguous in sorted order: no group's range of lengths overlaps another's.
    spans = sorted((min(lengths[i] for i in g), max(lengths[i] for i in g)) for g in groups)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_the_layout_right_aligns_cached_prefixes_and_new_tokens():
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10]]
    cached = [3, 0, 1]
    input_ids, mask, positions = left_padded_inputs(prompts, cached, pad_id=0)
    assert input_ids.tolist() == [[0, 4, 5], [6, 7, 8], [0, 0, 10]]
    assert mask.tolist() == [[1, 1, 1, 0, 1, 1],
                             [0, 0, 0, 1, 1, 1],
                             [0, 0, 1, 0, 0, 1]]
    assert positions.tolist() == [[0, 3, 4], [0, 1, 2], [0, 0, 1]]
    assert input_ids.dtype == mask.dtype == positions.dtype == torch.long
