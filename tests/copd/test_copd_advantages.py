"""CoPD advantages: GRPO rows equal verl's bit for bit, cross rows get beta * delta (Eq. 8)."""

import math

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn

from copd.advantages import (
    CoPDAdvantageEstimator,
    compute_copd_advantage,
    copd_adv_estimator,
    register_copd_adv_est,
    subbatch_scale,
    teacher_looks_uniform,
)

SQRT_HALF = math.sqrt(0.5)


def _rows(rewards, mask):
    """Outcome reward on the last response token of each row, as verl's reward managers write it."""
    mask_B_T = torch.tensor(mask, dtype=torch.float32)
    rewards_B_T = torch.zeros_like(mask_B_T)
    rewards_B_T[:, -1] = torch.tensor(rewards, dtype=torch.float32)
    return rewards_B_T, mask_B_T


def _random_batch(seed, batch=12, length=5, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    rewards_B_T = torch.zeros(batch, length, dtype=dtype)
    rewards_B_T[:, -1] = torch.randint(0, 3, (batch,), generator=gen).to(dtype) + torch.rand(batch, generator=gen)
    mask_B_T = (torch.rand(batch, length, generator=gen) > 0.2).float()
    # groups of 4, 3, 2, 1, 1, 1 rows; uids are strings as verl's uuid4 uids
    sizes = [4, 3, 2, 1, 1, 1]
    index = np.array([f"uid{g}" for g, n in enumerate(sizes) for _ in range(n)], dtype=object)
    perm = torch.randperm(batch, generator=gen).numpy()
    return rewards_B_T, mask_B_T, index[perm]


def test_grpo_hand_values():
    # group u: rewards 1, 0 -> mean 0.5, unbiased std sqrt(0.5); adv = +-0.5 / (sqrt(0.5) + 1e-6)
    # group v: one row -> mean 0, std 1 -> adv = 2 / (1 + 1e-6)
    rewards, mask = _rows([1.0, 0.0, 2.0], [[1, 1], [1, 0], [1, 1]])
    adv, ret = compute_copd_advantage(rewards, mask, np.array(["u", "u", "v"], dtype=object))
    a = 0.5 / (SQRT_HALF + 1e-6)
    expected = torch.tensor([[a, a], [-a, 0.0], [2 / (1 + 1e-6)] * 2])
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-7)
    assert ret is adv
    adv, _ = compute_copd_advantage(rewards, mask, np.array(["u", "u", "v"]), norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5], [-0.5, 0.0], [2.0, 2.0]]))


