"""CoPD: Co-Evolving Policy Distillation, the algorithm as a pure library.

Nothing here imports verl, ray or hydra at import time. `copd.advantages.register_copd_adv_est()` registers
the "copd" advantage estimator in verl's registry on demand. `copd.merge` is imported on its own.
The names below load their module (and torch) on first use, so `python -m copd.merge` starts without torch.
"""

_LAZY = {
    "copd.advantages": ("CoPDAdvantageEstimator", "compute_copd_advantage", "cross_delta", "grpo_outcome_advantage",
                        "register_copd_adv_est", "subbatch_scale", "teacher_looks_uniform"),
    "copd.config": ("BranchConfig", "CoPDConfig"),
    "copd.overlap": ("block_topk", "masked_mean", "sampled_symmetric_kl", "symmetric_kl", "topk_logprobs",
                     "topk_overlap", "topk_overlap_from_ids", "topk_overlap_per_token_from_ids", "topk_symmetric_kl"),
    "copd.schedule": ("Phase", "PhasePosition", "PhaseSchedule", "PhaseSpan", "check_schedule", "default_steps"),
    "copd.topology": ("pairs", "students_of", "teachers_of", "validate"),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}

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


def __getattr__(name: str):
    if name in _MODULE_OF:
        import importlib

        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
