"""Native and cross rows share every PPO mini-batch; the measurement splits the rows as verl's update does."""

import random

import pytest
from verl.utils.seqlen_balancing import get_seqlen_balanced_partitions

from recipe.copd.minibatch import cross_fractions, dp_chunks, interleaved_order, minibatch_rows


def _balanced(labels, seqlens, dp):
    """verl's _balance_batch order: karmarkar-karp partitions, each in original (native-first) order."""
    parts = get_seqlen_balanced_partitions(seqlens, k_partitions=dp, equal_size=True)
    order = [j for p in parts for j in p]
    return [labels[j] for j in order]


@pytest.mark.parametrize("dp", [1, 2, 4])
@pytest.mark.parametrize("n_mb", [2, 4])
def test_interleaving_mixes_every_minibatch(dp, n_mb):
    rng = random.Random(dp * 10 + n_mb)
    n_native, n_cross, n = 64, 64, 8  # the preset's shape shrunk: prompts x samples, half native, half cross
    labels = [None] * (n_native * n) + ["image"] * (n_cross * n)
    seqlens = [rng.randint(20, 400) for _ in labels]
    balanced = _balanced(labels, seqlens, dp)
    rows = len(labels) // n_mb
    before = cross_fractions([t is not None for t in balanced], dp, rows)
    assert min(before) < 0.2 and max(before) > 0.8  # the bug: native mini-batches first, cross last
    mixed = [balanced[j] for j in interleaved_order(balanced, dp)]
    share = n_cross / (n_native + n_cross)
    after = cross_fractions([t is not None for t in mixed], dp, rows)
    assert all(abs(f - share) <= 0.15 for f in after), after


def test_interleaving_keeps_rows_on_their_rank_and_spreads_each_teacher():
    labels = [None] * 4 + ["a"] * 2 + ["b"] * 2 + [None] * 4 + ["a"] * 4
    order = interleaved_order(labels, 2)
    assert sorted(order) == list(range(len(labels)))
    for chunk in dp_chunks(len(labels), 2):
        assert set(order[chunk.start : chunk.stop]) == set(chunk)
    assert [labels[j] for j in order[:4]] == [None, "a", "b", None]


def test_minibatch_rows_follow_the_rank_chunks():
    # dp=2, 8 rows, mini-batch 4: rank 0 has rows 0-3, rank 1 rows 4-7; mini-batch 0 = {0, 1, 4, 5}
    assert minibatch_rows([False] * 8, 2, 4) == [[0, 1, 4, 5], [2, 3, 6, 7]]
    shuffled = minibatch_rows([False] * 8, 2, 4, shuffle_seed=42)
    assert sorted(j for mb in shuffled for j in mb) == list(range(8))
    with pytest.raises(ValueError, match="multiple"):
        minibatch_rows([False] * 6, 1, 4)
