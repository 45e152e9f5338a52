"""The `hf` rollout: HF transformers generation behind verl's server-mode rollout interface (the CPU stand-in for
vLLM). `verl_patches.patches.register_hf_rollout` registers it; nothing heavy is imported here."""

#: Where verl's `get_rollout_class("hf", "async")` finds the in-worker adapter.
ADAPTER_FQN = "verl_patches.hf_rollout.adapter.HFServerAdapter"


def load_replica_class():
    """Loader for `RolloutReplicaRegistry` (imports the replica only when `rollout.name=hf` is used)."""
    from verl_patches.hf_rollout.replica import HFReplica

    return HFReplica
