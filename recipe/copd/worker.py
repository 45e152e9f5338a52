"""CoPD's actor worker: verl's ``ActorRolloutRefWorker`` plus a behavioural probe on the log-prob pass.

The probe rides on the forward pass that already computes log-probs (``compute_log_prob``), through the
engine's logits-processor hook (the same hook verl's own top-k distillation uses), so no full-vocabulary
tensor ever leaves the worker:

- ``copd_probe="student"``: besides ``log_probs``/``entropy``, emit the student's top-k token ids and
  logits per token as ``copd_topk_id_{i}`` / ``copd_topk_logit_{i}`` (i < k; the engine's logits processor
  returns one scalar per token and key).
- ``copd_probe="teacher"``: read the student's top-k fields of the same sequences and emit per token
  ``copd_overlap`` (|TopK_s ∩ TopK_t| / k, the paper's O_k) and ``copd_topk_skl`` (symmetric KL on the
  student's top-k support, both renormalised there), besides the teacher's ``log_probs``.

Cost: one top-k over the vocabulary per token on each side (``copd.overlap.block_topk``, about one max pass),
plus a k-wide gather on the teacher. No log-softmax: both distributions are renormalised on the student's top-k,
where the log-partition cancels, so raw logits carry the same information as log-probs.
"""

from __future__ import annotations

import os

import torch
from tensordict import TensorDict
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker

from copd.overlap import block_topk

PROBE_KEY = "copd_probe"
TOPK_KEY = "copd_topk"


def topk_field_names(k: int) -> tuple[list[str], list[str]]:
    """Names of the per-token fields that carry the student's top-k ids and logits."""
    return [f"copd_topk_id_{i}" for i in range(k)], [f"copd_topk_logit_{i}" for i in range(k)]


def _per_token(data: TensorDict, key: str, n_tokens: int) -> torch.Tensor:
    """A nested (B, j) field of the micro batch flattened to the engine's packed token order, (N,)."""
    values = data[key].values() if data[key].is_nested else data[key].reshape(-1)
    if values.shape[0] != n_tokens:
        raise RuntimeError(
            f"copd probe: field {key} has {values.shape[0]} tokens, logits have {n_tokens}; "
            "sequence parallelism is not supported by the probe (set ulysses_sequence_parallel_size=1)"
        )
    return values


def model_files_dir(path: str) -> str:
    """The local folder holding a model's files: ``path`` itself, or a hub id's snapshot in the local HF cache.

    verl loads ``actor_rollout_ref.model.path`` with ``from_pretrained``, which takes either; the export copies the
    config, tokenizer and processor files, so it needs the folder.
    """
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, local_files_only=True)
    except Exception as err:
        raise FileNotFoundError(
            f"model {path!r} is neither a folder nor in the local Hugging Face cache ({type(err).__name__}); "
            "download it first (huggingface-cli download) or set actor_rollout_ref.model.path to its folder"
        ) from err


