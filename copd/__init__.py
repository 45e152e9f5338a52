"""CoPD: Co-Evolving Policy Distillation, the algorithm as a pure library.

Nothing here imports verl, ray or hydra at import time. `copd.advantages.register_copd_adv_est()` registers
the "copd" advantage estimator in verl's registry on demand. `copd.merge` is imported on its own.
"""

from copd.advantages import (
    CoPDAdvantageEstimator,
    compute_copd_advantage,
    cross_delta,
    grpo_outcome_advantage,
    register_copd_adv_est,
    subbatch_scale,
    teacher_looks_uniform,
)
from copd.config import BranchConfig, CoPDConfig
from copd.overlap import (
    block_topk,
    masked_mean,
    sampled_symmetric_kl,
    symmetric_kl,
    topk_logprobs,
    topk_overlap,
    topk_overlap_from_ids,
    topk_overlap_per_token_from_ids,
    topk_symmetric_kl,
)
from copd.schedule import Phase, PhasePosition, PhaseSchedule, PhaseSpan, check_schedule, default_steps
from copd.topology import pairs, students_of, teachers_of, validate

__all__ = [
    "BranchConfig",
    "CoPDAdvantageEstimator",
    "CoPDConfig",
    "Phase",
    "PhasePosition",
    "PhaseSchedule",
    "PhaseSpan",
    "check_schedule",
    "compute_copd_advantage",
    "cross_delta",
    "default_steps",
    "grpo_outcome_advantage",
    "masked_mean",
    "pairs",
    "register_copd_adv_est",
    "sampled_symmetric_kl",
    "students_of",
    "subbatch_scale",
    "symmetric_kl",
    "teacher_looks_uniform",
    "teachers_of",
    "block_topk",
    "topk_logprobs",
    "topk_overlap",
    "topk_overlap_from_ids",
    "topk_overlap_per_token_from_ids",
    "topk_symmetric_kl",
    "validate",
]
