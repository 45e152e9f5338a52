"""The agent-loop worker's batching of TransferQueue puts, per prompt and across prompts by a group commit
(``recipe.copd.agent_loop._PromptBatchedTQ``), against a recording stand-in for the ``transfer_queue`` module, and
its installation into the worker class as Ray ships it (pickled by value); the real path runs in every e2e test."""

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


async def _prompt(proxy, uid, n, status="finished", generated=None):
    """What verl's ``_run_prompt`` + ``_agent_loop_postprocess`` do for one prompt, through the proxy. The sessions
    finish out of order, or all when the event `generated` is set (a batched generation's replies)."""

    async def session(i):
        if generated is None:
            await asyncio.sleep(0.001 * (n - i))
        else:
            await generated.wait()
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


def _writes(calls):
    """The recorded puts as (key, what) in the order TransferQueue saw them: what is a status or "row"."""
    out = []
    for c in calls:
        if c[0] == "put":
            out.append((c[1], c[3]["status"]))
        else:
            out += [(k, "row" if c[3] is not None else t["status"]) for k, t in zip(c[1], c[4], strict=True)]
    return out


def test_a_prompts_samples_go_in_one_put_before_its_terminal_status():
    tq = _RecordingTQ()
    proxy = _PromptBatchedTQ(tq, _to_td)

    async def main():
        await asyncio.gather(_prompt(proxy, "a", 3), _prompt(proxy, "b", 2, status="failure"))

    asyncio.run(main())
    writes = _writes(tq.calls)
    for uid, n, status in (("a", 3, "finished"), ("b", 2, "failure")):
        mine = [w for w in writes if w[0].startswith(uid)]
        assert mine[0] == (uid, "running") and mine[-1] == (uid, status)
        assert sorted(k for k, what in mine[1:-1]) == [f"{uid}_{i}_0" for i in range(n)]
        assert all(what == "row" for _, what in mine[1:-1])
    rows = [c for c in tq.calls if c[3] is not None]
    assert all(c[2] == "train" for c in tq.calls)
    for c in rows:  # keys, rows and tags stay aligned
        order = [int(k.split("_")[1]) for k in c[1]]
        assert c[3] == ("td", order) and [t["i"] for t in c[4]] == order
    assert all(c[0] == "batch" for c in tq.calls)  # status puts too go as (tag-only) batch puts


def test_prompts_that_finish_together_share_their_puts():
    """16 prompts of 8 samples, as in the toy's step: 16 x (2 status + 8 row) puts in stock verl, here one put for
    the 16 "running" statuses, one for the 128 rows and one for the 16 terminal statuses."""
    tq = _RecordingTQ()
    proxy = _PromptBatchedTQ(tq, _to_td)

    async def main():
        generated = asyncio.Event()
        prompts = [asyncio.create_task(_prompt(proxy, f"p{j}", 8, generated=generated)) for j in range(16)]
        await asyncio.sleep(0.01)
        generated.set()
        await asyncio.gather(*prompts)

    asyncio.run(main())
    assert [(len(c[1]), c[3] is not None) for c in tq.calls] == [(16, False), (128, True), (16, False)]


def test_rows_with_other_fields_are_not_mixed_into_one_tensordict():
    tq = _RecordingTQ()
    proxy = _PromptBatchedTQ(tq, lambda rows: ("td", [tuple(r) for r in rows]))

    async def prompt(uid, row):
        token = _PENDING_ROWS.set({})
        try:
            rows = proxy.list_of_dict_to_tensordict([row])
            await proxy.async_kv_batch_put(keys=[f"{uid}_0_0"], fields=rows, tags=[{}], partition_id="train")
            await proxy.async_kv_put(key=uid, partition_id="train", tag={"status": "finished"})
        finally:
            _PENDING_ROWS.reset(token)

    async def main():
        await asyncio.gather(prompt("t", {"x": 1}), prompt("i", {"x": 2, "pixel_values": 0}), prompt("u", {"x": 3}))

    asyncio.run(main())
    puts = [c[3] for c in tq.calls if c[3] is not None]
    assert puts == [("td", [("x",), ("x",)]), ("td", [("x", "pixel_values")])]


def test_a_failed_flush_fails_each_of_its_callers():
    class _FailingTQ(_RecordingTQ):
        async def async_kv_batch_put(self, keys, partition_id, fields=None, tags=None):
            if fields is not None:
                raise ConnectionError("storage unit gone")
            await super().async_kv_batch_put(keys, partition_id, fields, tags)

    tq = _FailingTQ()
    proxy = _PromptBatchedTQ(tq, _to_td)

    async def main():
        return await asyncio.gather(_prompt(proxy, "a", 2), _prompt(proxy, "b", 2), return_exceptions=True)

    errors = asyncio.run(main())
    assert [type(e) for e in errors] == [ConnectionError, ConnectionError]
    assert all(what == "running" for _, what in _writes(tq.calls))  # no terminal status without its rows


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