class BehaviourProbe:
    """Loss-function stand-in used only on forward-only passes: a logits processor, and a zero loss."""

    def __init__(self, role: str, k: int, chunk_tokens: int = 1024):
        if role not in ("student", "teacher"):
            raise ValueError(f"copd probe role must be 'student' or 'teacher', got {role!r}")
        self.role, self.k, self.chunk_tokens = role, k, chunk_tokens

    def __call__(self, model_output=None, data=None, dp_group=None, student_logits=None, **kwargs):
        if student_logits is None:  # called as the loss after the forward: nothing to optimise
            return torch.zeros((), device=data["input_ids"].device if data is not None else "cpu"), {}
        logits_N_V = student_logits.squeeze(0)
        if self.role == "student":
            return self._student(logits_N_V)
        return self._teacher(logits_N_V, data)

    @torch.no_grad()
    def _student(self, logits_N_V: torch.Tensor) -> dict[str, torch.Tensor]:
        logit_N_k, ids_N_k = block_topk(logits_N_V, self.k)  # about one max pass over V; decreasing logit
        logit_N_k = logit_N_k.float()
        id_names, logit_names = topk_field_names(self.k)
        out = {name: ids_N_k[:, i].unsqueeze(0) for i, name in enumerate(id_names)}
        out.update({name: logit_N_k[:, i].unsqueeze(0) for i, name in enumerate(logit_names)})
        return out

    @torch.no_grad()
    def _teacher(self, logits_N_V: torch.Tensor, data: TensorDict) -> dict[str, torch.Tensor]:
        n_tokens = logits_N_V.shape[0]
        id_names, logit_names = topk_field_names(self.k)
        s_ids_N_k = torch.stack([_per_token(data, n, n_tokens) for n in id_names], -1).long()
        s_logit_N_k = torch.stack([_per_token(data, n, n_tokens) for n in logit_names], -1).float()
        overlap_N = torch.empty(n_tokens, dtype=torch.float32, device=logits_N_V.device)
        skl_N = torch.empty(n_tokens, dtype=torch.float32, device=logits_N_V.device)
        for start in range(0, n_tokens, self.chunk_tokens):  # chunked: the (chunk, k, k) comparison stays small
            sl = slice(start, start + self.chunk_tokens)
            chunk = logits_N_V[sl]
            t_ids = block_topk(chunk, self.k)[1]
            s_ids = s_ids_N_k[sl].to(chunk.device)
            overlap_N[sl] = (s_ids.unsqueeze(-1) == t_ids.unsqueeze(-2)).any(-1).float().mean(-1)
            log_p = torch.log_softmax(s_logit_N_k[sl].to(chunk.device), -1)  # student renormalised on its top-k
            log_q = torch.log_softmax(chunk.gather(-1, s_ids).float(), -1)  # teacher renormalised on the same ids
            skl_N[sl] = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)
        return {"copd_overlap": overlap_N.unsqueeze(0), "copd_topk_skl": skl_N.unsqueeze(0)}


class CoPDActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's actor/rollout worker with the CoPD probe and an HF export."""

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_log_prob(self, data: TensorDict) -> TensorDict:
        role = tu.pop(data, key=PROBE_KEY, default=None)
        if role is None:
            output = self.actor.infer_batch(data)
            return output.cpu() if output is not None else None
        k = int(tu.pop(data, key=TOPK_KEY, default=16))
        tu.assign_non_tensor(data, compute_loss=True, distillation_use_topk=True, distillation_only=False)
        saved = self.actor.loss_fn
        self.actor.loss_fn = BehaviourProbe(role, k)
        try:
            output = self.actor.infer_batch(data)
        finally:
            self.actor.loss_fn = saved
        return output.cpu() if output is not None else None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def copd_set_server_name_prefix(self, prefix: str) -> bool:
        """Look this branch's rollout server up under the branch's name (``recipe.copd.setup.server_name_prefix``).

        verl's server adapters (vLLM) find their server as ``{prefix}server_{replica}_{node}`` with the prefix
        from ``_get_server_name_prefix()``; the replica side uses the same hook. Returns whether the adapter
        has the hook.
        """
        rollout = getattr(self, "rollout", None)
        if rollout is None or not hasattr(rollout, "_get_server_name_prefix"):
            return False
        rollout._get_server_name_prefix = lambda: prefix
        return True

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def export_hf(self, out_dir: str) -> str | None:
        """Write the actor's current weights as a Hugging Face folder (rank 0 writes; every rank gathers).

        The folder gets ``model.safetensors`` plus the config, generation and tokenizer files of the model
        path the actor was built from. Written to a temporary sibling and renamed when complete.
        """
        import shutil

        from safetensors.torch import save_file

        params, _ = self.actor.engine.get_per_tensor_param()
        state = {}
        for name, tensor in params:  # every rank drains the generator: full_tensor() is a collective
            if self.rank == 0:
                state[name] = tensor.detach().to("cpu").contiguous().clone()
        if self.rank != 0:
            return None
        src = model_files_dir(str(self.config.model.path))
        tmp = f"{out_dir}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for fname in os.listdir(src):
            if fname.endswith((".safetensors", ".bin", ".pt")) or fname.endswith(".index.json"):
                continue
            path = os.path.join(src, fname)
            if os.path.isfile(path):
                shutil.copy2(path, os.path.join(tmp, fname))
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
        return out_dir

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_hf(self, folder: str) -> int:
        """Load a Hugging Face folder's weights into the actor (e.g. the merged model, to validate it through the
        rollout). Rank 0 reads the files and broadcasts; returns the number of tensors loaded."""
        import glob

        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        state = {}
        if self.rank == 0:
            for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
                state.update(load_file(path))
        module = self.actor.engine.module
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        with self.actor.engine.eval_mode():
            set_model_state_dict(module, state, options=options)
        return len(state)
