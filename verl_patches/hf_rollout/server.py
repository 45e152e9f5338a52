"""`HFServer`: the token-in/token-out rollout server (a Ray actor) that verl's `LLMServerClient` calls.

It serves `generate` the way verl's vLLM server does (same max-token rule, EOS included in the response, one
log-prob per response token, `TokenOutput` with `global_steps`), batches concurrent requests (a micro-batcher
collects the requests that arrive together, runs one left-padded `generate` per group of equal sampling
settings and splits the results), and takes weights from the trainer in buckets.
"""

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.rollout.replica import TokenOutput

from verl_patches.hf_rollout.generation import SamplingParams, generate_batch, resolve_max_tokens
from verl_patches.overrides import HF_THREADS_ENV

#: Env knob: how long (ms) the batcher waits for more requests after the last one arrived (default 40: verl's agent
#: loop sends a step's requests one by one, each after a load-balancer round trip; with 10 ms the toy's 128 requests
#: reached `generate` in 2-5 batches, with 40 ms in one, and `gen` went 2.0-2.9 -> 1.7-2.5 s, docs/LOG.md 2026-12-03).
BATCH_WAIT_ENV = "VERL_PATCHES_HF_BATCH_WAIT_MS"
#: Env knob: "1" prints one line per generated batch (size, seconds) to the server's log.
LOG_BATCHES_ENV = "VERL_PATCHES_HF_LOG_BATCHES"
#: A batch starts at the latest this many quiet-window lengths after its first request.
MAX_WAIT_WINDOWS = 10


def split_videos(video_data: list) -> tuple[list, list | None]:
    """verl's `video_data` -> (videos, metadata or None): its dataset sends (frames, metadata) pairs."""
    if isinstance(video_data[0], tuple):
        videos, metadata = zip(*video_data, strict=True)
        return list(videos), list(metadata)
    return list(video_data), None


@dataclass(eq=False)
class _Request:
    """One queued generate call; `done` receives its TokenOutput."""

    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams
    want_log_probs: bool
    extra_inputs: dict | None  # processor outputs of an image / video request
    done: asyncio.Future

    def batch_key(self):
        """Requests batch together when their sampling is equal; seeded or multimodal ones run alone."""
        alone = self.params.seed is not None or self.extra_inputs is not None
        return (self.params, id(self) if alone else None)


