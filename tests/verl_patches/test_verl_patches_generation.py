"""hf rollout generation: vLLM request semantics, and sampled tokens/log-probs against a plain forward."""

import math

import pytest
import torch

from copd.tiny.char_tokenizer import build_char_tokenizer
from copd.tiny.qwen3 import build_tiny_qwen3
from verl_patches.hf_rollout.generation import (
    SamplingParams,
    generate_batch,
    generation_config,
    left_pad,
    resolve_max_tokens,
    response_length,
    token_log_probs,
)

EOS, PAD = 99, 97


@pytest.fixture(scope="module")
def model():
    return build_tiny_qwen3(build_char_tokenizer(), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)


def plain_log_probs(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """Reference: one unpadded forward over prompt + response, log_softmax(logits / T) at the response tokens."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_sampling_params_map_vllm_conventions():
    p = SamplingParams.from_request({"temperature": 0.7, "top_p": 0.9, "top_k": -1, "logprobs": True})
    assert (p.temperature, p.top_p, p.top_k, p.greedy) == (0.7, 0.9, 0, False)  # vLLM's -1 = off = HF's 0
    assert SamplingParams.from_request({"temperature": 0}).greedy
    with pytest.raises(ValueError, match="min_p"):
        SamplingParams.from_request({"min_p": 0.1})
    cfg = generation_config(SamplingParams(top_k=0), 4, [EOS], PAD)
    assert cfg.top_k is None and cfg.do_sample and cfg.eos_token_id == [EOS]  # the model's default top_k=50 is off


def test_max_tokens_follow_vllm_rule():
    # prompt_length 10, response_length 8: a 4-token prompt gets min(8, 10 + 8 - 4) = 8
    assert resolve_max_tokens({}, 4, 10, 8, 18) == 8
    # a 15-token prompt (multi-turn overflow) gets min(8, 18 - 15) = 3
    assert resolve_max_tokens({}, 15, 10, 8, 18) == 3
    assert resolve_max_tokens({"max_tokens": 5}, 4, 10, 8, 18) == 5
    assert resolve_max_tokens({"max_tokens": 50}, 4, 10, 8, 18) == 14  # clipped to the room left, 18 - 4
    with pytest.raises(ValueError, match="max_model_len"):
        resolve_max_tokens({}, 18, 10, 8, 18)


def test_left_pad_and_response_length():
    ids, mask = left_pad([[5, 6, 7], [8]], PAD)
    assert ids.tolist() == [[5, 6, 7], [PAD, PAD, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert response_length([3, EOS, PAD, PAD], [EOS], 4, ignore_eos=False) == 2  # EOS kept
    assert response_length([3, 4, 5, EOS], [EOS], 2, ignore_eos=False) == 2  # own budget
    assert response_length([3, EOS, 5], [EOS], 3, ignore_eos=True) == 3


def test_token_log_probs_hand_values():
    # logits (0, ln 3) at T=1: softmax (1/4, 3/4); at T=0.5 logits become (0, 2 ln 3): softmax (1/10, 9/10)
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert token_log_probs(logits, torch.tensor([[1]]), 1.0).item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert token_log_probs(logits, torch.tensor([[0]]), 0.5).item() == pytest.approx(math.log(0.1), abs=1e-6)
    assert token_log_probs(logits, torch.tensor([[0]]), 0.0).item() == pytest.approx(math.log(0.25), abs=1e-6)


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 0.9, 20)])
def test_batched_sampling_log_probs_match_plain_forward(model, temperature, top_p, top_k):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33]]
    torch.manual_seed(0)
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
    results = generate_batch(model, prompts, [12, 5, 12], params, [EOS], PAD)
    assert len(results[1][0]) <= 5
    for prompt, (tokens, log_probs) in zip(prompts, results, strict=True):
        assert len(tokens) == len(log_probs) >= 1
        assert EOS not in tokens[:-1]
        expected = plain_log_probs(model, prompt, tokens, temperature)
        torch.testing.assert_close(torch.tensor(log_probs), expected, atol=1e-5, rtol=0)


def test_greedy_is_argmax_of_plain_forward_and_top_k_1_equals_greedy(model):
    prompts = [[40, 41, 42], [50, 51, 52, 53, 54]]
    greedy = generate_batch(model, prompts, [6, 6], SamplingParams(temperature=0), [EOS], PAD)
    for prompt, (tokens, _) in zip(prompts, greedy, strict=True):
        seq = list(prompt)
        for _ in tokens:
            with torch.no_grad():
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        assert tokens == seq[len(prompt) : len(prompt) + len(tokens)]
    top1 = generate_batch(model, prompts, [6, 6], SamplingParams(temperature=1.0, top_k=1), [EOS], PAD)
    assert [t for t, _ in top1] == [t for t, _ in greedy]


def test_stops_at_eos_and_ignore_eos_runs_to_budget(model):
    def eos_wins(_module, _inputs, logits):
        return logits.index_fill(-1, torch.tensor([EOS]), 1e4)

    handle = model.lm_head.register_forward_hook(eos_wins)
    try:
        ((tokens, log_probs),) = generate_batch(model, [[5, 6]], [4], SamplingParams(), [EOS], PAD)
        assert tokens == [EOS] and log_probs[0] == pytest.approx(0.0, abs=1e-6)
        ((tokens, _),) = generate_batch(model, [[5, 6]], [4], SamplingParams(ignore_eos=True), [EOS], PAD)
        assert tokens == [EOS] * 4
    finally:
        handle.remove()
