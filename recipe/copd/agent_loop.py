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

import asyncio
import contextvars
import hashlib
import json
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from verl.experimental.agent_loop.agent_loop import register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
from verl.protocol import DataProto
from verl.workers.rollout.llm_server import LLMServerClient

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


#: Text prompts whose rendered token ids a loop keeps (``CoPDSingleTurnAgentLoop.ct_build_initial_tokens``).
PROMPT_CACHE_SIZE = 4096


@register(NAME)
class CoPDSingleTurnAgentLoop(SingleTurnAgentLoop):
    async def ct_build_initial_tokens(self, messages, tools=None, images=None, videos=None, audios=None,
                                      mm_inputs_out=None) -> list[int]:  # fmt: skip
        """verl's prompt rendering, once per distinct text prompt: the n samples of a prompt (and a prompt seen
        again) share one chat-template render and its executor hop instead of n. The ids are verl's, length cap
        included; prompts with tools or media, or whose render fills ``mm_inputs_out``, are rendered every time."""
        render = super().ct_build_initial_tokens
        kwargs = {"tools": tools, "images": images, "videos": videos, "audios": audios}
        if any(kwargs.values()):
            return await render(messages, **kwargs, mm_inputs_out=mm_inputs_out)
        try:
            key = json.dumps(messages, sort_keys=True)
        except (TypeError, ValueError):  # not plain JSON (e.g. media objects inline): no cache
            return await render(messages, **kwargs, mm_inputs_out=mm_inputs_out)
        cache = self.__dict__.setdefault("_copd_prompt_ids", {})
        pending = cache.get(key)
        if pending is None:
            pending = cache[key] = asyncio.get_running_loop().create_future()
            try:
                own: dict = {}
                ids = await render(messages, **kwargs, mm_inputs_out=own)
            except BaseException as exc:
                del cache[key]
                pending.set_exception(exc)
                pending.exception()  # retrieved: the waiters (if any) re-raise it
                raise
            if mm_inputs_out is not None:
                mm_inputs_out.update(own)
            if own:  # the builder produced processor inputs: not a plain text prompt
                del cache[key]
                pending.set_result(None)
                return ids
            if len(cache) > PROMPT_CACHE_SIZE:
                cache.pop(next(iter(cache)))  # the oldest
            pending.set_result(tuple(ids))
            return list(ids)
        ids = await pending
        if ids is None:
            return await render(messages, **kwargs, mm_inputs_out=mm_inputs_out)
        return list(ids)

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
        self.compute_score = _Remote(self._score)

    async def _score(self, data):
        if type(data) is DataProto and len(data) == 1:
            data.__class__ = OneRowProto  # verl's reward manager slices data[-1:] of every sample
        return await self.worker.compute_score(data)


class OneRowProto(DataProto):
    """A one-row ``DataProto`` whose last-row slice (``data[-1:]``, how verl's reward managers take a trajectory's
    last turn) is itself rather than a copy: the copy rebuilds the TensorDict and re-checks every field, and was
    most of a rule reward's cost in the agent loop. The rows, arrays and dicts are the same objects a slice holds."""

    def __getitem__(self, item):
        if isinstance(item, slice) and item == slice(-1, None) and len(self) == 1:
            return self
        return super().__getitem__(item)


class _Remote:
    def __init__(self, fn):
        self.remote = fn  # an ``async def``: awaiting its call is what awaiting an ObjectRef is to verl


#: While a prompt's sessions run (``CoPDAgentLoopWorkerTQ._run_prompt``): its samples' TransferQueue rows, by
#: partition, waiting for one batched put before the prompt's terminal status.
_PENDING_ROWS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("copd_pending_rows", default=None)


class _DeferredRows(list):
    """What verl's ``list_of_dict_to_tensordict`` returns in a buffering prompt: the rows, still as dicts."""


