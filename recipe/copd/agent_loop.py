"""verl's single-turn agent loop with a reproducible per-sample seed (``rollout.full_determinism=true``).

verl's loop hands every sample of a prompt the same sampling parameters, and under ``full_determinism`` a
request id made of a per-prompt priority, so the n samples of a prompt cannot be told apart by the server and a
per-request seed would make them identical. This loop adds ``seed`` = hash(rollout.seed, uid, session) to each
sample's sampling parameters: with the trainer's deterministic uids (``recipe.copd.trainer.stable_uids``) a
sample's randomness no longer depends on when it reached the server, so a resumed run draws the same samples as
an uninterrupted one. Servers that honour a per-request seed (vLLM, verl_patches' ``hf``) then sample
reproducibly. Without ``full_determinism`` it is verl's loop unchanged.

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
        return await super().run(sampling_params, **kwargs)


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
