"""The driver's worker calls: the fields a worker fetches (``worker_fields``), the one-server rollout client and
the reward loop without reward workers when the agent loops score inline."""

from __future__ import annotations

import asyncio

import pytest
from transfer_queue import KVBatchMeta

from recipe.copd import batches
from recipe.copd.agent_loop import SingleServerClient, branch_llm_client
from recipe.copd.batches import WORKER_NON_TENSOR_FIELDS, worker_field_names, worker_fields

SCHEMA = {
    "input_ids": {"is_non_tensor": False},
    "responses": {"is_non_tensor": False},
    "raw_prompt": {"is_non_tensor": True},
    "uid": {"is_non_tensor": True},
    "multi_modal_inputs": {"is_non_tensor": True},
    "old_log_probs": {},
}


def test_a_worker_fetches_tensors_and_the_processor_outputs_only():
    assert worker_field_names(SCHEMA) == ["input_ids", "responses", "multi_modal_inputs", "old_log_probs"]
    assert "multi_modal_inputs" in WORKER_NON_TENSOR_FIELDS
    assert worker_field_names(SCHEMA, wanted=["responses", "uid"]) == ["responses"]


class _Client:
    def __init__(self):
        self.calls = []

    def kv_retrieve_meta(self, keys, partition_id, create):
        self.calls.append((list(keys), partition_id, create))
        return type("Meta", (), {"field_schema": SCHEMA})()


def _batch(n=2):
    return KVBatchMeta(keys=[f"k{i}" for i in range(n)], tags=[{}] * n, partition_id="train", extra_info={"a": 1})


def test_worker_fields_names_the_fields_within_the_block_and_restores_them(monkeypatch):
    client = _Client()
    monkeypatch.setattr(batches.tq, "get_client", lambda: client)
    batch = _batch()
    with worker_fields(batch) as b:
        assert b is batch  # in place: verl's methods update this batch's extra_info
        assert batch.fields == ["input_ids", "responses", "multi_modal_inputs", "old_log_probs"]
        batch.extra_info["temperature"] = 1.0
    assert batch.fields is None and batch.extra_info == {"a": 1, "temperature": 1.0}
    assert client.calls == [(["k0", "k1"], "train", False)]
    with pytest.raises(RuntimeError), worker_fields(batch):
        raise RuntimeError("worker failed")
    assert batch.fields is None


def test_worker_fields_leaves_an_empty_batch_alone(monkeypatch):
    monkeypatch.setattr(batches.tq, "get_client", lambda: pytest.fail("no lookup for an empty batch"))
    batch = _batch(0)
    with worker_fields(batch):
        assert batch.fields is None


class _Manager:
    def __init__(self, n):
        self.server_handles = [f"handle{i}" for i in range(n)]
        self.server_addresses = [f"addr{i}" for i in range(n)]
        self.got = None

    def get_client(self, client_cls=None, **kwargs):
        self.got = (client_cls, kwargs)
        cls = client_cls or object
        return cls(config=None, load_balancer_handle="lb", **kwargs) if client_cls else "verl's client"


def test_one_server_routes_without_the_load_balancer():
    manager = _Manager(1)
    client = branch_llm_client(manager)
    assert isinstance(client, SingleServerClient)
    assert asyncio.run(client._acquire_server("request-1")) == ("addr0", "handle0")
    assert client._release_server("addr0", request_id="request-1") is None  # no Ray call to the balancer


def test_several_servers_keep_verls_client_and_balancer():
    manager = _Manager(2)
    assert branch_llm_client(manager) == "verl's client" and manager.got == (None, {})


def test_inline_scoring_starts_no_reward_worker_actors(monkeypatch):
    from omegaconf import OmegaConf

    from recipe.copd import setup

    config = OmegaConf.create({"reward": {"num_workers": 1, "reward_model": {"enable": False}}})
    trainer = type("Trainer", (), {"config": config, "run": type("Run", (), {"inline_reward": "auto"})()})()
    monkeypatch.setattr(setup.verl_patches, "is_cpu", lambda: True)
    assert setup._reward_loop_config(trainer).reward.num_workers == 0
    assert config.reward.num_workers == 1  # the trainer's config is not changed
    monkeypatch.setattr(setup.verl_patches, "is_cpu", lambda: False)  # accelerators: verl's reward workers
    assert setup._reward_loop_config(trainer) is config


@pytest.mark.parametrize(("n", "balancer"), [(1, False), (2, True)])
def test_a_balancer_actor_is_started_only_for_several_servers(monkeypatch, n, balancer):
    from verl.workers.rollout.llm_server import LLMServerManager

    from recipe.copd.setup import BranchLLMServerManager

    started = []

    async def verls(self):
        started.append(len(self.server_handles))
        self.global_load_balancer = "balancer"

    monkeypatch.setattr(LLMServerManager, "_init_global_load_balancer", verls)
    manager = object.__new__(BranchLLMServerManager)
    manager.server_handles, manager.server_addresses = _Manager(n).server_handles, _Manager(n).server_addresses
    asyncio.run(manager._init_global_load_balancer())
    assert (started == [n]) == balancer
    assert manager.global_load_balancer == ("balancer" if balancer else None)
