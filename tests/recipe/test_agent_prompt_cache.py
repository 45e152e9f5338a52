"""The copd_single_turn loop renders each distinct text prompt once (``ct_build_initial_tokens``)."""

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
