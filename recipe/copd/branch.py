"""One CoPD branch seen through verl's V1 trainer.

A ``BranchTrainer`` is a verl ``PPOTrainerSync`` whose components (worker group, rollout servers,
checkpoint engine, agent loop) are built by the CoPD driver and injected, so verl's own per-batch
methods (``_next_train_batch``, ``_submit_batch_to_rollout``, ``_balance_batch``,
``_compute_old_log_prob``, ``_update_actor``, ``_compute_metrics``, ``_validate``) run unchanged on
this branch. The driver never calls its ``init()`` or ``fit()``.
"""

from __future__ import annotations

import copy
import uuid

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict
from torchdata.stateful_dataloader import StatefulDataLoader
from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
from verl.trainer.ppo.utils import create_rl_dataset, create_rl_sampler
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.utils.dataset.rl_dataset import collate_fn

from copd.config import BranchConfig
from recipe.copd.batches import worker_fields
from recipe.copd.minibatch import cross_fractions


def branch_config(base: DictConfig, spec: BranchConfig, model_path: str) -> DictConfig:
    """The verl config of one branch: the shared config with this branch's data, model and names."""
    cfg = copy.deepcopy(base)
    with open_dict(cfg):
        cfg.data.train_files = list(spec.train_files) or list(spec.val_files)
        cfg.data.val_files = list(spec.val_files) or list(spec.train_files)
        cfg.actor_rollout_ref.model.path = spec.init_path or model_path
        cfg.trainer.experiment_name = f"{base.trainer.experiment_name}/branch_{spec.name}"
    return cfg


