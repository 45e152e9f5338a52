"""CoPD advantages: GRPO on native rows (Eq. 7) and beta * delta on cross rows (Eq. 8).

One update batch of branch k holds native rows (k's own prompts, outcome reward, GRPO) and cross rows
(k's samples on a teacher j's prompts). A cross token gets A_t = beta_k * (log pi_j(y_t) - log pi_k(y_t)),
with log pi_k the trainer's (old) log-prob of the student, detached.

verl's `core_algos` imports ray and `verl.workers`, so this module does not import verl: call
`register_copd_adv_est()` once in the driver to make `get_adv_estimator_fn("copd")` work.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

ADV_ESTIMATOR_NAME = "copd"
WEIGHTINGS = ("token_mean", "per_batch")


def grpo_outcome_advantage(
    token_level_rewards_B_T: torch.Tensor,
    response_mask_B_T: torch.Tensor,
    index_B: Sequence[Any],
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
) -> torch.Tensor:
    """GRPO outcome advantage (Eq. 7): (r_i - mean_g) / (std_g + eps), broadcast over response tokens.

    Groups are rows sharing a uid in `index_B`; a one-row group gets mean 0 and std 1. The arithmetic
    (unbiased std, eps added to std, mask multiplied last) matches verl's `compute_grpo_outcome_advantage`
    bit for bit on float32 rewards.

    Shape: rewards (B, T), mask (B, T), index (B,) -> advantages (B, T).
    """
    with torch.no_grad():
        scores_B = token_level_rewards_B_T.sum(dim=-1)
        rows_of = defaultdict(list)
        for row, uid in enumerate(index_B):
            rows_of[uid].append(row)
        mean_B = torch.zeros_like(scores_B)
        # one-row groups: std 1 + eps rounded in the default dtype (fp32), as verl does, so fp64 matches too
        denom_B = torch.full_like(scores_B, float(torch.tensor(1.0) + epsilon))
        for rows in rows_of.values():
            if len(rows) > 1:
                group_G = scores_B[rows]
                mean_B[rows] = group_G.mean()
                denom_B[rows] = group_G.std() + epsilon
        centred_B = scores_B - mean_B
        adv_B = centred_B / denom_B if norm_adv_by_std_in_grpo else centred_B
        return adv_B.unsqueeze(-1) * response_mask_B_T


def cross_delta(teacher_log_probs_B_T: torch.Tensor, old_log_probs_B_T: torch.Tensor) -> torch.Tensor:
    """Teacher signal (Eq. 8): delta_t = log pi_j(y_t) - log pi_k(y_t), detached.

    Shape: (B, T), (B, T) -> (B, T).
    """
    return (teacher_log_probs_B_T - old_log_probs_B_T).detach()


def compute_copd_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[Any],
    old_log_probs: torch.Tensor | None = None,
    teacher_log_probs: torch.Tensor | None = None,
    cross_mask: torch.Tensor | None = None,
    beta: float | torch.Tensor = 1.0,
    norm_adv_by_std_in_grpo: bool | None = None,
    epsilon: float = 1e-6,
    delta_clamp: float | None = None,
    config: Any = None,
    cross_reward: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CoPD advantage of one update batch: GRPO (Eq. 7) on native rows, beta * delta (Eq. 8) on cross rows.

    Args:
        token_level_rewards: (B, T) outcome rewards; only native rows (and cross rows if `cross_reward`) are read.
        response_mask: (B, T) 1 on response tokens.
        index: (B,) uid per row (numpy array of str/int); GRPO groups rows by uid, native rows only.
        old_log_probs: (B, T) student log-probs log pi_k(y_t) from the trainer; needed if any cross row.
        teacher_log_probs: (B, T) teacher log-probs log pi_j(y_t) on the student's tokens; needed if any cross row.
        cross_mask: (B,) bool, True for cross rows; None means no cross rows (plain GRPO, equal to verl's).
        beta: float or (B,) tensor; the cross-row scale beta_k.
        norm_adv_by_std_in_grpo: divide by the group std; None reads `config.norm_adv_by_std_in_grpo`, else True.
        epsilon: added to the group std.
        delta_clamp: if set, delta is clamped to [-delta_clamp, delta_clamp] before multiplying by beta.
        config: verl's `algorithm` config (AlgoConfig, DictConfig or None).
        cross_reward: also add the GRPO advantage of the cross rows' own rewards (grouped among cross rows).

    Shape: (B, T) inputs -> advantages (B, T), returns (B, T); returns == advantages as in verl's GRPO.
    """
    if norm_adv_by_std_in_grpo is None:
        norm_adv_by_std_in_grpo = True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True))
    index_B = _as_index_array(index)
    grpo = dict(epsilon=epsilon, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo)
    cross_B = _cross_rows(cross_mask, token_level_rewards.shape[0])
    if cross_B is None:
        adv_B_T = grpo_outcome_advantage(token_level_rewards, response_mask, index_B, **grpo)
        return adv_B_T, adv_B_T
    if old_log_probs is None or teacher_log_probs is None:
        raise ValueError("cross rows need old_log_probs and teacher_log_probs: pass both (B, T) tensors")
    native_B = ~cross_B
    native_adv = grpo_outcome_advantage(
        token_level_rewards[native_B], response_mask[native_B], index_B[native_B.numpy()], **grpo
    )
    adv_B_T = torch.zeros(response_mask.shape, dtype=native_adv.dtype, device=response_mask.device)
    adv_B_T[native_B] = native_adv
    delta_B_T = cross_delta(teacher_log_probs, old_log_probs)
    if delta_clamp is not None:
        delta_B_T = delta_B_T.clamp(-delta_clamp, delta_clamp)
    beta_B_1 = beta.reshape(-1, 1) if isinstance(beta, torch.Tensor) else beta
    cross_B_T = cross_B.unsqueeze(-1) & response_mask.bool()
    cross_adv_B_T = torch.where(cross_B_T, beta_B_1 * delta_B_T, 0.0).to(adv_B_T.dtype)
    adv_B_T = adv_B_T + cross_adv_B_T
    if cross_reward:
        cross_grpo = grpo_outcome_advantage(
            token_level_rewards[cross_B], response_mask[cross_B], index_B[cross_B.numpy()], **grpo
        )
        adv_B_T[cross_B] += cross_grpo.to(adv_B_T.dtype)
    return adv_B_T, adv_B_T


