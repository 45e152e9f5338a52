"""Weight sync through verl's own managers, with two branches colocated in one Ray job (the CoPD layout).

A driver builds the worker groups itself (not main_ppo): two ActorRolloutRefWorker roles ("b0", "b1") in one
colocated process, each with its own LLMServerManager (own hf server) and CheckpointEngineManager. After
`update_actor` on b0 and b0's weight sync, b0's rollout generates with the new weights (log-probs equal a plain
forward with the actor's weights) while b1's rollout keeps the old ones: no name collision, no cross-talk.
"""

import asyncio
import copy
import os
import sys

import pytest
import torch

import verl_patches
from copd.tiny.qwen3 import save_tiny

verl_patches.apply_all()

pytestmark = pytest.mark.slow

BATCH, PROMPT, RESPONSE = 4, 6, 4


def fetch_actor_weights(actor, role_key):
    """Inside the worker process: the role's full HF-named weights (what a weight sync sends)."""
    params, _ = actor.worker_dict[role_key].actor.engine.get_per_tensor_param()
    return {name: tensor.detach().cpu().clone() for name, tensor in params}


def forward_log_probs(weights, model_path, prompt, response):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="sdpa").eval()
    model.load_state_dict(weights, strict=False)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def generate(client, prompt):
    sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
    return asyncio.run(client.generate("req", prompt_ids=prompt, sampling_params=sampling))


def ppo_update(wg):
    """One update_actor call on a fixed random batch (the V1 worker API: no-padding TensorDicts)."""
    from verl import DataProto
    from verl.trainer.ppo import core_algos
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

    torch.manual_seed(0)
    prompts, responses = torch.randint(3, 90, (BATCH, PROMPT)), torch.randint(3, 90, (BATCH, RESPONSE))
    attention_mask = torch.ones(BATCH, PROMPT + RESPONSE, dtype=torch.long)
    response_mask = torch.ones(BATCH, RESPONSE, dtype=torch.long)
    rewards = torch.zeros(BATCH, RESPONSE)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    advantages, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=rewards, response_mask=response_mask, index=torch.zeros(BATCH, dtype=torch.long).numpy()
    )
    batch = DataProto.from_dict(
        tensors=dict(
            prompts=prompts,
            responses=responses,
            input_ids=torch.cat([prompts, responses], 1),
            attention_mask=attention_mask,
            position_ids=torch.arange(PROMPT + RESPONSE).expand(BATCH, -1),
            response_mask=response_mask,
        ),
        meta_info={"temperature": 1.0},
    )

    def to_td(data, **meta):
        td = left_right_2_no_padding(data.to_tensordict())
        tu.assign_non_tensor(td, **meta)
        return td

    out = wg.compute_log_prob(to_td(batch, calculate_entropy=False, compute_loss=False))
    old = no_padding_2_padding(tu.get(out, "log_probs"), to_td(batch)).float()
    full = copy.deepcopy(batch).union(DataProto.from_dict(tensors=dict(old_log_probs=old, advantages=advantages)))
    wg.update_actor(
        to_td(
            full,
            calculate_entropy=False,
            distillation_use_topk=False,
            distillation_only=False,
            global_batch_size=BATCH,
            mini_batch_size=BATCH,
            epochs=1,
            seed=1,
            dataloader_kwargs={"shuffle": False},
            compute_loss=True,
        )
    )


def test_two_colocated_branches_sync_weights_independently(tmp_path):
    import ray
    import verl
    from hydra import compose, initialize_config_dir
    from verl.checkpoint_engine.base import CheckpointEngineManager
    from verl.single_controller.ray.base import (
        RayClassWithInitArgs,
        RayResourcePool,
        RayWorkerGroup,
        create_colocated_worker_cls,
    )
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl.workers.rollout.llm_server import LLMServerManager

    model_path = str(save_tiny(tmp_path / "model", hidden_size=32, num_layers=2))
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(
            config_name="ppo_trainer",
            overrides=[
                *verl_patches.cpu_overrides(1),
                f"actor_rollout_ref.model.path={model_path}",
                f"data.max_prompt_length={PROMPT + 8}",
                f"data.max_response_length={RESPONSE}",
                "actor_rollout_ref.actor.optim.lr=0.05",
                f"actor_rollout_ref.actor.ppo_mini_batch_size={BATCH}",
                f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={BATCH}",
                f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={BATCH}",
                "actor_rollout_ref.rollout.n=1",
            ],
        )
    ray.init(address="local", num_cpus=16, include_dashboard=False, runtime_env={"env_vars": verl_patches.worker_env()})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    try:
        role = RayClassWithInitArgs(
            cls=ray.remote(ActorRolloutRefWorker), config=cfg.actor_rollout_ref, role="actor_rollout"
        )
        fused = create_colocated_worker_cls(class_dict={"b0": role, "b1": role})
        pool = RayResourcePool(process_on_nodes=[1], max_colocate_count=3)
        wgs = RayWorkerGroup(resource_pool=pool, ray_cls_with_init=fused, device_name="cpu").spawn({"b0", "b1"})
        ckpt_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout.checkpoint_engine)
        servers, syncs, clients = {}, {}, {}
        for key in ("b0", "b1"):
            wgs[key].init_model()
            servers[key] = LLMServerManager.create(config=cfg, worker_group=wgs[key])
            syncs[key] = CheckpointEngineManager(
                config=ckpt_cfg, actor_wg=wgs[key], replicas=servers[key].get_replicas()
            )
            syncs[key].sleep_replicas()
            syncs[key].update_weights(0)
            clients[key] = servers[key].get_client()
        addresses = servers["b0"].server_addresses + servers["b1"].server_addresses
        assert len(set(addresses)) == 2 and all(a.startswith("hf://") for a in addresses)

        worker = wgs["b0"].workers[0]
        initial = ray.get(worker.__ray_call__.remote(fetch_actor_weights, "b0"))
        prompt = [98, 87, 85, 71, 84, 1]
        for key in ("b0", "b1"):
            out = generate(clients[key], prompt)
            expected = forward_log_probs(initial, model_path, prompt, out.token_ids)
            torch.testing.assert_close(torch.tensor(out.log_probs), expected, atol=1e-5, rtol=0)

        ppo_update(wgs["b0"])
        syncs["b0"].sleep_replicas()
        syncs["b0"].update_weights(1)
        updated = ray.get(worker.__ray_call__.remote(fetch_actor_weights, "b0"))
        assert max((updated[k] - initial[k]).abs().max().item() for k in initial) > 1e-3

        out = generate(clients["b0"], prompt)
        assert out.extra_fields["global_steps"] == 1
        new = forward_log_probs(updated, model_path, prompt, out.token_ids)
        torch.testing.assert_close(torch.tensor(out.log_probs), new, atol=1e-5, rtol=0)
        old = forward_log_probs(initial, model_path, prompt, out.token_ids)
        assert (new - old).abs().max().item() > 1e-3  # the rollout really uses the new weights

        out = generate(clients["b1"], prompt)  # b1 was not synced: still the initial weights
        expected = forward_log_probs(initial, model_path, prompt, out.token_ids)
        torch.testing.assert_close(torch.tensor(out.log_probs), expected, atol=1e-5, rtol=0)
    finally:
        ray.shutdown()
