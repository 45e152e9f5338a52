"""Top-k overlap and symmetric KL: chunked kernels against slow references, invariants, hand cases."""

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from copd.overlap import (
    sampled_symmetric_kl,
    symmetric_kl,
    topk_logprobs,
    topk_overlap,
    topk_overlap_from_ids,
    topk_overlap_per_token_from_ids,
    topk_symmetric_kl,
)

SHAPES = [(1, 1, 5), (2, 3, 7), (3, 17, 50)]


def _logits(shape, seed, dtype):
    """Tie-free logits: a distinct-integer permutation per token (exact in bf16 for V <= 256), and a teacher
    that swaps a few of the student's entries (so overlaps are neither 0 nor 1)."""
    gen = torch.Generator().manual_seed(seed)
    *lead, vocab = shape
    n = math.prod(lead)
    student = torch.stack([torch.randperm(vocab, generator=gen) for _ in range(n)]).float()
    teacher = student.clone()
    for row in range(n):
        i, j = torch.randint(0, vocab, (2,), generator=gen).tolist()
        teacher[row, [i, j]] = teacher[row, [j, i]]
    scale = 0.125
    return (student * scale).reshape(shape).to(dtype), (teacher * scale).reshape(shape).to(dtype)


def _mask(shape, seed, kind):
    if kind == "none":
        return None
    mask = torch.rand(shape[:-1], generator=torch.Generator().manual_seed(seed)) > 0.4
    mask.view(-1)[0] = True
    return mask


def _ref_overlap(s, t, k, mask):
    """Slow reference: one token at a time, Python sets."""
    s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    keep = [True] * s.shape[0] if mask is None else mask.reshape(-1).tolist()
    vals = [len(set(s[i].topk(k).indices.tolist()) & set(t[i].topk(k).indices.tolist())) / k for i in range(len(s))]
    vals = [v for v, m in zip(vals, keep, strict=True) if m]
    return sum(vals) / len(vals)


def _ref_sym_kl_per_token(s, t):
    """Slow reference: full-tensor fp64 log-softmax. Shape: (B, T, V) -> (B, T)."""
    ls, lt = torch.log_softmax(s.double(), -1), torch.log_softmax(t.double(), -1)
    return (ls.exp() * (ls - lt)).sum(-1) + (lt.exp() * (lt - ls)).sum(-1)