class HFServer:
    """A transformers model behind verl's rollout-server interface (`generate` plus the control plane)."""

    def __init__(self, config, model_config, replica_rank: int = 0):
        self.config = omega_conf_to_dataclass(config)
        self.model_config = omega_conf_to_dataclass(model_config)
        self.replica_rank = replica_rank
        torch.set_num_threads(max(1, int(os.environ.get(HF_THREADS_ENV, "1"))))
        self.model = self._load_model()
        self.processor = self.model_config.processor
        self.eos_ids, self.pad_id = self._stop_ids()
        self.max_batch = max(1, self.config.max_num_seqs)
        self.batch_wait_s = float(os.environ.get(BATCH_WAIT_ENV, "40")) / 1000
        self.global_steps = None
        self._model_lock = threading.Lock()  # generation and weight loads never overlap
        self._queue: list[_Request] = []
        self._arrived = asyncio.Event()
        self._batcher: asyncio.Task | None = None
        self._sleeping = False
        self._gate_open = asyncio.Event()
        self._gate_open.set()
        self._reject = False
        self._received: set[str] = set()
        self.stats = {"requests": 0, "batches": 0, "generate_s": 0.0}
        self._log_batches = os.environ.get(LOG_BATCHES_ENV, "0") == "1"

    def _load_model(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

        dtype = getattr(torch, str(self.config.dtype).replace("torch.", ""))
        auto = AutoModelForImageTextToText if self.model_config.processor is not None else AutoModelForCausalLM
        return auto.from_pretrained(
            self.model_config.local_path,
            dtype=dtype,
            attn_implementation="sdpa",
            trust_remote_code=self.model_config.trust_remote_code,
        ).eval()

    def _stop_ids(self) -> tuple[list[int], int]:
        """EOS ids from the generation config and the tokenizer; pad id (falls back to the first EOS)."""
        gen = self.model.generation_config
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        tokenizer = self.model_config.tokenizer
        eos += [tokenizer.eos_token_id] if tokenizer is not None else []
        eos_ids = sorted({e for e in eos if e is not None})
        if not eos_ids:
            raise ValueError(f"{self.model_config.local_path}: no eos_token_id in generation_config or tokenizer")
        pad = gen.pad_token_id if gen.pad_token_id is not None else getattr(tokenizer, "pad_token_id", None)
        return eos_ids, eos_ids[0] if pad is None else pad

    async def ready(self) -> bool:
        return True

    async def get_stats(self) -> dict:
        """Requests served, batches run and seconds spent in `generate` since start."""
        return dict(self.stats)

    # ---- generation ---------------------------------------------------------------------------------------
    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        **kwargs: Any,
    ) -> TokenOutput:
        """Generate a response to `prompt_ids` (LLMServerClient.generate's call; see vllm_async_server.generate)."""
        if kwargs.get("audio_data"):
            raise NotImplementedError("hf rollout serves text, images and videos; audio needs the vllm rollout")
        if self._reject:  # the replica is leaving: fail fast instead of parking behind the closed gate
            return self._aborted()
        await self._gate_open.wait()
        if self._sleeping:
            raise RuntimeError("hf rollout server is asleep: wake it (update weights / wake_up) before generating")
        if self.config.full_determinism:
            sampling_params = {"seed": self.replica_rank + self.config.seed, **sampling_params}
        prompt_ids = [int(t) for t in prompt_ids]
        max_tokens = resolve_max_tokens(
            sampling_params,
            len(prompt_ids),
            self.config.prompt_length,
            self.config.response_length,
            self.config.max_model_len or self.config.prompt_length + self.config.response_length,
        )
        params = SamplingParams.from_request({"ignore_eos": self.config.ignore_eos, **sampling_params})
        request = _Request(
            prompt_ids,
            max_tokens,
            params,
            bool(sampling_params.get("logprobs", False)),
            self._mm_inputs(prompt_ids, image_data, video_data),
            asyncio.get_running_loop().create_future(),
        )
        self._queue.append(request)
        self._arrived.set()
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run_batches())
        return await request.done

    async def generate_many(self, requests: list[dict[str, Any]]) -> list[TokenOutput | BaseException]:
        """`generate` for several requests in one call (each a dict of `generate`'s keyword arguments), for a client
        that sends together what arrived together (recipe.copd.agent_loop.SingleServerClient): one Ray call instead
        of one per request. They join the same batching queue; each result is its TokenOutput or its exception."""
        return await asyncio.gather(*(self.generate(**request) for request in requests), return_exceptions=True)

    def _mm_inputs(self, prompt_ids: list[int], image_data, video_data) -> dict | None:
        """Processor outputs for the request's images and videos, plus the per-token modality ids M-RoPE models
        need (0 text, 1 image, 2 video).

        `prompt_ids` already hold the expanded image / video tokens (and Qwen3-VL's frame timestamps): verl's agent
        loop tokenizes with the processor. So only the pixels are processed here, with the arguments verl's
        `build_multimodal_processor_inputs` gives the processor for the trainer's forward: videos come as
        (frames, metadata) pairs from verl's dataset, their frames sampled already (`do_sample_frames=False`).
        """
        if not image_data and not video_data:
            return None
        inputs = {}
        if image_data:
            inputs.update(self._sub_processor("image")(images=image_data, return_tensors="pt"))
        if video_data:
            videos, metadata = split_videos(video_data)
            sampled = {} if metadata is None else {"video_metadata": metadata, "do_sample_frames": False}
            video_inputs = self._sub_processor("video")(videos=videos, return_tensors="pt", **sampled)
            inputs.update({k: v for k, v in video_inputs.items() if k != "video_metadata"})
        config = self.model.config
        image_id, video_id = getattr(config, "image_token_id", None), getattr(config, "video_token_id", None)
        types = [1 if t == image_id else 2 if t == video_id else 0 for t in prompt_ids]
        inputs["mm_token_type_ids"] = torch.tensor([types], dtype=torch.int)
        return inputs

    def _sub_processor(self, modality: str):
        sub = getattr(self.processor, f"{modality}_processor", None)
        if sub is None:
            raise ValueError(
                f"hf rollout got {modality}_data but the model has no {modality} processor: check model.path, and set "
                "actor_rollout_ref.model.trust_remote_code=True if its processor ships as remote code"
            )
        return sub

    async def _run_batches(self) -> None:
        """Collect the requests that arrive together, then generate them group by group; repeat until idle."""
        loop = asyncio.get_running_loop()
        while self._queue:
            deadline = loop.time() + MAX_WAIT_WINDOWS * self.batch_wait_s
            while len(self._queue) < self.max_batch and loop.time() < deadline:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), timeout=self.batch_wait_s)
                except asyncio.TimeoutError:
                    break  # quiet for one window: everything that came together is here
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            groups: dict[Any, list[_Request]] = {}
            for request in batch:
                groups.setdefault(request.batch_key(), []).append(request)
            for group in groups.values():
                await self._run_group(group)

    async def _run_group(self, group: list[_Request]) -> None:
        start = time.perf_counter()
        try:
            results = await asyncio.to_thread(self._generate_locked, group)
        except Exception as error:  # noqa: BLE001 - handed to every waiting caller, not swallowed
            for request in group:
                if not request.done.done():
                    request.done.set_exception(error)
            return
        seconds = time.perf_counter() - start
        self.stats["requests"] += len(group)
        self.stats["batches"] += 1
        self.stats["generate_s"] += seconds
        if self._log_batches:
            print(f"hf server {self.replica_rank}: generated {len(group)} requests in {seconds:.3f}s", flush=True)
        for request, (token_ids, log_probs) in zip(group, results, strict=True):
            if not request.done.done():
                request.done.set_result(
                    TokenOutput(
                        token_ids=token_ids,
                        log_probs=log_probs if request.want_log_probs else None,
                        stop_reason="completed",
                        extra_fields={"global_steps": self.global_steps},
                    )
                )

    def _generate_locked(self, group: list[_Request]):
        with self._model_lock:
            return generate_batch(
                self.model,
                [r.prompt_ids for r in group],
                [r.max_tokens for r in group],
                group[0].params,
                self.eos_ids,
                self.pad_id,
                group[0].extra_inputs,
            )

    def _aborted(self) -> TokenOutput:
        return TokenOutput(
            token_ids=[], log_probs=None, stop_reason="aborted", extra_fields={"global_steps": self.global_steps}
        )

    # ---- weights ------------------------------------------------------------------------------------------
    async def update_weights(
        self, named_tensors: list[tuple[str, torch.Tensor]], last: bool, global_steps: int | None = None
    ) -> int:
        """Copy a bucket of HF-named tensors into the model; on the `last` bucket check that every parameter
        arrived since the previous sync. Returns the number of tensors loaded."""
        await asyncio.to_thread(self._load_locked, named_tensors)
        if last:
            self._check_complete()
            if global_steps is not None:
                self.global_steps = global_steps
        return len(named_tensors)

    def _load_locked(self, named_tensors) -> None:
        state = self.model.state_dict(keep_vars=True)
        with self._model_lock, torch.no_grad():
            for name, tensor in named_tensors:
                if name not in state:
                    raise KeyError(f"hf rollout weight sync: the trainer sent {name!r}, unknown to the rollout model")
                state[name].copy_(tensor)
                self._received.add(name)

    def _check_complete(self) -> None:
        expected = {name for name, _ in self.model.named_parameters()}
        if getattr(self.model.config, "tie_word_embeddings", False):
            expected.discard("lm_head.weight")
        missing, self._received = sorted(expected - self._received), set()
        if missing:
            raise RuntimeError(
                f"hf rollout weight sync incomplete: {len(missing)} parameters missing, e.g. {missing[:3]}"
            )

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    # ---- control plane (RolloutReplica fans these out to its servers) ----------------------------------------
    async def wake_up(self, tags: list[str] | None = None) -> None:
        self._sleeping = False  # weights stay in host memory while asleep; HF keeps no KV cache between calls

    async def sleep(self) -> None:
        if self.config.free_cache_engine:
            self._sleeping = True

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def abort_all_requests(self, reject_request: bool = False, **kwargs) -> dict:
        """Close the gate (new requests wait, or come back aborted with `reject_request`); queued requests that
        have not started come back aborted at once; a running batch finishes."""
        self._gate_open.clear()
        self._reject = reject_request
        queued, self._queue = self._queue, []
        for request in queued:
            request.done.set_result(self._aborted())
        return {"aborted_count": len(queued), "request_ids": []}

    async def resume_generation(self) -> None:
        self._reject = False
        self._gate_open.set()

    async def start_profile(self, **kwargs) -> None:
        return None

    async def stop_profile(self) -> None:
        return None