class _PromptBatchedTQ:
    """verl's ``transfer_queue`` module as ``agent_loop_tq`` uses it, with the puts of a worker's prompts batched.

    Stock verl 0.9.1 makes, for every prompt, one status put ("running") when it starts, one ``kv_batch_put`` per
    sample (``AgentLoopWorkerTQ._agent_loop_postprocess``, n per prompt) and one terminal status put
    ("finished"/"failure") after every session settled; each put is two TransferQueue round trips (key lookup, then
    data or tag). The n samples of a prompt become visible to the ReplayBuffer only with its terminal status.
    Here, inside a prompt (a buffer in context):

    - a sample's rows are kept (as dicts) until the prompt's terminal status;
    - the status puts and the prompt's rows then go through a group commit (``_GroupCommit``): what arrives while a
      put is in flight, or in the same event-loop turn, goes to TransferQueue together, the rows of all those
      prompts in one ``kv_batch_put`` per partition and field set, then their statuses in one more.

    The same keys, fields, tags and partitions, and every prompt's rows before its terminal status; each caller
    still waits for its own puts. The toy's CPU step: 16 prompts x (2 + 8) puts -> a handful. Outside a prompt (no
    buffer in context) every call goes straight to TransferQueue."""

    def __init__(self, tq, to_tensordict):
        self._tq, self._to_tensordict = tq, to_tensordict
        self._commit = _GroupCommit(tq, to_tensordict)

    def __getattr__(self, name):
        return getattr(self._tq, name)

    def list_of_dict_to_tensordict(self, rows):
        return _DeferredRows(rows) if _PENDING_ROWS.get() is not None else self._to_tensordict(rows)

    async def async_kv_batch_put(self, keys, partition_id, fields=None, tags=None, **kwargs):
        pending = _PENDING_ROWS.get()
        if pending is None or not isinstance(fields, _DeferredRows) or kwargs:
            if isinstance(fields, _DeferredRows):
                fields = self._to_tensordict(list(fields))
            return await self._tq.async_kv_batch_put(
                keys=keys, partition_id=partition_id, fields=fields, tags=tags, **kwargs
            )
        rows = pending.setdefault(partition_id, ([], [], []))
        rows[0].extend(keys), rows[1].extend(fields), rows[2].extend(tags or [{} for _ in keys])

    async def async_kv_put(self, key, partition_id, fields=None, tag=None, **kwargs):
        pending = _PENDING_ROWS.get()
        if pending is None or fields is not None or tag is None or kwargs:
            return await self._tq.async_kv_put(key=key, partition_id=partition_id, fields=fields, tag=tag, **kwargs)
        puts = []
        if tag.get("status") in ("finished", "failure"):
            puts = [(part, keys, rows, tags) for part, (keys, rows, tags) in pending.items()]
            pending.clear()  # a failing flush must not be retried by the failure path's status put
        await self._commit.put([*puts, (partition_id, [key], None, [tag])])


class _GroupCommit:
    """TransferQueue puts from many prompts' tasks on one event loop, coalesced (group commit): a put waits for the
    one in flight, if any, plus one loop turn, and then goes with every other put that arrived meanwhile. Nothing
    waits on a timer, so a lone put costs one loop turn more than a direct one.

    A put is a list of (partition, keys, rows as dicts or None for a status-only put, tags). One flush writes all
    its rows first (one ``kv_batch_put`` per partition and field set: rows with other fields, e.g. a multimodal
    prompt's, are not mixed into one TensorDict), then all its status-only tags (one ``kv_batch_put`` per
    partition, fields None: a tag update, what ``kv_put`` without fields does). A failed flush fails each of its
    callers' awaits with the error."""

    def __init__(self, tq, to_tensordict):
        self._tq, self._to_tensordict = tq, to_tensordict
        self._queue: list = []
        self._drainer = None

    async def put(self, puts: list) -> None:
        done = asyncio.get_running_loop().create_future()
        self._queue.append((puts, done))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        while self._queue:
            await asyncio.sleep(0)  # the puts of this loop turn join
            batch, self._queue = self._queue, []
            try:
                await self._flush([p for puts, _ in batch for p in puts])
            except Exception as error:  # noqa: BLE001 - handed to every caller of this flush
                for _, done in batch:
                    if not done.done():
                        done.set_exception(error)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _flush(self, puts: list) -> None:
        data, status = {}, {}
        for part, keys, rows, tags in puts:
            if rows is None:
                group = status.setdefault(part, ([], []))
                group[0].extend(keys), group[1].extend(tags)
                continue
            for key, row, tag in zip(keys, rows, tags, strict=True):
                group = data.setdefault((part, tuple(row)), ([], [], []))
                group[0].append(key), group[1].append(row), group[2].append(tag)
        for (part, _), (keys, rows, tags) in data.items():
            await self._tq.async_kv_batch_put(keys=keys, partition_id=part, fields=self._to_tensordict(rows), tags=tags)
        for part, (keys, tags) in status.items():
            await self._tq.async_kv_batch_put(keys=keys, partition_id=part, fields=None, tags=tags)


def _open_prompt_buffer():
    """Start a prompt's buffer in the current context (module functions: Ray pickles the actor class by value, and a
    ContextVar it referenced directly cannot be pickled)."""
    return _PENDING_ROWS.set({})


def _close_prompt_buffer(token) -> None:
    _PENDING_ROWS.reset(token)