def test_equal_rewards_give_zero_advantage():
    rewards, mask = _rows([0.7, 0.7, 0.7], [[1, 1], [1, 1], [1, 0]])
    adv, _ = compute_copd_advantage(rewards, mask, np.array([3, 3, 3]))
    assert torch.equal(adv, torch.zeros(3, 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_cross_rows_equals_verl_grpo_exactly(seed, norm, dtype):
    rewards, mask, index = _random_batch(seed, dtype=dtype)
    ref, _ = compute_grpo_outcome_advantage(rewards.clone(), mask, index, norm_adv_by_std_in_grpo=norm)
    ours, _ = compute_copd_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=norm)
    assert torch.equal(ours, ref)
    all_false = torch.zeros(rewards.shape[0], dtype=torch.bool)
    ours, _ = compute_copd_advantage(rewards, mask, index, cross_mask=all_false, norm_adv_by_std_in_grpo=norm)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_native_rows_equal_verl_grpo_on_native_rows(seed):
    rewards, mask, index = _random_batch(seed)
    gen = torch.Generator().manual_seed(seed + 10)
    cross_B = torch.rand(rewards.shape[0], generator=gen) > 0.5
    old, teacher = -torch.rand(2, *mask.shape, generator=gen)
    ours, _ = compute_copd_advantage(rewards, mask, index, old, teacher, cross_mask=cross_B)
    native = ~cross_B
    ref, _ = compute_grpo_outcome_advantage(rewards[native].clone(), mask[native], index[native.numpy()])
    assert torch.equal(ours[native], ref)


def test_cross_rows_get_beta_delta_hand_values():
    # row 0 native (single group -> 1/(1+1e-6)); row 1 cross: old [-1, -2], teacher [-0.5, -3]
    # delta = [0.5, -1.0]; beta 2 -> [1.0, -2.0]; mask [1, 0] -> [1.0, 0.0]
    rewards, mask = _rows([1.0, 5.0], [[1, 1], [1, 0]])
    old = torch.tensor([[-9.0, -9.0], [-1.0, -2.0]])
    teacher = torch.tensor([[float("nan"), 0.0], [-0.5, -3.0]])  # native rows' teacher values are never read
    cross = torch.tensor([False, True])
    adv, _ = compute_copd_advantage(rewards, mask, np.array(["a", "b"]), old, teacher, cross, beta=2.0)
    one = 1 / (1 + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([[one, one], [1.0, 0.0]]))
    beta_B = torch.tensor([7.0, 3.0])  # per-row beta: only the cross row's 3.0 matters
    adv, _ = compute_copd_advantage(rewards, mask, np.array(["a", "b"]), old, teacher, cross, beta=beta_B)
    torch.testing.assert_close(adv[1], torch.tensor([1.5, 0.0]))


def test_beta_zero_is_pure_grpo_on_native_and_zero_on_cross():
    rewards, mask, index = _random_batch(3)
    cross_B = torch.arange(rewards.shape[0]) % 3 == 0
    old, teacher = -torch.rand(2, *mask.shape, generator=torch.Generator().manual_seed(0))
    adv, _ = compute_copd_advantage(rewards, mask, index, old, teacher, cross_B, beta=0.0)
    ref, _ = compute_grpo_outcome_advantage(rewards[~cross_B].clone(), mask[~cross_B], index[(~cross_B).numpy()])
    assert torch.equal(adv[~cross_B], ref)
    assert torch.equal(adv[cross_B], torch.zeros_like(adv[cross_B]))


def test_delta_clamp_is_symmetric_and_before_beta():
    # delta = [3, -0.2, -5] clamped to [-1, 1] -> [1, -0.2, -1]; beta 0.5 -> [0.5, -0.1, -0.5]
    rewards, mask = _rows([0.0], [[1, 1, 1]])
    old = torch.tensor([[-4.0, -1.0, -5.0]])
    teacher = torch.tensor([[-1.0, -1.2, -10.0]])
    adv, _ = compute_copd_advantage(
        rewards, mask, np.array(["x"]), old, teacher, torch.tensor([True]), beta=0.5, delta_clamp=1.0
    )
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.1, -0.5]]))


def test_cross_rows_need_log_probs():
    rewards, mask = _rows([1.0], [[1]])
    with pytest.raises(ValueError, match="teacher_log_probs"):
        compute_copd_advantage(rewards, mask, np.array(["x"]), cross_mask=torch.tensor([True]))


def test_cross_reward_adds_grpo_of_cross_rows():
    # cross rows c,c with rewards 1, 0 -> GRPO +-0.5 (no std norm); delta = 0.25 everywhere, beta 1
    rewards, mask = _rows([0.0, 1.0, 0.0], [[1], [1], [1]])
    old = torch.full((3, 1), -1.0)
    teacher = torch.full((3, 1), -0.75)
    cross = torch.tensor([False, True, True])
    kw = dict(old_log_probs=old, teacher_log_probs=teacher, cross_mask=cross, norm_adv_by_std_in_grpo=False)
    adv, _ = compute_copd_advantage(rewards, mask, np.array(["n", "c", "c"]), cross_reward=True, **kw)
    torch.testing.assert_close(adv, torch.tensor([[0.0], [0.75], [-0.25]]))
    adv, _ = compute_copd_advantage(rewards, mask, np.array(["n", "c", "c"]), **kw)
    torch.testing.assert_close(adv, torch.tensor([[0.0], [0.25], [0.25]]))


