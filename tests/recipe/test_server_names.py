"""K branches' vLLM servers get distinct Ray actor names, on the replica side and the worker-adapter side alike."""

import importlib.util
import types
from pathlib import Path

from recipe.copd.setup import server_name_prefix, with_server_name_prefix
from recipe.copd.worker import CoPDActorRolloutRefWorker


class _FakeReplica:
    """Names its server the way verl's vLLMReplica does: ``{prefix}server_{replica_rank}_{node_rank}``."""

    def __init__(self, replica_rank: int):
        self.replica_rank = replica_rank

    def _get_server_name_prefix(self) -> str:
        return "vllm_"

    def server_name(self, node_rank: int = 0) -> str:
        return f"{self._get_server_name_prefix()}server_{self.replica_rank}_{node_rank}"


class _FakeAdapter:
    """Looks its server up the way verl's vLLM ServerAdapter does."""

    replica_rank, node_rank = 0, 0

    def _get_server_name_prefix(self) -> str:
        return "vllm_"

    def server_name(self) -> str:
        return f"{self._get_server_name_prefix()}server_{self.replica_rank}_{self.node_rank}"


def test_branches_get_distinct_names_that_both_sides_agree_on():
    names = {}
    for branch in ("add", "mul"):
        prefix = server_name_prefix("vllm", branch)
        replica = with_server_name_prefix(_FakeReplica, prefix, branch)(replica_rank=0)
        worker = types.SimpleNamespace(rollout=_FakeAdapter())
        assert CoPDActorRolloutRefWorker.copd_set_server_name_prefix(worker, prefix) is True
        assert replica.server_name() == worker.rollout.server_name()  # the adapter finds its own branch's server
        names[branch] = replica.server_name()
    assert names["add"] != names["mul"]
    assert names["add"] == "vllm_copd_add_server_0_0"


def test_replica_without_the_hook_is_left_alone():
    class NoHook:
        pass

    assert with_server_name_prefix(NoHook, "x_", "add") is NoHook
    assert CoPDActorRolloutRefWorker.copd_set_server_name_prefix(types.SimpleNamespace(rollout=None), "x_") is False


def test_verl_vllm_names_its_servers_through_the_hook_on_both_sides():
    """The fix relies on verl 0.9.1's vLLM code calling `_get_server_name_prefix()` where it names and looks up."""
    spec = importlib.util.find_spec("verl")
    root = Path(spec.origin).parent / "workers" / "rollout" / "vllm_rollout"
    replica_src = (root / "vllm_async_server.py").read_text()
    adapter_src = (root / "vllm_rollout.py").read_text()
    assert 'name = f"{prefix}server_{self.replica_rank}_{node_rank}{self.name_suffix}"' in replica_src
    assert "prefix = self._get_server_name_prefix()" in replica_src
    assert 'actor_name = f"{prefix}server_{self.replica_rank}_{self.node_rank}"' in adapter_src
    assert "prefix = self._get_server_name_prefix()" in adapter_src
