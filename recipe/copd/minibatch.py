"""Native and cross rows in every PPO mini-batch (Algorithm 1, line 16: "combine batches; update").

verl's update splits the rows it gets in order: the batch is cut into ``dp`` contiguous chunks (one per data-parallel
rank, after ``_balance_batch``), and each rank cuts its chunk into contiguous mini-batches of
``ppo_mini_batch_size * n / dp`` rows (``actor.shuffle=false``, verl's default); global mini-batch m is the union of
every rank's m-th one. Rows arrive native first, then cross (``_balance_batch`` keeps the original order inside a
rank), so with more than one mini-batch the first updates saw only native rows and the last only cross rows.

``interleaved_order`` keeps each rank's rows (the seq-len balance stays) and spreads every sub-batch (native, each
teacher's cross rows) evenly inside the chunk, so any contiguous window holds each sub-batch's share up to one row.
``cross_fractions`` measures the share of cross rows per global mini-batch with the same split verl makes.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


def dp_chunks(n_rows: int, dp: int) -> list[range]:
    """The contiguous rows each data-parallel rank gets (verl's nd dispatch splits the batch in ``dp`` equal parts)."""
    if dp < 1 or n_rows % dp:
        raise ValueError(f"{n_rows} rows do not split into {dp} equal data-parallel chunks")
    size = n_rows // dp
    return [range(r * size, (r + 1) * size) for r in range(dp)]


def interleaved_order(label_B: Sequence[Hashable], dp: int) -> list[int]:
    """A permutation of the rows spreading each label (None: native, else the teacher) evenly in each rank's chunk.

    Row j of label c, the i-th of the n_c rows of c in its chunk, is placed by the key (i + 0.5) / n_c: every label
    then fills a window of w rows with w * n_c / chunk rows, up to one. Rows stay in their rank's chunk.
    """
    order = []
    for chunk in dp_chunks(len(label_B), dp):
        seen, counts = {}, {}
        for j in chunk:
            counts[label_B[j]] = counts.get(label_B[j], 0) + 1
        keys = []
        for j in chunk:
            i = seen.get(label_B[j], 0)
            seen[label_B[j]] = i + 1
            keys.append(((i + 0.5) / counts[label_B[j]], j))
        order.extend(j for _, j in sorted(keys))
    return order


def minibatch_rows(cross_B: Sequence[bool], dp: int, rows_per_minibatch: int, shuffle_seed: int | None = None):
    """The row indices of each global mini-batch of verl's update (epoch 0), as lists.

    ``rows_per_minibatch`` is ``ppo_mini_batch_size * rollout.n`` (global); ``shuffle_seed`` is verl's
    ``actor.data_loader_seed`` when ``actor.shuffle=true`` (rank r permutes its chunk with seed + r), else None.
    """
    if rows_per_minibatch % dp:
        raise ValueError(f"a mini-batch of {rows_per_minibatch} rows does not split over {dp} data-parallel ranks")
    per_rank = rows_per_minibatch // dp
    chunks = dp_chunks(len(cross_B), dp)
    if len(chunks[0]) % per_rank:
        raise ValueError(f"{len(chunks[0])} rows per rank are not a multiple of the mini-batch's {per_rank}")
    local = []
    for r, chunk in enumerate(chunks):
        idx = list(chunk)
        if shuffle_seed is not None:
            g = torch.Generator().manual_seed(shuffle_seed + r)
            idx = [idx[p] for p in torch.randperm(len(idx), generator=g).tolist()]
        local.append(idx)
    n_mb = len(chunks[0]) // per_rank
    return [[j for idx in local for j in idx[m * per_rank : (m + 1) * per_rank]] for m in range(n_mb)]


def cross_fractions(cross_B: Sequence[bool], dp: int, rows_per_minibatch: int, shuffle_seed=None) -> list[float]:
    """The share of cross rows in each global mini-batch of verl's update."""
    return [
        sum(bool(cross_B[j]) for j in rows) / len(rows)
        for rows in minibatch_rows(cross_B, dp, rows_per_minibatch, shuffle_seed)
    ]