def test_norm_flag_read_from_config_and_kwarg_wins():
    rewards, mask = _rows([1.0, 0.0], [[1], [1]])
    index = np.array(["g", "g"])
    adv, _ = compute_copd_advantage(rewards, mask, index, config={"norm_adv_by_std_in_grpo": False})
    torch.testing.assert_close(adv, torch.tensor([[0.5], [-0.5]]))
    adv, _ = compute_copd_advantage(
        rewards, mask, index, norm_adv_by_std_in_grpo=True, config={"norm_adv_by_std_in_grpo": False}
    )
    a = 0.5 / (SQRT_HALF + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([[a], [-a]]))


def test_subbatch_scale_hand_values_and_sum():
    # tokens per row [2, 2, 1], ids [0, 0, 1]: N=5, S=2; sub-batch 0: 5/(2*4)=0.625, sub-batch 1: 5/(2*1)=2.5
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    scale = subbatch_scale(mask, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(scale, torch.tensor([0.625, 0.625, 2.5]))
    assert float((scale * mask.sum(-1)).sum()) == pytest.approx(5.0)
    # each sub-batch gets total weight N/S under a token-mean: 0.625*4 = 2.5*1 = 2.5
    # a sub-batch with no response token does not count in S and keeps scale 1
    scale = subbatch_scale(torch.tensor([[1, 1], [0, 0], [1, 0]]), [0, 1, 2])
    torch.testing.assert_close(scale, torch.tensor([0.75, 1.0, 1.5]))


def test_estimator_metrics_hand_values():
    # native row: single group -> adv 1/(1+1e-6) on 2 tokens; cross row: delta [2, -4] (clamp 3 -> [2, -3]),
    # beta 0.5 -> adv [1, -1.5]; third token of cross row is masked out
    rewards, mask = _rows([1.0, 0.0], [[1, 1, 0], [1, 1, 0]])
    old = torch.tensor([[0.0, 0.0, 0.0], [-3.0, -1.0, -7.0]])
    teacher = torch.tensor([[0.0, 0.0, 0.0], [-1.0, -5.0, 0.0]])
    est = CoPDAdvantageEstimator(beta={"math": 0.5, "code": 9.0}, delta_clamp=3.0)
    adv, ret, m = est(rewards, mask, np.array(["a", "b"]), old, teacher, torch.tensor([False, True]), student="math")
    torch.testing.assert_close(adv[1], torch.tensor([1.0, -1.5, 0.0]))
    assert m["copd/cross_token_frac"] == 0.5
    assert m["copd/delta_mean"] == pytest.approx(-1.0)  # (2 - 4) / 2, before clamp
    assert m["copd/delta_abs_mean"] == pytest.approx(3.0)
    assert m["copd/delta_clamp_frac"] == pytest.approx(0.5)
    assert m["copd/adv_cross_mean"] == pytest.approx(-0.25)
    assert m["copd/adv_native_mean"] == pytest.approx(1 / (1 + 1e-6))
    assert m["copd/teacher_logp_mean"] == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="student"):
        est(rewards, mask, np.array(["a", "b"]), old, teacher, torch.tensor([False, True]))


def test_estimator_per_batch_weighting_scales_rows():
    # native 2 tokens (adv 1/(1+1e-6)), cross 1 token (adv 0.5): N=3, S=2 -> scales 3/4 and 3/2
    rewards, mask = _rows([1.0, 0.0], [[1, 1], [1, 0]])
    old = torch.tensor([[0.0, 0.0], [-1.0, -1.0]])
    teacher = torch.tensor([[0.0, 0.0], [-0.5, -0.5]])
    est = CoPDAdvantageEstimator(weighting="per_batch")
    adv, _, _ = est(rewards, mask, np.array(["a", "b"]), old, teacher, torch.tensor([False, True]))
    one = 1 / (1 + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([[0.75 * one, 0.75 * one], [0.75, 0.0]]))
    with pytest.raises(ValueError, match="weighting"):
        CoPDAdvantageEstimator(weighting="mean")