#: The methods of verl's ``AgentLoopWorkerTQ`` that reach TransferQueue through their module's ``tq`` global.
_TQ_METHODS = ("_agent_loop_postprocess", "_run_prompt")


def _batch_prompt_puts(worker_cls: type) -> int:
    """Route the TransferQueue calls of ``worker_cls``'s verl methods (``_TQ_METHODS``) through
    ``_PromptBatchedTQ``, in this process. Returns how many globals dicts it patched. Idempotent.

    The patch goes into the globals those functions resolve ``tq`` in, not into ``agent_loop_tq``'s module dict:
    Ray ships the actor class by value (``AgentLoopWorkerTQ`` in its module is the Ray actor wrapper, so
    cloudpickle cannot find the class by name), and a class pickled by value keeps its own copy of its functions'
    globals. Patching the module (what this did until 2026-12-04) left the actor's puts unbatched."""
    patched = 0
    for fn in (k.__dict__[name] for k in worker_cls.__mro__ for name in _TQ_METHODS if name in k.__dict__):
        while fn is not None and hasattr(fn, "__wrapped__"):
            fn = fn.__wrapped__
        g = getattr(fn, "__globals__", None)
        if g is None or "tq" not in g or isinstance(g["tq"], _PromptBatchedTQ):
            continue
        proxy = _PromptBatchedTQ(g["tq"], g.get("list_of_dict_to_tensordict"))
        g["tq"] = proxy
        if "list_of_dict_to_tensordict" in g:
            g["list_of_dict_to_tensordict"] = proxy.list_of_dict_to_tensordict
        patched += 1
    return patched


def agent_loop_worker_class(inline_reward: bool):
    """``AgentLoopWorkerTQ`` (verl's V1 agent-loop worker, as a Ray actor) with two per-sample costs removed:

    - ``copd_single_turn`` is built once per worker, not once per sample. verl's ``_run_agent_loop`` builds every
      sample's loop with ``hydra.utils.instantiate`` (an ``OmegaConf.merge`` of the registry entry and a new
      continuous-token builder each time: ~3 ms a sample on CPU, 0.4 s of a 128-sample toy step). Our loop keeps no
      per-sample state (everything it needs is in ``run``'s arguments; its tokenizer, config and server client are
      the worker's), so one instance serves every sample. Other agent loops (tool agents keep state) are built as
      verl builds them.
    - the prompts' TransferQueue puts are batched: a prompt's n samples in one put before its terminal status, and
      the puts of prompts that finish together in one (``_PromptBatchedTQ``; 0.6 s of CPU a 128-sample toy step in
      tensordict building and round trips, before the group commit).
    - with ``inline_reward``, rule rewards are scored in this process (``_InlineRewardWorker``) when the worker is
      given reward worker handles (the reward is on)."""
    import ray
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ
    from verl.utils.rollout_trace import rollout_trace_attr

    class CoPDAgentLoopWorkerTQ(AgentLoopWorkerTQ.__ray_actor_class__):
        def __init__(self, config, llm_client, teacher_client=None, reward_loop_worker_handles=None):
            if inline_reward and reward_loop_worker_handles is not None:
                reward_loop_worker_handles = [_InlineRewardWorker(config)]
            super().__init__(config, llm_client, teacher_client, reward_loop_worker_handles)
            self._copd_loop = None
            _batch_prompt_puts(type(self))

        async def _run_prompt(self, *args, **kwargs):
            token = _open_prompt_buffer()  # the sessions' tasks, created inside, share this prompt's buffer
            try:
                return await super()._run_prompt(*args, **kwargs)
            finally:
                _close_prompt_buffer(token)

        def _shared_loop(self):
            if self._copd_loop is None:  # the arguments of verl's per-sample instantiate, once
                import hydra
                from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap

                self._copd_loop = hydra.utils.instantiate(
                    config=_agent_loop_registry[NAME],
                    trainer_config=DictConfigWrap(config=self.config),
                    server_manager=self.llm_client,
                    tokenizer=self.tokenizer,
                    processor=self.processor,
                    hf_model_type=self.hf_model_type,
                    dataset_cls=self.dataset_cls,
                    data_config=DictConfigWrap(self.config.data),
                    tools=ToolListWrap(self.tools),
                )
            return self._copd_loop

        async def _run_agent_loop(self, sampling_params, trajectory, *, agent_name, trace=True, **kwargs):
            if agent_name != NAME:
                return await super()._run_agent_loop(
                    sampling_params, trajectory, agent_name=agent_name, trace=trace, **kwargs
                )
            with rollout_trace_attr(
                step=trajectory["step"],
                sample_index=trajectory["sample_index"],
                rollout_n=trajectory["rollout_n"],
                validate=trajectory["validate"],
                name="agent_loop",
                trace=trace,
            ):
                output = await self._shared_loop().run(sampling_params, **kwargs)
                return await self._agent_loop_postprocess(output, trajectory["validate"], **kwargs)

    return ray.remote(CoPDAgentLoopWorkerTQ)


