"""BranchRollout: the typed rows of one branch's step (the driver's bookkeeping; no workers)."""

import torch
from transfer_queue import KVBatchMeta

from recipe.copd.rollout import BranchRollout


def _rollout() -> BranchRollout:
    keys = [f"u{i // 2}_0_{i % 2}" for i in range(6)]  # 3 prompts x 2 samples
    batch = KVBatchMeta(partition_id="train", keys=keys, tags=[{} for _ in keys])
    rollout = BranchRollout.from_batch(batch, {"u1": "mul", "u2": "mul"}, n_prompts=3)
    lengths = [1, 3, 2, 4, 1, 2]
    rollout.response_mask_B_T = torch.nested.as_nested_tensor(
        [torch.arange(1, n + 1) for n in lengths], layout=torch.jagged
    )
    return rollout


def test_rows_and_cross_flags():
    rollout = _rollout()
    assert rollout.uid_B == ["u0", "u0", "u1", "u1", "u2", "u2"]
    assert rollout.rows_of(None) == [0, 1] and rollout.rows_of("mul") == [2, 3, 4, 5]
    assert rollout.cross_B.tolist() == [False, False, True, True, True, True]


def test_mask_rows_keeps_each_row():
    rollout = _rollout()
    picked = rollout.mask_rows([3, 0, 5])
    assert [row.tolist() for row in picked.unbind()] == [[1, 2, 3, 4], [1], [1, 2]]
    assert picked.offsets().tolist() == [0, 4, 5, 7]
