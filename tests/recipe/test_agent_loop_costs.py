"""Per-sample costs the copd_single_turn loop and the inline reward cut: one chat-template render per text prompt
(``ct_build_initial_tokens``), no copy of a one-row DataProto per score (``OneRowProto``)."""

from __future__ import annotations

import asyncio

import pytest
from verl.experimental.agent_loop.agent_loop import AgentLoopBase

from recipe.copd import agent_loop
from recipe.copd.agent_loop import CoPDSingleTurnAgentLoop


@pytest.fixture
def loop(monkeypatch):
    calls = []

    async def render(self, messages, tools=None, images=None, videos=None, audios=None, mm_inputs_out=None):
        calls.append(messages)
        await asyncio.sleep(0)  # the other samples of the prompt arrive while this one renders
        if messages and messages[0].get("content") == "boom":
            raise ValueError("bad prompt")
        if messages and messages[0].get("content") == "processor" and mm_inputs_out is not None:
            mm_inputs_out["pixel_values"] = "features"
        return [len(calls), *(ord(c) for c in messages[0]["content"])]

    monkeypatch.setattr(AgentLoopBase, "ct_build_initial_tokens", render)
    obj = object.__new__(CoPDSingleTurnAgentLoop)
    obj.calls = calls
    return obj


def _msgs(text):
    return [{"role": "user", "content": text}]


def test_the_samples_of_a_prompt_share_one_render(loop):
    async def main():
        return await asyncio.gather(*(loop.ct_build_initial_tokens(_msgs("12+3=")) for _ in range(8)))

    out = asyncio.run(main())
    assert len(loop.calls) == 1
    assert all(ids == out[0] for ids in out) and len({id(ids) for ids in out}) == 8  # equal, not shared lists
    out[0].append(99)  # a caller editing its ids leaves the others' alone
    assert asyncio.run(loop.ct_build_initial_tokens(_msgs("12+3="))) == out[1]
    asyncio.run(loop.ct_build_initial_tokens(_msgs("4*5=")))
    assert len(loop.calls) == 2  # a new prompt renders


def test_media_and_processor_inputs_render_every_time(loop):
    async def main():
        await loop.ct_build_initial_tokens(_msgs("look"), images=["img"])
        await loop.ct_build_initial_tokens(_msgs("look"), images=["img"])
        outs = [{}, {}]
        for out in outs:
            await loop.ct_build_initial_tokens(_msgs("processor"), mm_inputs_out=out)
        return outs

    outs = asyncio.run(main())
    assert len(loop.calls) == 4
    assert outs == [{"pixel_values": "features"}] * 2  # the builder's processor inputs reach every caller


def test_a_failed_render_fails_its_callers_and_is_not_kept(loop):
    async def main():
        return await asyncio.gather(*(loop.ct_build_initial_tokens(_msgs("boom")) for _ in range(3)),
                                    return_exceptions=True)  # fmt: skip

    out = asyncio.run(main())
    assert all(isinstance(e, ValueError) for e in out) and len(loop.calls) == 1
    with pytest.raises(ValueError):
        asyncio.run(loop.ct_build_initial_tokens(_msgs("boom")))
    assert len(loop.calls) == 2  # tried again, not served from the cache


def test_the_cache_is_bounded(loop, monkeypatch):
    monkeypatch.setattr(agent_loop, "PROMPT_CACHE_SIZE", 3)

    async def main():
        for i in range(10):
            await loop.ct_build_initial_tokens(_msgs(f"{i}+1="))

    asyncio.run(main())
    assert len(loop._copd_prompt_ids) <= 4


def test_a_one_row_protos_last_row_slice_is_itself_and_holds_what_verls_slice_holds():
    import numpy as np
    import torch
    from tensordict import TensorDict
    from verl.protocol import DataProto

    from recipe.copd.agent_loop import OneRowProto

    def proto(rows):
        batch = TensorDict({"responses": torch.arange(3 * rows).view(rows, 3)}, batch_size=rows)
        extra = np.array([{"k": i} for i in range(rows)], dtype=object)
        return DataProto(batch=batch, non_tensor_batch={"extra_info": extra, "data_source": np.array(["a"] * rows)})

    data = proto(1)
    plain = data[-1:]
    data.__class__ = OneRowProto
    assert data[-1:] is data
    item, ref = data[-1:][0], plain[0]
    assert torch.equal(item.batch["responses"], ref.batch["responses"])
    assert item.non_tensor_batch["extra_info"] is ref.non_tensor_batch["extra_info"]  # the same dict, as verl's
    two = proto(2)
    two.__class__ = OneRowProto
    assert len(two[-1:]) == 1 and two[-1:] is not two  # not one row: verl's slice
    assert torch.equal(two[-1:].batch["responses"], proto(2)[-1:].batch["responses"])


class _FakeServer:
    """A server handle with ``generate_many.remote`` (what verl_patches' hf server offers)."""

    def __init__(self, fail=False):
        self.calls, self.fail = [], fail
        self.generate_many = self

    def remote(self, requests):
        self.calls.append([r["request_id"] for r in requests])

        async def answer():
            await asyncio.sleep(0)
            if self.fail:
                raise RuntimeError("server gone")
            return [ValueError("bad") if r["request_id"] == "bad" else f"out-{r['request_id']}" for r in requests]

        return answer()


def test_requests_of_one_turn_go_in_one_call_and_each_gets_its_own_result():
    from recipe.copd.agent_loop import BatchedServer

    server = _FakeServer()
    batched = BatchedServer(server)

    async def main():
        first = [batched.generate.remote(request_id=str(i), prompt_ids=[i]) for i in range(8)]
        await asyncio.sleep(0)
        later = [batched.generate.remote(request_id=i) for i in ("a", "bad")]
        return await asyncio.gather(*first, *later, return_exceptions=True)

    out = asyncio.run(main())
    assert server.calls == [[str(i) for i in range(8)], ["a", "bad"]]
    assert out[:9] == [f"out-{i}" for i in range(8)] + ["out-a"]
    assert isinstance(out[9], ValueError)  # only that request fails


def test_a_failed_call_fails_each_of_its_requests_and_a_cancelled_one_is_skipped():
    from recipe.copd.agent_loop import BatchedServer

    batched = BatchedServer(_FakeServer(fail=True))

    async def main():
        reqs = [batched.generate.remote(request_id=str(i)) for i in range(3)]
        reqs[0].cancel()
        return await asyncio.gather(*reqs, return_exceptions=True)

    out = asyncio.run(main())
    assert isinstance(out[0], asyncio.CancelledError)
    assert all(isinstance(e, RuntimeError) for e in out[1:])


def test_only_servers_with_generate_many_get_batched_and_other_methods_pass_through():
    from recipe.copd.agent_loop import BatchedServer, batches_requests

    class VllmLike:
        generate = "one per call"
        sleep = "sleep"

    assert batches_requests(_FakeServer()) and not batches_requests(VllmLike())
    assert BatchedServer(VllmLike()).sleep == "sleep"