def _ref_masked_mean(v, mask):
    return float(v.mean()) if mask is None else float(v[mask].mean())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("chunk", [1, 4, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", ["none", "random"])
def test_chunked_kernels_match_references(shape, seed, k, chunk, dtype, mask_kind):
    s, t = _logits(shape, seed, dtype)
    mask = _mask(shape, seed, mask_kind)
    assert topk_overlap(s, t, k, mask, chunk_tokens=chunk) == pytest.approx(_ref_overlap(s, t, k, mask), abs=1e-12)
    ref_kl = _ref_masked_mean(_ref_sym_kl_per_token(s, t), mask)
    assert symmetric_kl(s, t, mask, chunk_tokens=chunk) == pytest.approx(ref_kl, rel=1e-5, abs=1e-6)
    ids, logp = topk_logprobs(s, k, chunk_tokens=chunk)
    ref_top = torch.log_softmax(s.float(), -1).topk(k, -1)
    assert torch.equal(ids, ref_top.indices) and ids.dtype == torch.long
    torch.testing.assert_close(logp, ref_top.values, rtol=1e-6, atol=1e-5)  # topk+logsumexp vs log_softmax
    t_ids, _ = topk_logprobs(t, k, chunk_tokens=chunk)
    assert topk_overlap_from_ids(ids, t_ids, mask) == pytest.approx(_ref_overlap(s, t, k, mask), abs=1e-12)


def test_hand_case_two_tokens_vocab_four():
    # token 0: student top-2 {0, 1}, teacher top-2 {1, 3} -> 1/2; token 1: {3, 2} vs {0, 1} -> 0
    s = torch.tensor([[[4.0, 3.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0]]])
    t = torch.tensor([[[1.0, 4.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]]])
    assert topk_overlap(s, t, k=2) == pytest.approx(0.25)
    assert topk_overlap(s, t, k=2, mask=torch.tensor([[True, False]])) == pytest.approx(0.5)
    per_token = topk_overlap_per_token_from_ids(s.topk(2).indices, t.topk(2).indices)
    torch.testing.assert_close(per_token, torch.tensor([[0.5, 0.0]]))
    assert topk_overlap(s, t, k=4) == 1.0  # k = V: both sets are the whole vocabulary


def test_hand_case_symmetric_kl():
    # p_s = (1/2, 1/2), p_t = (3/4, 1/4): sum (p_s - p_t)(log p_s - log p_t) = -1/4 log(2/3) + 1/4 log 2 = log(3)/4
    s = torch.tensor([[[0.0, 0.0]]])
    t = torch.tensor([[[math.log(3.0), 0.0]]])
    assert symmetric_kl(s, t) == pytest.approx(math.log(3.0) / 4, rel=1e-6)
    # on the student's top-2 support (= full V=2) the top-k estimate is exact
    ids, logp_s = topk_logprobs(s, 2)
    logp_t = torch.log_softmax(t, -1).gather(-1, ids)
    assert topk_symmetric_kl(ids, logp_s, logp_t) == pytest.approx(math.log(3.0) / 4, rel=1e-6)


def test_self_overlap_is_one_and_self_kl_zero_even_with_ties():
    s = torch.zeros(2, 3, 11)  # every logit tied
    s[0, 0, 4] = 1.0
    assert topk_overlap(s, s.clone(), k=3, chunk_tokens=2) == 1.0
    assert symmetric_kl(s, s.clone()) == 0.0
    ids, _ = topk_logprobs(s, 3)
    assert topk_overlap_from_ids(ids, ids.clone()) == 1.0


def test_disjoint_topk_gives_zero():
    # student's top-2 are ids {0, 1}, teacher's {2, 3}
    s = torch.tensor([[[5.0, 4.0, 0.0, 0.0, 1.0]]])
    t = torch.tensor([[[0.0, 0.0, 5.0, 4.0, 1.0]]])
    assert topk_overlap(s, t, k=2) == 0.0


def test_topk_kl_with_full_support_equals_full_kl():
    s, t = _logits((2, 4, 9), seed=3, dtype=torch.float32)
    ids, logp_s = topk_logprobs(s, 9)
    logp_t = torch.log_softmax(t, -1).gather(-1, ids)
    assert topk_symmetric_kl(ids, logp_s, logp_t) == pytest.approx(symmetric_kl(s, t), rel=1e-5)
    # restricted to a smaller support it differs but stays >= 0
    ids, logp_s = topk_logprobs(s, 3)
    assert topk_symmetric_kl(ids, logp_s, torch.log_softmax(t, -1).gather(-1, ids)) >= 0.0


def test_sampled_symmetric_kl_hand_value_and_unbiased_at_temperature_one():
    # r = 0.75 / 0.5 = 1.5: (r - 1) log r = 0.5 log 1.5
    s_lp = torch.tensor([[math.log(0.5)]])
    t_lp = torch.tensor([[math.log(0.75)]])
    assert sampled_symmetric_kl(s_lp, t_lp) == pytest.approx(0.5 * math.log(1.5))
    # Monte Carlo over y ~ p_s: the mean converges to the exact symmetric KL
    gen = torch.Generator().manual_seed(0)
    s_logits, t_logits = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    y = torch.multinomial(torch.softmax(s_logits, -1), 200_000, replacement=True, generator=gen)
    est = sampled_symmetric_kl(torch.log_softmax(s_logits, -1)[y][None], torch.log_softmax(t_logits, -1)[y][None])
    assert est == pytest.approx(symmetric_kl(s_logits[None, None], t_logits[None, None]), rel=0.02)


def test_mask_selecting_nothing_raises():
    s, t = _logits((1, 2, 5), seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match="mask selects no token"):
        topk_overlap(s, t, 2, mask=torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="k=6"):
        topk_overlap(s, t, 6)


class _LargestNewTensor(TorchFunctionMode):
    """Records the largest tensor an op returns that does not alias the inputs (views of inputs are free)."""

    def __init__(self, inputs):
        super().__init__()
        self.input_ptrs = {x.untyped_storage().data_ptr() for x in inputs}
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, tuple) else (out,):
            if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() not in self.input_ptrs:
                self.largest = max(self.largest, o.numel())
        return out


def test_kernels_allocate_at_most_one_chunk_of_vocab():
    s, t = _logits((4, 16, 32), seed=0, dtype=torch.bfloat16)
    mask = torch.ones(4, 16, dtype=torch.bool)
    for fn in (
        lambda: topk_overlap(s, t, 4, mask, chunk_tokens=8),
        lambda: symmetric_kl(s, t, mask, chunk_tokens=8),
        lambda: topk_logprobs(s, 4, chunk_tokens=8),
    ):
        with _LargestNewTensor([s, t]) as probe:
            fn()
        assert probe.largest <= 8 * 32  # one chunk of 8 tokens x V; the full tensor is 64 x 32


@pytest.mark.parametrize(
    ("n", "v", "k", "block"), [(7, 1000, 4, 64), (5, 151936, 16, 256), (3, 300, 5, 256), (4, 257, 1, 16)]
)
def test_block_topk_equals_torch_topk(n, v, k, block):
    from copd.overlap import block_topk

    x = torch.randn(n, v, generator=torch.Generator().manual_seed(v))
    values, ids = block_topk(x, k, block=block)
    ref = x.topk(k, dim=-1)
    assert torch.equal(values, ref.values) and torch.equal(ids, ref.indices)


def test_block_topk_with_ties_returns_the_top_values():
    from copd.overlap import block_topk

    x = torch.zeros(3, 4096)
    x[:, ::512] = 1.0  # 8 equal maxima spread over blocks
    values, ids = block_topk(x, 4, block=64)
    assert torch.all(values == 1.0) and torch.all(x.gather(1, ids) == 1.0)
    assert all(len(set(row.tolist())) == 4 for row in ids)
