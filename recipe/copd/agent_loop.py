"""verl's single-turn agent loop with a reproducible per-sample seed (``rollout.full_determinism=true``).

verl's loop hands every sample of a prompt the same sampling parameters, and under ``full_determinism`` a
request id made of a per-prompt priority, so the n samples of a prompt cannot be told apart by the server and a
per-request seed would make them identical. This loop adds ``seed`` = hash(rollout.seed, uid, session) to each
sample's sampling parameters: with the trainer's deterministic uids (``recipe.copd.trainer.stable_uids``) a
sample's randomness no longer depends on when it reached the server, so a resumed run draws the same samples as
an uninterrupted one. Servers that honour a per-request seed (vLLM, verl_patches' ``hf``) then sample
reproducibly. Without ``full_determinism`` it is verl's loop unchanged.

For a vision-language model it also ends a response at its first media placeholder token (``<|image_pad|>``,
``<|video_pad|>``, ``<|vision_start|>`` ...): verl's M-RoPE position ids count every placeholder in prompt +
response as media and fail on one that has no image or video behind it (``get_rope_index``: "'NoneType' object
is not an iterator"), which drops the sample and pads the batch. A sampled policy can emit one (the rehearsal's
random tiny model does). The placeholder is replaced by EOS and the rest dropped; the trainer recomputes the
log-probs of the sequence it trains on, so only that one token was not sampled by the policy.

Registered as ``copd_single_turn`` through ``recipe/copd/config/agent_loops.yaml`` (verl's
``rollout.agent.agent_loop_config_path``; the recipe fills it in when unset).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from verl.experimental.agent_loop.agent_loop import register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

NAME = "copd_single_turn"
#: Tokens verl's M-RoPE reads as media placeholders (Qwen2/2.5/3-VL names); a response ends before the first.
MEDIA_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def media_token_ids(tokenizer) -> set[int]:
    """The ids of ``MEDIA_TOKENS`` the tokenizer has (none for a text-only tokenizer)."""
    vocab = tokenizer.get_vocab()
    return {vocab[t] for t in MEDIA_TOKENS if t in vocab}


def media_cut(response_ids: list[int], media_ids: set[int]) -> int | None:
    """Index of the first media placeholder in a response, or None."""
    return next((i for i, t in enumerate(response_ids) if t in media_ids), None)


def sample_seed(base: int, uid: str, session: int) -> int:
    """A 63-bit seed from (base seed, prompt uid, sample index), the same in every process and run."""
    digest = hashlib.sha256(f"{base}/{uid}/{session}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@register(NAME)
class CoPDSingleTurnAgentLoop(SingleTurnAgentLoop):
    async def run(self, sampling_params: dict[str, Any], **kwargs):
        sampled = float(sampling_params.get("temperature", 1.0) or 0.0) > 0  # greedy needs no seed
        if sampled and getattr(self.rollout_config, "full_determinism", False) and "uid" in kwargs:
            base = int(getattr(self.rollout_config, "seed", 0) or 0)
            seed = sample_seed(base, str(kwargs["uid"]), int(kwargs.get("session_id", 0)))
            sampling_params = {**sampling_params, "seed": seed}
        output = await super().run(sampling_params, **kwargs)
        if self.processor is not None:
            if not hasattr(self, "_media_ids"):
                self._media_ids = media_token_ids(self.tokenizer)
            cut = media_cut(output.response_ids, self._media_ids)
            if cut is not None:  # end the response there: the placeholder becomes EOS (never an empty response)
                output.response_ids = [*output.response_ids[:cut], self.tokenizer.eos_token_id]
                output.response_mask = output.response_mask[: cut + 1]
                if output.response_logprobs is not None:
                    output.response_logprobs = output.response_logprobs[: cut + 1]
        return output


AGENT_LOOPS_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "agent_loops.yaml")


def register_agent_loop(config: DictConfig) -> None:
    """Point verl's agent-loop registry at CoPD's loops (``copd_single_turn``) unless the user has their own file."""
    agent = config.actor_rollout_ref.rollout.agent
    if agent.get("agent_loop_config_path"):
        if agent.get("default_agent_loop") == NAME:
            names = [str(c.get("name")) for c in OmegaConf.load(agent.agent_loop_config_path)]
            if NAME not in names:
                raise ValueError(
                    f"default_agent_loop={NAME} is not in {agent.agent_loop_config_path}: add the entry of "
                    f"{AGENT_LOOPS_YAML} to it, or set actor_rollout_ref.rollout.agent.default_agent_loop"
                )
        return
    with open_dict(config):
        agent.agent_loop_config_path = AGENT_LOOPS_YAML


class _InlineRewardWorker:
    """verl's ``RewardLoopWorker`` in the agent-loop worker's own process, behind the one method the agent loop
    calls on a reward worker handle (``await handle.compute_score.remote(data)``).

    verl scores every sample with a Ray call to a reward worker carrying a pickled one-row ``DataProto``: on a CPU
    box that round trip, not the rule itself, is most of the reward's cost. The scorer is verl's own class and
    reward manager, so the scores are the same; only the hop is gone. Not for reward models (they need the
    reward router), and off by default on accelerators (``copd.run.inline_reward``), where the reward workers keep
    the scoring off the agent loop's event loop."""

    def __init__(self, config: DictConfig):
        from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

        self.worker = RewardLoopWorker(config, reward_router_address=None)
        self.compute_score = _Remote(self.worker.compute_score)


class _Remote:
    def __init__(self, fn):
        self.remote = fn  # an ``async def``: awaiting its call is what awaiting an ObjectRef is to verl


def inline_reward_worker_class():
    """``AgentLoopWorkerTQ`` (verl's V1 agent-loop worker, as a Ray actor) scoring through ``_InlineRewardWorker``
    when it is given reward worker handles (the reward is on)."""
    import ray
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ

    class InlineRewardAgentLoopWorkerTQ(AgentLoopWorkerTQ.__ray_actor_class__):
        def __init__(self, config, llm_client, teacher_client=None, reward_loop_worker_handles=None):
            if reward_loop_worker_handles is not None:
                reward_loop_worker_handles = [_InlineRewardWorker(config)]
            super().__init__(config, llm_client, teacher_client, reward_loop_worker_handles)

    return ray.remote(InlineRewardAgentLoopWorkerTQ)


def inline_reward_enabled(setting, config: DictConfig, on_cpu: bool) -> bool:
    """``copd.run.inline_reward``: true, false, or "auto" (on for a CPU run whose reward needs no reward model)."""
    if config.reward.reward_model.get("enable", False):
        if setting is True:
            raise ValueError("copd.run.inline_reward=true needs a rule reward: reward.reward_model.enable is true")
        return False
    return on_cpu if setting == "auto" else bool(setting)