def subbatch_scale(response_mask: torch.Tensor, subbatch_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Per-row scale giving each sub-batch equal total weight under a token-mean loss ("per_batch" weighting).

    Sub-batch s (e.g. 0 = native rows, 1.. = cross rows by teacher) with N_s response tokens out of N_total
    gets scale N_total / (S * N_s), S = number of sub-batches with at least one token; rows of empty
    sub-batches get 1. Scaling advantages by it equals reweighting the loss, because the clipped PPO objective
    is positively homogeneous in A (valid for loss_agg_mode="token-mean" over the whole update batch).

    Shape: mask (B, T), ids (B,) -> scale (B,); sum_b scale_b * N_b == N_total.
    """
    ids_B = torch.as_tensor(subbatch_ids).reshape(-1).cpu()
    tokens_B = response_mask.sum(dim=-1).to(torch.float64).cpu()
    if ids_B.shape != tokens_B.shape:
        raise ValueError(f"subbatch_ids has {ids_B.shape[0]} entries for {tokens_B.shape[0]} rows: pass one id per row")
    scale_B = torch.ones(ids_B.shape[0], dtype=torch.float64)
    groups = [s for s in torch.unique(ids_B).tolist() if tokens_B[ids_B == s].sum() > 0]
    n_total = tokens_B.sum()
    for s in groups:
        rows_B = ids_B == s
        scale_B[rows_B] = n_total / (len(groups) * tokens_B[rows_B].sum())
    return scale_B.to(torch.float32)


def teacher_looks_uniform(
    teacher_log_probs: torch.Tensor, response_mask: torch.Tensor, vocab_size: int, tol: float = 0.05
) -> bool:
    """True when every response token's teacher log-prob lies within tol*log(V) of log(1/V).

    That is the signature of a teacher scoring with a uniform distribution (e.g. woken without weights),
    which would silently collapse the student. False when the mask selects no token.

    Shape: (B, T), (B, T) -> bool.
    """
    lp_N = teacher_log_probs[response_mask.bool()].double()
    if lp_N.numel() == 0:
        return False
    log_v = math.log(vocab_size)
    return bool(((lp_N + log_v).abs() <= tol * log_v).all())


class CoPDAdvantageEstimator:
    """CoPD advantage with its knobs and metrics; `__call__` returns (advantages, returns, metrics).

    Args:
        beta: scalar beta, or a mapping branch name -> beta_k (then `student=` is required per call).
        delta_clamp: symmetric clamp of delta before beta, or None.
        weighting: "token_mean" (advantages unchanged) or "per_batch" (see `subbatch_scale`).
        norm_adv_by_std_in_grpo: GRPO std normalisation of native rows.
        epsilon: added to the GRPO group std.
        cross_reward: cross rows also get the GRPO advantage of their own verifiable reward.
    """

    def __init__(
        self,
        beta: float | Mapping[str, float] = 1.0,
        delta_clamp: float | None = None,
        weighting: str = "token_mean",
        norm_adv_by_std_in_grpo: bool = True,
        epsilon: float = 1e-6,
        cross_reward: bool = False,
    ):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting={weighting!r} is unknown: use one of {WEIGHTINGS}")
        self.beta = beta
        self.delta_clamp = delta_clamp
        self.weighting = weighting
        self.norm_adv_by_std_in_grpo = norm_adv_by_std_in_grpo
        self.epsilon = epsilon
        self.cross_reward = cross_reward

    def beta_for(self, student: str | None) -> float:
        """The beta of `student` (the scalar beta when beta is not a mapping)."""
        if not isinstance(self.beta, Mapping):
            return float(self.beta)
        if student not in self.beta:
            raise ValueError(f"no beta for student={student!r}: pass student= one of {sorted(self.beta)}")
        return float(self.beta[student])

    def __call__(
        self,
        token_level_rewards: torch.Tensor,
        response_mask: torch.Tensor,
        index: Sequence[Any],
        old_log_probs: torch.Tensor | None = None,
        teacher_log_probs: torch.Tensor | None = None,
        cross_mask: torch.Tensor | None = None,
        student: str | None = None,
        subbatch_ids: torch.Tensor | Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Advantages of one update batch of `student`, plus `copd/...` metrics over response tokens.

        `subbatch_ids` (B,) names the sub-batches for "per_batch" weighting (e.g. 0 native, 1+i cross rows
        taught by teacher i); None means native vs all cross rows.

        Shape: (B, T) inputs -> advantages (B, T), returns (B, T), metrics dict.
        """
        adv_B_T, _ = compute_copd_advantage(
            token_level_rewards,
            response_mask,
            index,
            old_log_probs=old_log_probs,
            teacher_log_probs=teacher_log_probs,
            cross_mask=cross_mask,
            beta=self.beta_for(student),
            norm_adv_by_std_in_grpo=self.norm_adv_by_std_in_grpo,
            epsilon=self.epsilon,
            delta_clamp=self.delta_clamp,
            cross_reward=self.cross_reward,
        )
        cross_B = _cross_rows(cross_mask, response_mask.shape[0])
        if self.weighting == "per_batch":
            ids_B = subbatch_ids if subbatch_ids is not None else _default_subbatch_ids(cross_B, response_mask)
            adv_B_T = adv_B_T * subbatch_scale(response_mask, ids_B).unsqueeze(-1).to(adv_B_T)
        metrics = self._metrics(adv_B_T, response_mask, cross_B, old_log_probs, teacher_log_probs)
        return adv_B_T, adv_B_T, metrics

    def _metrics(self, adv_B_T, response_mask, cross_B, old_log_probs, teacher_log_probs) -> dict[str, float]:
        """Means over response tokens; a key is left out when its token set is empty."""
        mask_B_T = response_mask.bool()
        if cross_B is None:
            cross_B = torch.zeros(mask_B_T.shape[0], dtype=torch.bool)
        cross_tok = mask_B_T & cross_B.unsqueeze(-1)
        native_tok = mask_B_T & ~cross_B.unsqueeze(-1)
        n_tok = int(mask_B_T.sum())
        metrics = {"copd/cross_token_frac": float(cross_tok.sum()) / max(n_tok, 1)}
        if native_tok.any():
            metrics["copd/adv_native_mean"] = float(adv_B_T[native_tok].double().mean())
        if cross_tok.any():
            delta_N = cross_delta(teacher_log_probs, old_log_probs)[cross_tok].double()
            clamp = self.delta_clamp
            metrics.update(
                {
                    "copd/adv_cross_mean": float(adv_B_T[cross_tok].double().mean()),
                    "copd/delta_mean": float(delta_N.mean()),
                    "copd/delta_abs_mean": float(delta_N.abs().mean()),
                    "copd/delta_min": float(delta_N.min()),
                    "copd/delta_max": float(delta_N.max()),
                    "copd/delta_clamp_frac": 0.0 if clamp is None else float((delta_N.abs() > clamp).double().mean()),
                    "copd/teacher_logp_mean": float(teacher_log_probs[cross_tok].double().mean()),
                    "copd/student_logp_mean": float(old_log_probs[cross_tok].double().mean()),
                }
            )
        return metrics


_warned_grpo_only = False


def copd_adv_estimator(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[Any] | None = None,
    config: Any = None,
    old_log_probs: torch.Tensor | None = None,
    teacher_logprobs: torch.Tensor | None = None,
    teacher_log_probs: torch.Tensor | None = None,
    cross_mask: torch.Tensor | None = None,
    beta: float | torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The "copd" entry of verl's advantage registry (`get_adv_estimator_fn("copd")`).

    Called with the teacher's log-probs of the student's tokens (`teacher_logprobs`, the field verl's own
    distillation uses, (B, T) or (B, T, 1); or `teacher_log_probs`) and the student's `old_log_probs`, it gives the
    rows that have them (nonzero teacher log-probs on a response token, or `cross_mask`) beta * delta (Eq. 8) and
    the other rows GRPO. beta: the argument, else `config.copd_beta` (verl's `algorithm` node), else 1.0.

    verl 0.9.1's stock `compute_advantage` forwards only rewards, mask, uid and config to a registered estimator, so
    called from a stock verl trainer this is GRPO: it says so once (a warning). The CoPD driver
    (`python -m recipe.copd.main`) supplies the teacher log-probs itself.

    Shape: (B, T) inputs -> advantages (B, T), returns (B, T).
    """
    global _warned_grpo_only
    teacher_B_T = teacher_logprobs if teacher_logprobs is not None else teacher_log_probs
    if index is None:
        index = np.arange(token_level_rewards.shape[0])
    if teacher_B_T is None:
        if not _warned_grpo_only:
            _warned_grpo_only = True
            warnings.warn(
                "copd advantage estimator: no teacher log-probs reached it (verl's compute_advantage passes none to a "
                "registered estimator), so it runs as plain GRPO; run CoPD through `python -m recipe.copd.main`, or "
                "pass teacher_logprobs= and old_log_probs=",
                stacklevel=2,
            )
        return compute_copd_advantage(token_level_rewards, response_mask, index, config=config, cross_mask=cross_mask)
    if teacher_B_T.dim() == 3:
        teacher_B_T = teacher_B_T.squeeze(-1)
    if old_log_probs is None:
        raise ValueError("copd advantage estimator: teacher log-probs need the student's old_log_probs (B, T) too")
    if cross_mask is None:
        cross_mask = ((teacher_B_T != 0) & response_mask.bool()).any(dim=-1)
    if beta is None:
        beta = float(config.get("copd_beta", 1.0)) if hasattr(config, "get") else 1.0
    return compute_copd_advantage(
        token_level_rewards, response_mask, index, old_log_probs=old_log_probs, teacher_log_probs=teacher_B_T,
        cross_mask=cross_mask, beta=beta, config=config,
    )  # fmt: skip


def register_copd_adv_est() -> None:
    """Register `copd_adv_estimator` in verl's registry as "copd"; idempotent.

    Lazy on purpose: verl's core_algos imports ray and verl.workers, which `copd` must not pull at import.
    """
    from verl.trainer.ppo import core_algos

    existing = core_algos.ADV_ESTIMATOR_REGISTRY.get(ADV_ESTIMATOR_NAME)
    if existing is copd_adv_estimator:
        return
    if existing is not None and _same_function(existing, copd_adv_estimator):
        del core_algos.ADV_ESTIMATOR_REGISTRY[ADV_ESTIMATOR_NAME]  # a reloaded copy of this module
    core_algos.register_adv_est(ADV_ESTIMATOR_NAME)(copd_adv_estimator)


def _same_function(a: Any, b: Any) -> bool:
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == (b.__module__, b.__qualname__)


def _as_index_array(index: Sequence[Any]) -> np.ndarray:
    if isinstance(index, torch.Tensor):
        return index.cpu().numpy()
    return index if isinstance(index, np.ndarray) else np.asarray(index, dtype=object)


def _cross_rows(cross_mask: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """Bool (B,) cross-row mask, or None when there is no cross row."""
    if cross_mask is None:
        return None
    cross_B = torch.as_tensor(cross_mask).reshape(-1).bool().cpu()
    if cross_B.shape[0] != batch:
        raise ValueError(f"cross_mask has {cross_B.shape[0]} rows but the batch has {batch}: pass one bool per row")
    return cross_B if bool(cross_B.any()) else None


def _default_subbatch_ids(cross_B: torch.Tensor | None, response_mask: torch.Tensor) -> torch.Tensor:
    if cross_B is None:
        return torch.zeros(response_mask.shape[0], dtype=torch.long)
    return cross_B.long()
