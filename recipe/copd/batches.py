"""Batch helpers of the CoPD driver: stable uids, trajectory-key order, sub-batches, masked statistics, timing."""

from __future__ import annotations

import uuid
from contextlib import contextmanager

import transfer_queue as tq
from transfer_queue import KVBatchMeta
from verl.utils.debug import marked_timer

#: The non-tensor fields verl's training workers read (the processor's outputs of a vision-language model, for the
#: forward and M-RoPE). The others (the dataset's ``raw_prompt``, ``reward_model``, ``extra_info``, ``tools_kwargs``,
#: the agent loop's ``metrics``, ``extra_fields``, ``uid`` ...: 17 in a toy step) are for the trainer and the reward.
WORKER_NON_TENSOR_FIELDS = frozenset({"multi_modal_inputs"})


def stable_uids(seed: int, branch: str, step: int, part: str, n: int) -> list[str]:
    """n distinct uuid-shaped uids, the same in every run for the same (seed, branch, step, part)."""
    return [str(uuid.uuid5(uuid.NAMESPACE_OID, f"copd/{seed}/{branch}/{step}/{part}/{i}")) for i in range(n)]


@contextmanager
def branch_timer(name: str, total: dict, branch: dict):
    """Time a block into the step's ``total`` timing (verl's marked_timer, which accumulates) and the branch's."""
    before = total.get(name, 0.0)
    with marked_timer(name, total):
        yield
    branch[name] = branch.get(name, 0.0) + total[name] - before


def key_order(key: str, rank: dict) -> tuple:
    """Sort key of a trajectory key ``{uid}_{session}_{index}``: submission order of its prompt, then sample."""
    uid, _, rest = key.partition("_")
    return (rank.get(uid, len(rank)), *(int(p) if p.isdigit() else p for p in rest.split("_")))


def sub_batch(batch: KVBatchMeta, keys: list[str]) -> KVBatchMeta:
    keep = set(keys)
    tags = [t for k, t in zip(batch.keys, batch.tags, strict=True) if k in keep]
    return KVBatchMeta(partition_id=batch.partition_id, keys=list(keys), tags=tags, extra_info=dict(batch.extra_info))


def worker_field_names(field_schema: dict[str, dict], wanted: list[str] | None = None) -> list[str]:
    """The fields a worker call fetches, from TransferQueue's field schema of the batch: every tensor field and
    ``WORKER_NON_TENSOR_FIELDS`` (within ``wanted`` when the batch names its fields)."""
    names = [n for n, s in field_schema.items() if not s.get("is_non_tensor") or n in WORKER_NON_TENSOR_FIELDS]
    if wanted is None:
        return names
    wanted = set(wanted)
    return [n for n in names if n in wanted]


@contextmanager
def worker_fields(batch: KVBatchMeta):
    """Within the block, ``batch`` names the fields its worker calls need (``worker_field_names``).

    verl's trainer hands workers a ``KVBatchMeta`` without fields, so each worker fetches every field of the rows
    and packs each non-tensor one into a ``NonTensorStack`` of per-row objects, then moves it to the device: on
    the toy's CPU step that was a third of a log-prob or update call's CPU time (py-spy, docs/LOG.md 2026-12-06),
    for fields no worker reads. The tensors and the worker's outputs are the same; only the fetch is narrower.
    ``batch`` is changed in place (its extra_info is what verl's methods update) and restored on exit."""
    saved = batch.fields
    if len(batch):
        meta = tq.get_client().kv_retrieve_meta(keys=batch.keys, partition_id=batch.partition_id, create=False)
        batch.fields = worker_field_names(meta.field_schema, saved)
    try:
        yield batch
    finally:
        batch.fields = saved


def masked_mean(values, mask) -> float:
    """``copd.overlap.masked_mean`` of (possibly nested) per-token values."""
    from copd.overlap import masked_mean as _masked_mean

    v = values.to_padded_tensor(0.0) if values.is_nested else values
    m = mask.to_padded_tensor(0) if mask.is_nested else mask
    return _masked_mean(v, m)


def sampled_sym_kl(student_lp, teacher_lp, mask) -> float:
    from copd.overlap import sampled_symmetric_kl

    s = student_lp.to_padded_tensor(0.0) if student_lp.is_nested else student_lp
    t = teacher_lp.to_padded_tensor(0.0) if teacher_lp.is_nested else teacher_lp
    m = mask.to_padded_tensor(0) if mask.is_nested else mask
    return float(sampled_symmetric_kl(s.float(), t.float(), m))
