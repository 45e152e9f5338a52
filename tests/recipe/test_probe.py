"""The worker's behavioural probe (top-k on the log-prob pass) agrees with `copd.overlap`'s full-vocab references."""

import pytest
import torch

from copd.overlap import topk_logprobs, topk_overlap_per_token_from_ids, topk_symmetric_kl
from recipe.copd.worker import BehaviourProbe, topk_field_names


@pytest.mark.parametrize(("k", "chunk"), [(1, 7), (4, 5), (16, 1024)])
def test_probe_matches_the_references(k, chunk):
    g = torch.Generator().manual_seed(k)
    n, v = 37, 300
    student = torch.randn(n, v, generator=g) * 3
    teacher = student + torch.randn(n, v, generator=g)  # related, so overlaps are neither 0 nor 1 everywhere
    s_out = BehaviourProbe("student", k, chunk_tokens=chunk)(student_logits=student.unsqueeze(0))
    t_out = BehaviourProbe("teacher", k, chunk_tokens=chunk)(student_logits=teacher.unsqueeze(0), data=s_out)

    ref_s_ids, ref_s_logp = topk_logprobs(student, k)
    ref_t_ids, _ = topk_logprobs(teacher, k)
    id_names, logit_names = topk_field_names(k)
    ids = torch.stack([s_out[name][0] for name in id_names], -1)
    assert torch.equal(ids, ref_s_ids)

    overlap = t_out["copd_overlap"][0]
    torch.testing.assert_close(overlap, topk_overlap_per_token_from_ids(ref_s_ids, ref_t_ids))
    assert 0 < overlap.mean() < 1 or k == 1

    t_logp_on_s = torch.log_softmax(teacher, -1).gather(-1, ref_s_ids)
    ref_skl = topk_symmetric_kl(ref_s_ids, ref_s_logp, t_logp_on_s)
    assert t_out["copd_topk_skl"][0].double().mean().item() == pytest.approx(ref_skl, rel=1e-4, abs=1e-7)


def test_identical_policies_give_full_overlap_and_zero_kl():
    logits = torch.randn(12, 50, generator=torch.Generator().manual_seed(0))
    s_out = BehaviourProbe("student", 4)(student_logits=logits.unsqueeze(0))
    t_out = BehaviourProbe("teacher", 4)(student_logits=logits.unsqueeze(0), data=s_out)
    assert torch.all(t_out["copd_overlap"] == 1)
    assert t_out["copd_topk_skl"].abs().max() < 1e-6


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="student"):
        BehaviourProbe("judge", 4)
