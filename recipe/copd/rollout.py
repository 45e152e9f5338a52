"""One branch's rows of one CoPD step, typed: which rows are native, which are cross and whose prompts they are on.

Built once per branch and step by the driver (``CoPDTrainer._rollout``); every later phase of the step reads it
instead of decoding trajectory keys again. The rows themselves live in TransferQueue (``batch``); what only the
driver needs (the response mask, rewards, the student's and the teachers' log-probs) is fetched or computed once
and kept here, on the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transfer_queue import KVBatchMeta


def uid_of_key(key: str) -> str:
    """The prompt uid of a trajectory key: verl's agent loop names a sample ``{uid}_{session}_{index}``."""
    return key.partition("_")[0]


@dataclass
class BranchRollout:
    """The rows one branch trains on in one step: its native batch plus one cross batch per teacher.

    Rows are in ``batch.keys`` order. ``teacher_B[i]`` is None for a native row and the teacher's name for a row
    sampled on that teacher's prompts. Driver-side tensors are padded to the step's longest response (B, T).
    """

    batch: KVBatchMeta  # the rows in TransferQueue (partition "train")
    uid_B: list[str]  # prompt uid per row (GRPO groups)
    teacher_B: list[str | None]  # None: native row; else the teacher whose prompts the row was sampled on
    n_prompts: int  # prompts submitted (native + cross): sets the PPO mini-batch of the combined update
    response_mask_B_T: torch.Tensor | None = None  # nested (jagged) response mask, fetched with the log-probs
    rewards_B_T: torch.Tensor | None = None  # verl's rm_scores, padded
    old_log_probs_B_T: torch.Tensor | None = None  # the student's training-engine log-probs, padded
    teacher_log_probs: dict[str, torch.Tensor] = field(default_factory=dict)  # teacher -> (B_t, T) on its rows

    @classmethod
    def from_batch(cls, batch: KVBatchMeta, teacher_of_uid: dict[str, str], n_prompts: int) -> BranchRollout:
        """Type the rows of ``batch``: a row whose prompt uid is in ``teacher_of_uid`` is a cross row."""
        uid_B = [uid_of_key(k) for k in batch.keys]
        return cls(batch, uid_B, [teacher_of_uid.get(u) for u in uid_B], n_prompts)

    def __len__(self) -> int:
        return len(self.batch.keys)

    @property
    def cross_B(self) -> torch.Tensor:
        """(B,) bool: True on cross rows."""
        return torch.tensor([t is not None for t in self.teacher_B], dtype=torch.bool)

    def rows_of(self, teacher: str | None) -> list[int]:
        """Row indices sampled on ``teacher``'s prompts (None: the native rows)."""
        return [i for i, t in enumerate(self.teacher_B) if t == teacher]

    def keys_of(self, teacher: str | None) -> list[str]:
        """Trajectory keys of ``rows_of(teacher)``."""
        return [self.batch.keys[i] for i in self.rows_of(teacher)]

    def mask_rows(self, rows: list[int]) -> torch.Tensor:
        """The nested response mask of some rows (one ``unbind``: indexing a jagged tensor row by row costs ~3 ms a
        row on CPU, 0.4 s for a 128-row cross batch)."""
        parts = self.response_mask_B_T.unbind()
        return torch.nested.as_nested_tensor([parts[i] for i in rows], layout=torch.jagged)

    def subbatch_ids(self, teachers: list[str]) -> torch.Tensor:
        """(B,) sub-batch id per row for the ``per_batch`` weighting: 0 native, 1 + i for ``teachers[i]``."""
        order = {t: i + 1 for i, t in enumerate(teachers)}
        return torch.tensor([order.get(t, 0) for t in self.teacher_B])

    def teacher_log_probs_B_T(self) -> torch.Tensor:
        """(B, T) teacher log-probs on every cross row, zeros on native rows."""
        out = torch.zeros_like(self.old_log_probs_B_T)
        for teacher, lp in self.teacher_log_probs.items():
            rows = self.rows_of(teacher)
            out[rows, : lp.shape[1]] = lp.to(out.dtype)
        return out