class SingleServerClient(LLMServerClient):
    """verl's ``LLMServerClient`` for a branch whose rollout is one server, routing without the load balancer.

    Per request verl's client makes two Ray calls to the branch's ``GlobalRequestLoadBalancer`` actor besides the
    generate call: ``acquire_server`` (which returns the server's handle) and a fire-and-forget
    ``release_server``. With one server every request goes to it whatever the balancer's state (sticky,
    least-loaded and full-determinism routing all pick it), so this client, given that server at construction
    through verl's ``LLMServerManager.get_client(client_cls=...)``, skips both calls. Built only for a branch with
    exactly one replica (``branch_llm_client``); with more, verl's client and balancer route as before."""

    def __init__(self, config, load_balancer_handle=None, *, server_id: str, server_handle, **kwargs):
        super().__init__(config=config, load_balancer_handle=load_balancer_handle, **kwargs)
        self._server = (server_id, server_handle)
        self._batched = None

    def __getstate__(self):
        return {**self.__dict__, "_batched": None}  # built in the process that sends (it holds futures)

    async def _acquire_server(self, request_id: str, **extra):
        if self._batched is None:
            server_id, handle = self._server
            self._batched = (server_id, BatchedServer(handle)) if batches_requests(handle) else self._server
        return self._batched

    def _release_server(self, server_id: str, request_id: str | None = None) -> None:
        return None


def batches_requests(handle) -> bool:
    """Whether a rollout server takes several requests in one call (verl_patches' ``hf`` server: ``generate_many``;
    vLLM and SGLang servers take one per call)."""
    return hasattr(handle, "generate_many")


class _BatchedGenerate:
    """``generate.remote(**kwargs)`` that sends the requests one event-loop turn brings as one ``generate_many`` call.

    The n samples of a prompt reach the client in the same turn (they wait on one prompt render); verl's client
    awaits ``server.generate.remote(...)`` per sample, which was one Ray call per sample, each serialised,
    dispatched and answered on its own. Calls are not held back for each other (several can be in flight), and the
    server still batches across them (its quiet window)."""

    def __init__(self, handle):
        self._handle = handle
        self._waiting: list[tuple[dict, asyncio.Future]] = []
        self._calls: set[asyncio.Task] = set()  # the loop keeps only weak references to its tasks

    def remote(self, **kwargs) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._send)
        self._waiting.append((kwargs, done))
        return done

    def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        call = asyncio.ensure_future(self._call(batch))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[tuple[dict, asyncio.Future]]) -> None:
        try:
            results = await self._handle.generate_many.remote([kwargs for kwargs, _ in batch])
        except BaseException as error:  # noqa: BLE001 - handed to every waiting request, not swallowed
            results = [error] * len(batch)
        for (_, done), result in zip(batch, results, strict=True):
            if done.done():  # the request was cancelled meanwhile
                continue
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)


class BatchedServer:
    """A server handle whose ``generate`` goes through ``_BatchedGenerate``; every other method is the handle's."""

    def __init__(self, handle):
        self._handle = handle
        self.generate = _BatchedGenerate(handle)

    def __getattr__(self, name):
        return getattr(self._handle, name)


def single_server(llm_server_manager) -> bool:
    """Whether the branch's rollout is one server (routed by ``SingleServerClient``, no balancer actor)."""
    return len(llm_server_manager.server_handles) == 1


def branch_llm_client(llm_server_manager):
    """The branch's rollout client: ``SingleServerClient`` for one server, else verl's own."""
    handles, addresses = llm_server_manager.server_handles, llm_server_manager.server_addresses
    if not single_server(llm_server_manager):
        return llm_server_manager.get_client()
    return llm_server_manager.get_client(
        client_cls=SingleServerClient, server_id=addresses[0], server_handle=handles[0]
    )


def inline_reward_enabled(setting, config: DictConfig, on_cpu: bool) -> bool:
    """``copd.run.inline_reward``: true, false, or "auto" (on for a CPU run whose reward needs no reward model)."""
    if config.reward.reward_model.get("enable", False):
        if setting is True:
            raise ValueError("copd.run.inline_reward=true needs a rule reward: reward.reward_model.enable is true")
        return False
    return on_cpu if setting == "auto" else bool(setting)