class BranchTrainer(PPOTrainerSync):
    """verl's sync V1 trainer restricted to one branch; components are injected by the driver."""

    def __init__(self, config: DictConfig, spec: BranchConfig):
        super().__init__(config)
        self.spec = spec
        self.name = spec.name
        self.has_data = bool(spec.train_files)
        self.cross_streams: dict[str, PromptStream] = {}

    def init_data(self, tokenizer, processor) -> None:
        """Tokenizer and dataloaders (verl's own), for a branch that has data of its own."""
        self.tokenizer, self.processor = tokenizer, processor
        self._init_dump_executor()  # verl's _validate dumps generations through it (trainer.validation_data_dir)
        if self.has_data or self.spec.val_files:
            self._init_dataloader()

    def on_step_end(self):  # the driver syncs weights itself (see CoPDTrainer._rollout)
        return

    def attach(self, worker_group, reward_loop_manager, replay_buffer, resource_pool_manager) -> None:
        """Give verl's per-batch methods the components the driver built, under the attribute names they read.

        The branch's worker group is also its reference policy (``ref_in_actor``); its rollout servers and
        checkpoint engine come later with ``attach_rollout`` (a frozen teacher has none).
        """
        self.actor_rollout_wg = self.ref_policy_wg = worker_group
        self.ref_in_actor = True
        self.reward_loop_manager = reward_loop_manager
        self.replay_buffer = replay_buffer
        self.resource_pool_manager = resource_pool_manager
        self.teacher_model_manager = self.distillation_config = self.checkpoint_manager = None

    def attach_rollout(self, llm_server_manager, checkpoint_manager) -> None:
        self.llm_server_manager, self.checkpoint_manager = llm_server_manager, checkpoint_manager

    def dp_size(self) -> int:
        """The actor's data-parallel size, as verl's ``_balance_batch`` reads it."""
        wg = self.actor_rollout_wg
        if "actor" not in wg._dispatch_info:
            wg._dispatch_info["actor"] = wg._query_dispatch_info("actor")
        return max(wg._dispatch_info["actor"]) + 1

    def _balance_batch(self, batch, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        """verl's balance across data-parallel ranks; with one rank only its padding to whole mini-batches.

        With one rank verl's Karmarkar-Karp partition is every row in its original order (a no-op reorder) at
        the cost of a Python heap pass over the rows on the driver's critical path, twice a step per branch; its
        balance metrics describe one partition. The padding (``upsample_batch_to_divisible_size``) is kept."""
        if self.dp_size() > 1:
            return super()._balance_batch(batch, metrics, logging_prefix=logging_prefix, keep_minibatch=keep_minibatch)
        multiple = self._get_required_batch_multiple(1)
        return upsample_batch_to_divisible_size(batch, multiple, self.tokenizer.eos_token_id)

    def update(self, batch, n_prompts: int, metrics: dict, cross_B=None):
        """verl's actor update of the combined native + cross rows, with the PPO mini-batch scaled by
        ``n_prompts / data.train_batch_size``, so the combined update takes as many optimizer steps as a Phase I
        update (Algorithm 1, line 16: "combine batches; update").

        With ``cross_B`` (bool per row, in ``batch`` order) it logs ``copd/cross_fraction_mb_min`` / ``_max``: the
        smallest and largest share of cross rows over the update's mini-batches, split as verl splits them.
        """
        cfg = self.config.actor_rollout_ref.actor
        original = cfg.ppo_mini_batch_size
        scale = n_prompts / self.config.data.train_batch_size
        mini_batch = max(1, round(original * scale))
        if cross_B is not None:
            rows = mini_batch * self.config.actor_rollout_ref.rollout.n
            seed = cfg.get("data_loader_seed", 42) if cfg.get("shuffle", False) else None
            fractions = cross_fractions(list(cross_B), self.dp_size(), rows, seed)
            metrics.update(
                {
                    "copd/cross_fraction_mb_min": min(fractions),
                    "copd/cross_fraction_mb_max": max(fractions),
                    "copd/n_minibatches": len(fractions),
                }
            )
        with open_dict(cfg):
            cfg.ppo_mini_batch_size = mini_batch
        try:
            return self._update_actor(batch, metrics)
        finally:
            with open_dict(cfg):
                cfg.ppo_mini_batch_size = original

    def on_sample_end(self):
        return

    def _compute_old_log_prob(self, batch, metrics):
        with worker_fields(batch):  # the worker fetches the fields it reads, not the dataset's metadata
            return super()._compute_old_log_prob(batch, metrics)

    def _update_actor(self, batch, metrics):
        with worker_fields(batch):
            return super()._update_actor(batch, metrics)


class PromptStream:
    """An endless, resumable stream of prompt batches from a dataset (a cross batch's prompts).

    Each student owns one stream per teacher, so cross sampling never disturbs the teacher's own
    (native) dataloader position.
    """

    def __init__(self, files: list[str], data_config: DictConfig, tokenizer, processor, batch_size: int, seed: int):
        dataset = create_rl_dataset(files, data_config, tokenizer, processor, is_train=True)
        if len(dataset) < batch_size:
            why = ""
            if data_config.get("filter_overlong_prompts", False):  # verl dropped the prompts over the limit
                why = (f" after verl dropped the prompts over data.max_prompt_length={data_config.max_prompt_length} "
                       f"tokens (image and video tokens count); raise the limit or add data")  # fmt: skip
            raise ValueError(
                f"cross dataset {files} has {len(dataset)} prompts, fewer than the batch {batch_size}{why}"
            )
        sampler_cfg = OmegaConf.create({"shuffle": data_config.get("shuffle", True), "seed": seed})
        self.loader = StatefulDataLoader(
            dataset=dataset,
            batch_size=batch_size,
            num_workers=0,
            drop_last=True,
            collate_fn=collate_fn,
            sampler=create_rl_sampler(sampler_cfg, dataset),
        )
        self._it = None

    def next_batch(self, global_steps: int):
        """The next batch as verl's ``_fetch_one_gen_batch`` builds it (fresh uids, global step)."""
        try:
            if self._it is None:
                self._it = iter(self.loader)
            batch_dict = next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            batch_dict = next(self._it)
        batch_dict["uid"] = np.array([str(uuid.uuid4()) for _ in range(len(batch_dict["raw_prompt"]))], dtype=object)
        batch = tu.get_tensordict(batch_dict)
        tu.assign_non_tensor_data(batch, "global_steps", global_steps)
        return batch

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._it = None
