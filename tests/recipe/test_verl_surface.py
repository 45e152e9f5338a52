"""Every verl attribute the recipe relies on beyond verl's documented entry points exists, with the parameters the
recipe passes: a verl bump that renames or reshapes one fails here, in CI, not in the middle of a run.

The recipe subclasses verl's V1 trainer and calls its per-batch methods (private by name), builds worker groups,
rollout servers and checkpoint engines by hand, and wraps the actor worker's forward. Each entry below is
(object, attribute, parameters the recipe passes by name or position).
"""

import inspect

import pytest

pytest.importorskip("verl")

import verl_patches  # noqa: E402

verl_patches.apply_all()

from verl.checkpoint_engine import CheckpointEngineManager  # noqa: E402
from verl.experimental.reward_loop import RewardLoopManager  # noqa: E402
from verl.single_controller.ray import RayWorkerGroup, ResourcePoolManager  # noqa: E402
from verl.single_controller.ray.base import create_colocated_worker_cls  # noqa: E402
from verl.trainer.ppo.v1 import AgentLoopManagerTQ  # noqa: E402
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync  # noqa: E402
from verl.workers.engine_workers import ActorRolloutRefWorker  # noqa: E402
from verl.workers.rollout.llm_server import LLMServerManager  # noqa: E402
from verl.workers.rollout.replica import get_rollout_replica_class  # noqa: E402

# (owner, attribute, parameter names the recipe passes; positional ones listed in order)
CALLED = [
    # the V1 trainer's per-batch methods, called on each BranchTrainer (recipe/copd/trainer.py, branch.py)
    (PPOTrainerSync, "_init_tokenizer", []),
    (PPOTrainerSync, "_init_dump_executor", []),
    (PPOTrainerSync, "_shutdown_dump_executor", []),
    (PPOTrainerSync, "_init_dataloader", []),
    (PPOTrainerSync, "_next_train_batch", []),
    (PPOTrainerSync, "_submit_batch_to_rollout", ["batch"]),
    (PPOTrainerSync, "_balance_batch", ["batch", "metrics"]),
    (PPOTrainerSync, "_compute_old_log_prob", ["batch", "metrics"]),
    (PPOTrainerSync, "_update_actor", ["batch", "metrics"]),
    (PPOTrainerSync, "_compute_metrics", ["batch", "metrics", "timing_raw", "global_steps", "epoch"]),
    (PPOTrainerSync, "_validate", []),
    # ... and the ones CoPDTrainer overrides: verl's fit() calls them with these arguments
    (PPOTrainerSync, "_setup", []),
    (PPOTrainerSync, "step", ["metrics", "timing_raw"]),
    (PPOTrainerSync, "fit", ["agent_loop_manager"]),
    (PPOTrainerSync, "_save_checkpoint", []),
    (PPOTrainerSync, "_load_checkpoint", []),
    (PPOTrainerSync, "on_init_end", []),
    (PPOTrainerSync, "on_sample_end", []),
    (PPOTrainerSync, "on_step_end", []),
    # components built by recipe/copd/setup.py
    (ResourcePoolManager, "__init__", ["resource_pool_spec", "mapping"]),
    (ResourcePoolManager, "create_resource_pool", []),
    (ResourcePoolManager, "get_resource_pool", ["role"]),  # positional
    (RayWorkerGroup, "__init__", ["resource_pool", "ray_cls_with_init", "device_name"]),
    (RayWorkerGroup, "spawn", ["prefix_set"]),
    (RewardLoopManager, "__init__", ["config", "rm_resource_pool"]),
    (LLMServerManager, "create", ["config", "worker_group", "rollout_resource_pool"]),
    (LLMServerManager, "get_replicas", []),
    (LLMServerManager, "get_client", []),
    (CheckpointEngineManager, "__init__", ["config", "actor_wg", "replicas"]),
    (CheckpointEngineManager, "update_weights", ["global_steps"]),
    (CheckpointEngineManager, "sleep_replicas", []),
    (AgentLoopManagerTQ, "create", ["config", "llm_client", "teacher_client", "reward_loop_worker_handles"]),
]


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]


@pytest.mark.parametrize(("owner", "attr", "params"), CALLED, ids=[f"{o.__name__}.{a}" for o, a, _ in CALLED])
def test_called_attribute_exists_with_parameters(owner, attr, params):
    assert hasattr(owner, attr), f"verl's {owner.__name__} has no {attr}: update the recipe for this verl version"
    have = _params(getattr(owner, attr))
    takes_kwargs = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(getattr(owner, attr)).parameters.values()
    )
    missing = [p for p in params if p not in have and not takes_kwargs]
    assert not missing, f"{owner.__name__}.{attr}{tuple(have)} lacks {missing}, which the recipe passes"


def test_free_functions_take_what_the_recipe_passes():
    assert {"class_dict"} <= set(_params(create_colocated_worker_cls))
    assert _params(get_rollout_replica_class)[1] == "disaggregation_enabled"  # the name is passed positionally


# attributes verl's own methods read on a BranchTrainer, which recipe/copd/branch.py::BranchTrainer.attach sets
TRAINER_ATTRIBUTES = [
    "actor_rollout_wg", "ref_policy_wg", "ref_in_actor", "reward_loop_manager", "replay_buffer",
    "resource_pool_manager", "checkpoint_manager", "llm_server_manager", "agent_loop_manager",
    "train_dataloader", "teacher_model_manager", "distillation_config",
]  # fmt: skip


def test_handles_that_name_a_dead_actor_exist():
    """recipe/copd/runner.py::actor_roles reads these to name a dead actor's branch and role."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopManager
    from verl.workers.rollout.replica import RolloutReplica

    assert isinstance(RayWorkerGroup.workers, property)
    assert "self.servers" in inspect.getsource(RolloutReplica)
    assert "agent_loop_workers" in inspect.getsource(AgentLoopManager) + inspect.getsource(AgentLoopManagerTQ)
    assert "reward_loop_worker_handles" in inspect.getsource(RewardLoopManager)


@pytest.mark.parametrize("attr", TRAINER_ATTRIBUTES)
def test_trainer_attributes_the_recipe_sets_are_the_ones_verl_reads(attr):
    from verl.trainer.ppo.v1 import trainer_base

    source = inspect.getsource(trainer_base)
    assert f"self.{attr}" in source, f"verl's V1 trainer no longer reads self.{attr}: update BranchTrainer.attach"


def test_replay_buffer_sample_and_worker_internals():
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
    from verl.workers import engine_workers
    from verl.workers.engine.fsdp import transformer_impl

    assert ["global_steps", "partition_id", "batch_size"] == _params(ReplayBuffer.sample)
    # recipe/copd/worker.py swaps the actor's loss_fn around infer_batch; the export and load_hf read its engine
    assert "self.actor =" in inspect.getsource(ActorRolloutRefWorker)
    assert "data" in _params(engine_workers.TrainingWorker.infer_batch)
    assert "self.loss_fn = " in inspect.getsource(engine_workers.TrainingWorker)
    engine = transformer_impl.FSDPEngine
    for attr in ("get_per_tensor_param", "eval_mode", "module"):
        assert hasattr(engine, attr) or f"self.{attr}" in inspect.getsource(engine), attr
