"""The agent-loop worker's per-prompt batching of TransferQueue puts (``recipe.copd.agent_loop._PromptBatchedTQ``),
against a recording stand-in for the ``transfer_queue`` module, and its installation into the worker class as Ray
ships it (pickled by value); the real path runs in every e2e test."""

from __future__ import annotations

import asyncio

import pytest

from recipe.copd.agent_loop import _PENDING_ROWS, _batch_prompt_puts, _PromptBatchedTQ, agent_loop_worker_class


class _RecordingTQ:
    def __init__(self):
        self.calls = []

    async def async_kv_batch_put(self, keys, partition_id, fields=None, tags=None):
        self.calls.append(("batch", list(keys), partition_id, fields, list(tags)))

    async def async_kv_put(self, key, partition_id, fields=None, tag=None):
        self.calls.append(("put", key, partition_id, tag))

    def other(self):
        return "forwarded"


def _to_td(rows):
    return ("td", [r["x"] for r in rows])


async def _prompt(proxy, uid, n, status="finished"):
    """What verl's ``_run_prompt`` + ``_agent_loop_postprocess`` do for one prompt, through the proxy."""

    async def session(i):
        await asyncio.sleep(0.001 * (n - i))  # finish out of order
        await proxy.async_kv_batch_put(
            keys=[f"{uid}_{i}_0"],
            fields=proxy.list_of_dict_to_tensordict([{"x": i}]),
            tags=[{"status": "success", "i": i}],
            partition_id="train",
        )

    token = _PENDING_ROWS.set({})
    try:
        await proxy.async_kv_put(key=uid, partition_id="train", tag={"status": "running"})
        await asyncio.gather(*[asyncio.create_task(session(i)) for i in range(n)])
        await proxy.async_kv_put(key=uid, partition_id="train", tag={"status": status})
    finally:
        _PENDING_ROWS.reset(token)


def test_a_prompts_samples_go_in_one_put_before_its_terminal_status():
    tq = _RecordingTQ()
    proxy = _PromptBatchedTQ(tq, _to_td)

    async def main():
        await asyncio.gather(_prompt(proxy, "a", 3), _prompt(proxy, "b", 2, status="failure"))

    asyncio.run(main())
    for uid, n, status in (("a", 3, "finished"), ("b", 2, "failure")):
        mine = [c for c in tq.calls if (c[1] if c[0] == "put" else c[1][0]).startswith(uid)]
        assert [c[0] for c in mine] == ["put", "batch", "put"]
        assert mine[0][3] == {"status": "running"} and mine[2][3] == {"status": status}
        batch = mine[1]
        assert sorted(batch[1]) == [f"{uid}_{i}_0" for i in range(n)] and batch[2] == "train"
        order = [int(k.split("_")[1]) for k in batch[1]]  # keys, rows and tags stay aligned
        assert batch[3] == ("td", order) and [t["i"] for t in batch[4]] == order


def test_outside_a_prompt_every_call_goes_straight_through():
    tq = _RecordingTQ()
    proxy = _PromptBatchedTQ(tq, _to_td)

    async def main():
        fields = proxy.list_of_dict_to_tensordict([{"x": 7}])
        assert fields == ("td", [7])
        await proxy.async_kv_batch_put(keys=["k"], partition_id="val", fields=fields, tags=[{}])
        await proxy.async_kv_put(key="u", partition_id="val", tag={"status": "finished"})

    asyncio.run(main())
    assert [c[0] for c in tq.calls] == ["batch", "put"] and tq.calls[0][3] == ("td", [7])
    assert proxy.other() == "forwarded"


def test_the_worker_class_pickles_for_ray():
    """Ray pickles the locally defined actor class by value: nothing it references may be unpicklable."""
    import ray.cloudpickle

    from recipe.copd.agent_loop import agent_loop_worker_class

    for inline in (True, False):
        ray.cloudpickle.dumps(agent_loop_worker_class(inline).__ray_actor_class__)


def _verl_tq_globals(cls) -> dict:
    """The globals verl's ``_agent_loop_postprocess`` resolves ``tq`` in, for this copy of the worker class."""
    base = next(k for k in cls.__mro__ if "_agent_loop_postprocess" in k.__dict__)
    return base.__dict__["_agent_loop_postprocess"].__globals__


def test_batching_reaches_the_worker_class_ray_ships():
    """Ray pickles the worker class by value (verl's module names the Ray wrapper, not the class), so the class
    in the actor has its own copy of its functions' globals: patching ``agent_loop_tq.tq`` (the first version)
    left the actor's puts unbatched. The patch must land in the globals the shipped class's methods read."""
    pytest.importorskip("transfer_queue")
    from ray import cloudpickle
    from verl.trainer.ppo.v1 import agent_loop_tq

    shipped = cloudpickle.loads(cloudpickle.dumps(agent_loop_worker_class(inline_reward=True).__ray_actor_class__))
    g = _verl_tq_globals(shipped)
    assert g is not agent_loop_tq.__dict__  # the premise: a separate copy, which a module patch cannot reach
    assert not isinstance(g["tq"], _PromptBatchedTQ)
    assert _batch_prompt_puts(shipped) == 1  # _agent_loop_postprocess and verl's _run_prompt share one dict
    assert (
        isinstance(g["tq"], _PromptBatchedTQ) and g["list_of_dict_to_tensordict"] == g["tq"].list_of_dict_to_tensordict
    )
    run_prompt = next(k for k in shipped.__mro__ if k.__module__.startswith("verl") and "_run_prompt" in k.__dict__)
    assert isinstance(run_prompt.__dict__["_run_prompt"].__globals__["tq"], _PromptBatchedTQ)  # the status puts
    assert _batch_prompt_puts(shipped) == 0  # idempotent
    assert not isinstance(agent_loop_tq.tq, _PromptBatchedTQ)  # this process's module is left alone