def test_registered_in_verl_registry_idempotently():
    register_copd_adv_est()
    register_copd_adv_est()
    fn = get_adv_estimator_fn("copd")
    assert fn is copd_adv_estimator
    rewards, mask = _rows([1.0, 0.0], [[1], [1]])
    adv, _ = fn(
        token_level_rewards=rewards,
        response_mask=mask,
        config=None,
        index=np.array(["a", "b"]),
        old_log_probs=torch.tensor([[-1.0], [-1.0]]),
        teacher_log_probs=torch.tensor([[-1.0], [-2.0]]),
        cross_mask=torch.tensor([False, True]),
        beta=1.0,
    )
    torch.testing.assert_close(adv, torch.tensor([[1 / (1 + 1e-6)], [-1.0]]))


def test_registered_estimator_reads_verl_distillation_field_and_finds_cross_rows():
    """`teacher_logprobs` in verl's distillation shape (B, T, 1): rows with teacher scores get beta * delta."""
    register_copd_adv_est()
    rewards, mask = _rows([1.0, 0.0, 0.5], [[1, 1], [1, 1], [1, 0]])
    old = torch.tensor([[-1.0, -1.0], [-1.0, -2.0], [-0.5, 0.0]])
    teacher = torch.tensor([[0.0, 0.0], [0.0, 0.0], [-1.5, 0.0]]).unsqueeze(-1)  # only row 2 was scored
    adv, _ = get_adv_estimator_fn("copd")(
        token_level_rewards=rewards, response_mask=mask, config={"copd_beta": 2.0}, index=np.array(["u", "u", "c"]),
        old_log_probs=old, teacher_logprobs=teacher,
    )  # fmt: skip
    # native rows u: scores 1, 0 -> mean 0.5, std 0.7071 -> +-0.7071; cross row: 2 * (-1.5 - -0.5) = -2 on its token
    g = 0.5 / (0.5**0.5 + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([[g, g], [-g, -g], [-2.0, 0.0]]))


def test_through_verls_compute_advantage_it_is_grpo_and_says_so_once(monkeypatch):
    """verl's stock compute_advantage forwards no teacher log-probs: the estimator equals GRPO and warns once."""
    from verl import DataProto
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from copd import advantages

    register_copd_adv_est()
    monkeypatch.setattr(advantages, "_warned_grpo_only", False)
    rewards, mask = _rows([1.0, 0.0, 0.0, 1.0], [[1, 1], [1, 0], [1, 1], [1, 1]])
    uid = np.array(["a", "a", "b", "b"], dtype=object)

    def run(estimator):
        data = DataProto.from_dict(
            tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": uid}
        )
        return compute_advantage(data, adv_estimator=estimator, config=AlgoConfig(adv_estimator=estimator))

    with pytest.warns(UserWarning, match="plain GRPO"):
        ours = run("copd")
    grpo = run("grpo")
    torch.testing.assert_close(ours.batch["advantages"], grpo.batch["advantages"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run("copd")  # the second call is silent


def test_teacher_looks_uniform():
    # V = 100: log(1/V) = -4.605; tol 0.05 -> band of 0.23
    mask = torch.tensor([[1, 1, 0]])
    uniform = torch.tensor([[-4.6, -4.7, 0.0]])
    assert teacher_looks_uniform(uniform, mask, vocab_size=100)
    assert not teacher_looks_uniform(torch.tensor([[-4.6, -0.1, 0.0]]), mask, vocab_size=100)
    assert not teacher_looks_uniform(uniform, torch.zeros_like(mask), vocab_size=100)
