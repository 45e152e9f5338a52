"""The CoPD driver on verl's V1 trainer (Algorithm 1 of the paper).

How CoPD differs from GRPO and from plain on-policy distillation:
- GRPO trains one policy on one reward. CoPD trains K branches in parallel, each on its own data and
  reward (Phase I, S_RL steps), then, for S_OPD steps (Phase II), each branch also samples on a teacher
  branch's prompts and gets the token advantage beta_k * (log pi_j - log pi_k) (Eq. 8) on those cross
  rows, in the same update as its native GRPO rows. Cycles repeat N times; the branches are merged.
- Plain OPD distils a frozen, converged teacher. In CoPD the teacher is another branch with its
  current weights: teachers and students co-evolve, which keeps their top-k overlap high.

The driver reuses verl's ``fit()`` loop; it overrides ``_setup`` (K worker groups, K rollout server
sets, one shared reward loop), ``step`` (the phases), checkpointing, validation and metrics. Each
branch is a ``BranchTrainer`` (verl's sync trainer with injected components), so the per-batch work is
verl's own code. Advantages are computed only by ``copd.advantages.CoPDAdvantageEstimator``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import transfer_queue as tq
from omegaconf import DictConfig
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.utils.debug import marked_timer
from verl.workers.utils.padding import response_from_nested, response_to_nested

from copd.advantages import register_copd_adv_est, teacher_looks_uniform
from copd.config import CoPDConfig
from copd.schedule import Phase
from recipe.copd import checkpoint as ckpt
from recipe.copd.batches import (
    branch_timer,
    key_order,
    masked_mean,
    sampled_sym_kl,
    stable_uids,
    sub_batch,
    worker_fields,
)
from recipe.copd.branch import BranchTrainer, PromptStream, branch_config
from recipe.copd.finish import export_branches, merge_branches
from recipe.copd.metrics import MetricsSink, ProgressLog, progress_line
from recipe.copd.minibatch import interleaved_order
from recipe.copd.preflight import bypass_old_log_prob
from recipe.copd.rollout import BranchRollout, uid_of_key
from recipe.copd.run_config import RunConfig
from recipe.copd.setup import build_branch_components
from recipe.copd.worker import PROBE_KEY, TOPK_KEY

logger = logging.getLogger(__name__)


class CoPDTrainer(PPOTrainerSync):
    """K co-evolving branches, one verl job. See the module docstring."""

    def __init__(self, config: DictConfig, copd_config: CoPDConfig, run: RunConfig | None = None):
        super().__init__(config)
        self.copd, self.run = copd_config, run or RunConfig()
        self.schedule = copd_config.schedule()
        register_copd_adv_est()  # discoverable in verl's registry as "copd"
        self.estimator = copd_config.estimator(config.algorithm.get("norm_adv_by_std_in_grpo", True))
        model_path = config.actor_rollout_ref.model.path
        self.branches: dict[str, BranchTrainer] = {
            spec.name: BranchTrainer(branch_config(config, spec, model_path), spec) for spec in copd_config.branches
        }
        self.teachers = {name: copd_config.teachers_of(name) for name in self.branches}
        self.out_dir = config.trainer.default_local_dir
        self.sink = MetricsSink(os.path.join(self.out_dir, "metrics.jsonl"))
        self.progress = ProgressLog(os.path.join(self.out_dir, "progress.log"))
        self._last_batches: dict[str, KVBatchMeta] = {}

    # ------------------------------------------------------------------ setup
    def _setup(self):
        self._init_tokenizer()
        self._init_dump_executor()
        self.copd_seed = int(self.config.data.get("seed") or 0)
        self.cross_batch_size = self.run.cross_batch_size or int(self.config.data.train_batch_size)
        for branch in self.branches.values():
            branch.init_data(self.tokenizer, self.processor)
        for student, teacher in self.copd.pairs:  # one prompt stream of the teacher's data per (student, teacher)
            files = list(self.branches[teacher].spec.train_files)
            seed = self.copd_seed + 7919 * (1 + list(self.branches).index(student))
            self.branches[student].cross_streams[teacher] = PromptStream(
                files, self.config.data, self.tokenizer, self.processor, self.cross_batch_size, seed
            )
        self.total_training_steps = self.schedule.total_steps
        self.steps_per_epoch = max(1, self.total_training_steps)
        # worker groups, rollout servers, checkpoint engines (attached to each branch), one shared reward loop
        self.resource_pool_manager, self.reward_loop_manager = build_branch_components(self)
        self.teacher_model_manager = None
        self.vocab_size = len(self.tokenizer)
        self._load_checkpoint()

    def on_init_end(self):
        return  # weights reach each branch's servers right before its rollout (see _rollout)

    def on_sample_end(self):
        return

    def on_step_end(self):
        return

    @property
    def trainable(self) -> list[BranchTrainer]:
        return [b for b in self.branches.values() if not b.spec.frozen]

    def fit(self, agent_loop_managers: dict):
        """verl's ``fit`` loop, then the HF export and the merge of the branches."""
        for name, manager in agent_loop_managers.items():
            self.branches[name].agent_loop_manager = manager
        self.agent_loop_manager = next(iter(agent_loop_managers.values()))
        super().fit(self.agent_loop_manager)
        for branch in self.branches.values():
            branch._shutdown_dump_executor()  # generations dumped by trainer.validation_data_dir are written
        if self.config.trainer.get("val_only", False):  # an evaluation (recipe.copd.eval): nothing to export
            return {"branches": {}, "merged": None, "val_only": True}
        return self.finish()

    # ------------------------------------------------------------------ one step (Algorithm 1)
    def step(self, metrics: dict, timing_raw: dict) -> KVBatchMeta:
        pos = self.schedule.current()
        opd = pos.phase == Phase.OPD
        probe = self.schedule.probe_due(self.copd.metrics_interval)
        t0 = time.time()
        for b in self.branches.values():
            b.global_steps = self.global_steps
        self._branch_timing = {b.name: {} for b in self.trainable}

        # 1. rollout: native batch (+ one cross batch per teacher in Phase II), each branch with its current weights
        together = self._rollouts_together()
        rollouts = (self._rollout_together if together else self._rollout_in_turn)(opd, timing_raw)
        # with disjoint worker groups (placement=split) the branches' passes and updates run at once, phase by phase
        concurrent = together and self.copd.placement == "split"

        def phase(name: str, fn, at_once: bool = concurrent) -> None:
            self._per_branch(name, fn, timing_raw, at_once)

        # 2. student log-probs (and top-k probe), on the student's own actor
        phase("old_log_prob", lambda b: self._student_log_probs(b, rollouts[b.name], probe, metrics))
        scored = {}  # 3. teachers score the students' tokens; all before any update
        phase(
            "teacher_log_prob",
            lambda b: scored.update({b.name: self._teacher_log_probs(b, rollouts[b.name], opd, probe, metrics)}),
        )
        overlaps = {tag: o for b in self.trainable for tag, o in scored[b.name].items()}  # branch order, not arrival
        # 4. advantages (GRPO + beta*delta, on the driver), 5. one combined update per branch
        phase("adv", lambda b: self._advantages(b, rollouts[b.name], metrics), at_once=False)

        def update(b: BranchTrainer) -> None:
            m, r = {}, rollouts[b.name]
            b.update(r.batch, r.n_prompts, metrics=m, cross_B=r.cross_B.tolist())
            metrics.update({f"branch_{b.name}/{k}": v for k, v in m.items()})

        phase("update_actor", update)
        self._last_batches = {name: r.batch for name, r in rollouts.items()}
        mean_overlap = float(np.mean(list(overlaps.values()))) if overlaps else None
        self.schedule.advance(overlap=mean_overlap if not opd else None)
        self.total_training_steps = self.global_steps + self.schedule.remaining_steps  # adaptive may end early
        metrics.update(
            {"copd/phase": pos.phase.value, "copd/cycle": pos.cycle, "copd/step_in_phase": pos.step_in_phase}
        )
        rewards = {b.name: metrics.get(f"branch_{b.name}/copd/reward_native_mean") for b in self.trainable}
        line = progress_line(self.global_steps, self.total_training_steps, pos, rewards, overlaps, time.time() - t0)
        self.progress.write(line)
        keys = [k for r in rollouts.values() for k in r.batch.keys]
        tags = [t for r in rollouts.values() for t in r.batch.tags]
        return KVBatchMeta(partition_id="train", keys=keys, tags=tags)

    def _per_branch(self, name: str, fn, timing_raw: dict, at_once: bool) -> None:
        """``fn(branch)`` for every trainable branch, timed as ``name`` (the step's total and each branch's own).
        ``at_once``: in one thread per branch (their worker groups are disjoint: verl's calls block on Ray, so they
        overlap); the step's time is then the phase's wall time and a branch's is its own call's."""
        if not at_once or len(self.trainable) < 2:
            for b in self.trainable:
                with branch_timer(name, timing_raw, self._branch_timing[b.name]):
                    fn(b)
            return

        def timed(b: BranchTrainer) -> None:
            start = time.perf_counter()
            fn(b)
            own = self._branch_timing[b.name]
            own[name] = own.get(name, 0.0) + time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(self.trainable), thread_name_prefix=f"copd-{name}") as pool:
            for future in [pool.submit(timed, b) for b in self.trainable]:
                future.result()  # the first branch's error, after every branch's call returned
        timing_raw[name] = timing_raw.get(name, 0.0) + time.perf_counter() - start

    def _rollouts_together(self) -> bool:
        """``copd.run.concurrent_rollouts``: auto generates all branches at once where their servers do not share
        device memory (``placement=split``) or hold their own weights (the ``hf`` rollout)."""
        setting = self.run.concurrent_rollouts
        if setting == "auto":
            rollout_name = self.config.actor_rollout_ref.rollout.name
            return len(self.trainable) > 1 and (self.copd.placement == "split" or rollout_name == "hf")
        return bool(setting) and len(self.trainable) > 1

    def _rollout_in_turn(self, opd: bool, timing_raw: dict) -> dict[str, BranchRollout]:
        """One branch after another: wake its servers with its weights, generate, sample, put them to sleep
        (colocated vLLM servers share the GPUs' memory)."""
        rollouts = {}
        for b in self.trainable:
            with branch_timer("weight_sync", timing_raw, self._branch_timing[b.name]):
                b.checkpoint_manager.update_weights(self.global_steps)
            with branch_timer("gen", timing_raw, self._branch_timing[b.name]):
                parts, teacher_of_uid, n_prompts = self._submit(b, opd)
                batch, _ = self.replay_buffer.sample(self.global_steps, partition_id="train", batch_size=n_prompts)
                rollouts[b.name] = self._collect(b, batch, parts, teacher_of_uid, n_prompts)
        return rollouts

    def _rollout_together(self, opd: bool, timing_raw: dict) -> dict[str, BranchRollout]:
        """Every branch's servers woken with its weights, every branch's prompts submitted, then one sample of the
        replay buffer split by prompt uid: the branches generate concurrently (each on its own servers). A branch's
        ``gen`` timing is its share of the common wall time."""
        for b in self.trainable:
            with branch_timer("weight_sync", timing_raw, self._branch_timing[b.name]):
                b.checkpoint_manager.update_weights(self.global_steps)
        before = timing_raw.get("gen", 0.0)
        with marked_timer("gen", timing_raw):
            submitted = {b.name: self._submit(b, opd) for b in self.trainable}
            total = sum(n for _, _, n in submitted.values())
            batch, _ = self.replay_buffer.sample(self.global_steps, partition_id="train", batch_size=total)
            branch_of_uid = {
                uid: name for name, (parts, _, _) in submitted.items() for part in parts for uid in part["uid"]
            }
            keys_of = {name: [] for name in submitted}
            for key in batch.keys:
                keys_of[branch_of_uid[uid_of_key(key)]].append(key)
            rollouts = {
                b.name: self._collect(b, sub_batch(batch, keys_of[b.name]), *submitted[b.name]) for b in self.trainable
            }
        share = (timing_raw["gen"] - before) / len(self.trainable)
        for b in self.trainable:
            self._branch_timing[b.name]["gen"] = self._branch_timing[b.name].get("gen", 0.0) + share
        return rollouts

    def _submit(self, b: BranchTrainer, opd: bool) -> tuple[list, dict[str, str], int]:
        """Send the branch's native batch and its cross batches to its agent loop (one batched rollout, on servers
        woken with the branch's current weights by the caller); returns (parts, teacher of each cross uid,
        prompts submitted)."""
        parts, teacher_of_uid = [], {}
        if b.has_data:
            parts.append(self._with_stable_uids(b._next_train_batch(), b.name, "native"))
        if opd:
            for teacher in self.teachers[b.name]:
                batch = b.cross_streams[teacher].next_batch(self.global_steps)
                batch = self._with_stable_uids(batch, b.name, f"cross:{teacher}")
                teacher_of_uid.update({uid: teacher for uid in batch["uid"]})
                parts.append(batch)
        if not parts:
            raise RuntimeError(f"branch {b.name} has neither data nor a teacher in this phase: nothing to train on")
        n_prompts = sum(b._submit_batch_to_rollout(part) for part in parts)
        return parts, teacher_of_uid, n_prompts

    def _collect(
        self, b: BranchTrainer, batch: KVBatchMeta, parts: list, teacher_of_uid: dict[str, str], n_prompts: int
    ) -> BranchRollout:
        """The branch's sampled rows in submission order (arrival-independent), its servers put to sleep, balanced
        and with native and cross rows mixed inside every PPO mini-batch."""
        rank = {uid: i for i, uid in enumerate(u for part in parts for u in part["uid"])}
        batch.reorder(sorted(range(len(batch)), key=lambda i: key_order(batch.keys[i], rank)))
        b.checkpoint_manager.sleep_replicas()  # free the rollout's memory for the next branch / training
        batch.extra_info["temperature"] = self.config.actor_rollout_ref.rollout.temperature
        batch = b._balance_batch(batch, metrics={})
        # native and cross rows mixed inside every PPO mini-batch (verl splits the rows in order)
        teacher_B = BranchRollout.from_batch(batch, teacher_of_uid, n_prompts).teacher_B
        batch.reorder(interleaved_order(teacher_B, b.dp_size()))
        return BranchRollout.from_batch(batch, teacher_of_uid, n_prompts)

    def _with_stable_uids(self, batch, branch: str, part: str):
        """Replace verl's random uuid4 uids with ones fixed by (seed, branch, step, part, row): a resumed run
        gives the same prompts the same uids, which seed their samples (``recipe.copd.agent_loop``)."""
        uids = stable_uids(self.copd_seed, branch, self.global_steps, part, len(batch))
        tu.assign_non_tensor_stack(batch, "uid", uids)
        return batch

    def _student_log_probs(self, b: BranchTrainer, rollout: BranchRollout, probe: bool, metrics: dict) -> None:
        """verl's own old-log-prob pass (plus the student side of the probe); keeps mask, rewards and log-probs."""
        batch = rollout.batch
        if probe:
            batch.extra_info.update({PROBE_KEY: "student", TOPK_KEY: self.copd.overlap_k})
            if bypass_old_log_prob(self.config):  # verl copies the rollout's log-probs: the probe's forward runs here
                temperature = float(self.config.actor_rollout_ref.rollout.temperature)
                batch.extra_info.update({"calculate_entropy": False, "compute_loss": False, "temperature": temperature})
                with worker_fields(batch):
                    b.actor_rollout_wg.compute_log_prob(batch)  # the student's top-k fields (log_probs unused)
        m = {}
        b._compute_old_log_prob(batch, metrics=m)  # verl's own: old_log_probs and entropy (bypass: rollout's)
        for key in (PROBE_KEY, TOPK_KEY):
            batch.extra_info.pop(key, None)
        metrics.update({f"branch_{b.name}/{k}": v for k, v in m.items()})
        fields = ["response_mask", "rm_scores", "old_log_probs"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=fields)
        rollout.response_mask_B_T = data["response_mask"]
        rollout.rewards_B_T = data["rm_scores"].to_padded_tensor(0.0)
        rollout.old_log_probs_B_T = data["old_log_probs"].to_padded_tensor(0.0)

    def _teacher_log_probs(
        self, b: BranchTrainer, rollout: BranchRollout, opd: bool, probe: bool, metrics: dict
    ) -> dict[str, float]:
        """Each teacher scores the student's sequences (temperature 1, training engine); returns O_k per pair.

        Phase II: on the cross rows of the teacher's prompts (their log-probs feed delta, Eq. 8). A probed Phase I
        step: on the student's native rows, for the overlap only.
        """
        overlaps = {}
        for teacher in self.teachers[b.name]:
            if not (opd or probe):
                continue
            rows = rollout.rows_of(teacher if opd else None)
            if not rows:
                continue
            keys = [rollout.batch.keys[i] for i in rows]
            sub = sub_batch(rollout.batch, keys)
            sub.extra_info.update({"calculate_entropy": False, "compute_loss": False, "temperature": 1.0})
            if probe:
                sub.extra_info.update({PROBE_KEY: "teacher", TOPK_KEY: self.copd.overlap_k})
            with worker_fields(sub):
                self.branches[teacher].actor_rollout_wg.compute_log_prob(sub)
            fields = ["log_probs"] + (["copd_overlap", "copd_topk_skl"] if probe else [])
            data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=fields)
            mask = rollout.mask_rows(rows)
            teacher_lp = response_from_nested(data["log_probs"], mask).to_padded_tensor(0.0)
            padded_mask = mask.to_padded_tensor(0)
            if opd:
                self._guard_teacher(teacher, teacher_lp, padded_mask)
                rollout.teacher_log_probs[teacher] = teacher_lp  # stays on the driver
            if probe:
                tag = f"{b.name}<-{teacher}"
                overlaps[tag] = masked_mean(response_from_nested(data["copd_overlap"], mask), mask)
                metrics[f"copd/overlap/{tag}"] = overlaps[tag]
                metrics[f"copd/topk_sym_kl/{tag}"] = masked_mean(
                    response_from_nested(data["copd_topk_skl"], mask), mask
                )
                student_lp = rollout.old_log_probs_B_T[rows, : teacher_lp.shape[1]]
                metrics[f"copd/sym_kl/{tag}"] = sampled_sym_kl(student_lp, teacher_lp, padded_mask)
        return overlaps

    def _guard_teacher(self, teacher: str, teacher_lp_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> None:
        """Stop on a broken teacher: NaN scores, or log(1/V) on every token (weights not restored)."""
        if not self.copd.teacher_guard:
            return
        if torch.isnan(teacher_lp_B_T[mask_B_T.bool()]).any():
            raise RuntimeError(f"teacher branch {teacher} returned NaN log-probs: its weights are broken; stopping")
        if teacher_looks_uniform(teacher_lp_B_T, mask_B_T, self.vocab_size, tol=self.copd.uniform_guard_tol):
            raise RuntimeError(
                f"teacher branch {teacher} scores every token at log(1/V): its weights look unloaded "
                "(woken without weights?); stopping before it collapses the student"
            )

    def _advantages(self, b: BranchTrainer, rollout: BranchRollout, metrics: dict) -> None:
        """CoPDAdvantageEstimator on the union batch: the single place advantages are computed."""
        mask = rollout.response_mask_B_T.to_padded_tensor(0)
        rewards, cross = rollout.rewards_B_T, rollout.cross_B
        adv, ret, m = self.estimator(
            token_level_rewards=rewards, response_mask=mask, index=np.array(rollout.uid_B, dtype=object),
            old_log_probs=rollout.old_log_probs_B_T, teacher_log_probs=rollout.teacher_log_probs_B_T(),
            cross_mask=cross, student=b.name, subbatch_ids=rollout.subbatch_ids(self.teachers[b.name]),
        )  # fmt: skip
        nested_mask = rollout.response_mask_B_T
        out = {"advantages": response_to_nested(adv, nested_mask), "returns": response_to_nested(ret, nested_mask)}
        tq.kv_batch_put(keys=rollout.batch.keys, partition_id="train", fields=TensorDict(out, batch_size=len(rollout)))
        metrics.update({f"branch_{b.name}/{k}": v for k, v in m.items()})
        metrics[f"branch_{b.name}/copd/rows"] = len(rollout)
        metrics[f"branch_{b.name}/copd/response_tokens"] = int(mask.sum())
        if (~cross).any():
            metrics[f"branch_{b.name}/copd/reward_native_mean"] = float(rewards[~cross].sum(-1).mean())
        if cross.any():
            metrics[f"branch_{b.name}/copd/reward_cross_mean"] = float(rewards[cross].sum(-1).mean())

    # ------------------------------------------------------------------ metrics, validation, checkpoints
    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        for name, sub in self._last_batches.items():
            m, own = {}, dict(self._branch_timing.get(name, {}))
            own["step"] = sum(own.values())  # the branch's share of the step (verl's timing_s/step is the total)
            self.branches[name]._compute_metrics(sub, m, own, global_steps=global_steps, epoch=epoch)
            metrics.update({f"branch_{name}/{k}": v for k, v in m.items() if not k.startswith("training/")})
        metrics.update({"training/global_step": global_steps, "training/epoch": epoch})
        metrics.update({f"timing_s/{k}": v for k, v in timing_raw.items()})
        self.sink.append(global_steps, metrics)

    def _validate(self) -> dict:
        out = {}
        for b in self.trainable:
            if b.spec.val_files:
                out.update({f"branch_{b.name}/{k}": v for k, v in self._validate_branch(b).items()})
        return out

    def _validate_branch(self, b: BranchTrainer) -> dict:
        """verl's ``_validate`` on one branch: wake its servers with its actor's weights, validate, sleep."""
        b.checkpoint_manager.update_weights(self.global_steps)
        b.global_steps = self.global_steps
        b.replay_buffer = self.replay_buffer
        metrics = b._validate()
        b.checkpoint_manager.sleep_replicas()
        return metrics

    def _save_checkpoint(self):
        ckpt.save(self)

    def _load_checkpoint(self):
        ckpt.load(self)

    def _validate_merged(self, merged: str) -> dict:
        """Validate the merged model through verl's rollout on every branch's validation data.

        The merged weights are loaded into each trainable branch's actor in turn (the branches were exported
        already), synced to its rollout servers, and validated by verl's ``_validate`` on that branch's data,
        so every data source is scored with its own reward. Logged under ``merged/...``.
        """
        out = {}
        for b in self.trainable:
            if not b.spec.val_files:
                continue
            b.actor_rollout_wg.load_hf(merged)
            out.update({f"merged/{k}": v for k, v in self._validate_branch(b).items()})
        if out:
            self.logger.log(data=out, step=self.global_steps)
            self.sink.append(self.global_steps, out)
        return out

    def finish(self) -> dict:
        """Export every branch to HF format, merge the trainable ones into ``merged/``, validate the merge."""
        paths = export_branches(self.branches, self.out_dir)
        base = self.config.actor_rollout_ref.model.path
        merged = merge_branches(self.copd, paths, os.path.join(self.out_dir, "merged"), base)
        result = {"branches": paths, "merged": merged, "phases": [list(p) for p in self.schedule.phases()]}
        if self.run.validate_merged and any(b.spec.val_files for b in self.trainable):
            result["merged_val"] = self._validate_merged(merged)
        tmp = os.path.join(self.out_dir, "copd_result.json.tmp")
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1, default=str)
        os.replace(tmp, os.path.join(self.out_dir, "copd_result.json"))
        return result
