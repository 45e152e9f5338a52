"""Batched token-in/token-out generation with `transformers`, following vLLM's request semantics in verl.

Letters: B requests in a batch, P padded prompt length, S generated steps, V vocabulary.
"""

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel


@dataclass(frozen=True)
class SamplingParams:
    """The sampling settings that change the generated distribution (requests with equal ones batch together)."""

    temperature: float = 1.0  # <= 0 means greedy
    top_p: float = 1.0  # nucleus mass; 1.0 = off
    top_k: int = 0  # <= 0 means off (vLLM's -1)
    repetition_penalty: float = 1.0
    ignore_eos: bool = False  # keep generating past EOS up to max_tokens
    seed: int | None = None  # per-request seed (full determinism): such requests run alone

    @classmethod
    def from_request(cls, sampling_params: dict) -> "SamplingParams":
        """From the vLLM-style dict verl's agent loop sends (`logprobs`, `max_tokens` are read elsewhere)."""
        known = {"temperature", "top_p", "top_k", "repetition_penalty", "ignore_eos", "seed", "logprobs"}
        known |= {"max_tokens", "max_new_tokens", "stop_token_ids"}
        unknown = set(sampling_params) - known
        if unknown:
            raise ValueError(f"hf rollout does not support sampling params {sorted(unknown)}; drop them")
        top_k = sampling_params.get("top_k", -1)
        return cls(
            temperature=float(sampling_params.get("temperature", 1.0)),
            top_p=float(sampling_params.get("top_p", 1.0)),
            top_k=int(top_k) if top_k is not None and int(top_k) > 0 else 0,
            repetition_penalty=float(sampling_params.get("repetition_penalty", 1.0)),
            ignore_eos=bool(sampling_params.get("ignore_eos", False)),
            seed=sampling_params.get("seed"),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def resolve_max_tokens(
    sampling_params: dict, n_prompt: int, prompt_length: int, response_length: int, max_model_len: int
) -> int:
    """New-token budget of a request, as verl's vLLM server computes it: `max_tokens` (or `max_new_tokens`) if
    given, else min(response_length, prompt_length + response_length - n_prompt); clipped to [1, room left]."""
    room = max_model_len - n_prompt
    if room < 1:
        raise ValueError(
            f"prompt of {n_prompt} tokens leaves no room within max_model_len={max_model_len}: "
            "shorten the prompt or raise actor_rollout_ref.rollout.max_model_len"
        )
    budget = sampling_params.get("max_tokens", sampling_params.get("max_new_tokens"))
    if budget is None:
        budget = min(response_length, prompt_length + response_length - n_prompt)
    return max(1, min(int(budget), room))


def generation_config(params: SamplingParams, max_new_tokens: int, eos_ids: list[int], pad_id: int):
    """A complete GenerationConfig (the model's own defaults, e.g. top_k=50, must not leak in)."""
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        do_sample=not params.greedy,
        eos_token_id=[] if params.ignore_eos else list(eos_ids),  # None would fall back to the model default
        pad_token_id=pad_id,
        repetition_penalty=params.repetition_penalty,
        return_dict_in_generate=True,
        output_logits=True,
    )
    if params.greedy:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
    return GenerationConfig(**kwargs)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts into (input_ids_B_P, attention_mask_B_P)."""
    width = max(len(p) for p in prompts)
    input_ids_B_P = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask_B_P = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        input_ids_B_P[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask_B_P[i, width - len(prompt) :] = 1
    return input_ids_B_P, attention_mask_B_P


def token_log_probs(logits_B_S_V: torch.Tensor, tokens_B_S: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature) at the sampled tokens: verl's actor definition of a rollout log-prob
    (vLLM's `processed_logprobs`), without top-k/top-p masks. Greedy (temperature <= 0) uses temperature 1.

    Shape: (B, S, V), (B, S) -> (B, S), fp32.
    """
    scale = temperature if temperature > 0 else 1.0
    log_probs_B_S_V = torch.log_softmax(logits_B_S_V.float() / scale, dim=-1)
    return log_probs_B_S_V.gather(-1, tokens_B_S.unsqueeze(-1)).squeeze(-1)


def response_length(tokens: list[int], eos_ids: list[int], max_tokens: int, ignore_eos: bool) -> int:
    """How many generated tokens a request keeps: up to and including its first EOS, at most max_tokens."""
    tokens = tokens[:max_tokens]
    if not ignore_eos:
        for i, token in enumerate(tokens):
            if token in eos_ids:
                return i + 1
    return len(tokens)


@torch.no_grad()
def generate_batch(
    model: PreTrainedModel,
    prompts: list[list[int]],
    max_tokens: list[int],
    params: SamplingParams,
    eos_ids: list[int],
    pad_id: int,
    extra_inputs: dict | None = None,
) -> list[tuple[list[int], list[float]]]:
    """Sample continuations of B prompts in one left-padded `generate`; per request (token_ids, log_probs).

    token_ids end at the first EOS (included) or at the request's own max_tokens; log_probs hold one value per
    kept token. Padding does not change a request's result beyond float rounding: positions come from the
    attention mask. `extra_inputs` (e.g. pixel_values) go to `generate` unchanged.
    """
    input_ids_B_P, attention_mask_B_P = left_pad(prompts, pad_id)
    config = generation_config(params, max(max_tokens), eos_ids, pad_id)
    if params.seed is not None:
        torch.manual_seed(int(params.seed))
    out = model.generate(
        input_ids=input_ids_B_P, attention_mask=attention_mask_B_P, generation_config=config, **(extra_inputs or {})
    )
    tokens_B_S = out.sequences[:, input_ids_B_P.shape[1] :]
    logits_B_S_V = torch.stack(out.logits, dim=1)
    log_probs_B_S = token_log_probs(logits_B_S_V, tokens_B_S, params.temperature)
    results = []
    for i, budget in enumerate(max_tokens):
        row = tokens_B_S[i].tolist()
        n = response_length(row, eos_ids, budget, params.ignore_eos)
        results.append((row[:n], log_probs_B_S[i, :n].tolist()))
    return results
