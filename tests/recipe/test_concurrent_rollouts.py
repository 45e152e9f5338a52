"""The driver's concurrent rollouts (``copd.run.concurrent_rollouts``): every branch submits, one replay-buffer
sample comes back, and each branch gets exactly its own rows in submission order. Orchestration only: the
branches, servers and replay buffer are fakes; the e2e tests run the real path on the hf rollout."""

import random
from types import SimpleNamespace

import pytest
from tensordict import TensorDict
from transfer_queue import KVBatchMeta

from recipe.copd.rollout import uid_of_key
from recipe.copd.trainer import CoPDTrainer

N_SAMPLES = 2


class FakeBranch:
    def __init__(self, name: str, prompts: int, log: list):
        self.name, self.prompts, self.log, self.has_data = name, prompts, log, True
        self.spec = SimpleNamespace(frozen=False)
        self.cross_streams = {}
        self.checkpoint_manager = SimpleNamespace(
            update_weights=lambda step: log.append(("wake", name)), sleep_replicas=lambda: log.append(("sleep", name))
        )

    def _next_train_batch(self):
        return TensorDict({}, batch_size=self.prompts)

    def _submit_batch_to_rollout(self, batch):
        self.log.append(("submit", self.name))
        return len(batch)

    def _balance_batch(self, batch, metrics):
        return batch

    def dp_size(self):
        return 1


class FakeReplayBuffer:
    """Returns every submitted prompt's samples, shuffled (arrival order), once all branches submitted."""

    def __init__(self, trainer, log):
        self.trainer, self.log = trainer, log

    def sample(self, step, partition_id, batch_size):
        uids = [u for name in list(self.trainer.pending) for u in self.trainer.pending.pop(name)]
        assert len(uids) == batch_size
        keys = [f"{u}_{s}_0" for u in uids for s in range(N_SAMPLES)]
        random.Random(0).shuffle(keys)
        self.log.append(("sample", batch_size))
        return KVBatchMeta(partition_id=partition_id, keys=keys, tags=[{} for _ in keys]), {}


def _trainer(setting="auto", placement="colocate", rollout="hf", prompts=(3, 2)):
    log = []
    t = CoPDTrainer.__new__(CoPDTrainer)
    branches = [FakeBranch(name, p, log) for name, p in zip(("add", "mul"), prompts, strict=True)]
    t.branches = {b.name: b for b in branches}
    t.teachers = {b.name: [] for b in branches}
    t.run = SimpleNamespace(concurrent_rollouts=setting)
    t.copd = SimpleNamespace(placement=placement)
    rollout_cfg = SimpleNamespace(name=rollout, temperature=1.0)
    t.config = SimpleNamespace(actor_rollout_ref=SimpleNamespace(rollout=rollout_cfg))
    t.copd_seed, t.global_steps = 0, 1
    t._branch_timing = {b.name: {} for b in branches}
    t.submitted_uids, t.pending = {}, {}
    stamp = t._with_stable_uids

    def with_uids(batch, branch, part):
        batch = stamp(batch, branch, part)
        t.submitted_uids[branch] = list(batch["uid"])
        t.pending[branch] = list(batch["uid"])
        return batch

    t._with_stable_uids = with_uids
    t.replay_buffer = FakeReplayBuffer(t, log)
    return t, log


@pytest.mark.parametrize(
    ("setting", "placement", "rollout", "together"),
    [("auto", "colocate", "hf", True), ("auto", "split", "vllm", True), ("auto", "colocate", "vllm", False),
     (True, "colocate", "vllm", True), (False, "split", "hf", False)],
)  # fmt: skip
def test_when_branches_generate_together(setting, placement, rollout, together):
    assert _trainer(setting, placement, rollout)[0]._rollouts_together() is together


def test_each_branch_gets_its_own_rows_in_submission_order():
    t, log = _trainer()
    timing = {}
    rollouts = t._rollout_together(opd=False, timing_raw=timing)
    # all servers woken and all prompts submitted before the one sample; sleeps after it
    assert [e[0] for e in log] == ["wake", "wake", "submit", "submit", "sample", "sleep", "sleep"]
    assert log[4] == ("sample", 5)
    for name, prompts in (("add", 3), ("mul", 2)):
        r = rollouts[name]
        assert r.n_prompts == prompts and len(r) == prompts * N_SAMPLES
        expected = [f"{u}_{s}_0" for u in t.submitted_uids[name] for s in range(N_SAMPLES)]
        assert r.batch.keys == expected  # arrival-independent: prompt order, then sample
        assert {uid_of_key(k) for k in r.batch.keys} == set(t.submitted_uids[name])
    assert timing["gen"] >= 0 and t._branch_timing["add"]["gen"] == pytest.approx(timing["gen"] / 2)


def test_in_turn_each_branch_wakes_generates_and_sleeps_before_the_next():
    t, log = _trainer(rollout="vllm")
    rollouts = t._rollout_in_turn(opd=False, timing_raw={})
    assert [e[0] for e in log] == ["wake", "submit", "sample", "sleep"] * 2
    assert [e[1] for e in log if e[0] == "sample"] == [3, 2]
    assert [len(rollouts[n]) for n in ("add", "mul")] == [3 * N_SAMPLES, 2 * N_SAMPLES]


def test_per_branch_at_once_overlaps_the_branches_and_raises_their_error():
    import time

    t, _ = _trainer(placement="split")
    timing = {}

    def slow(b):
        time.sleep(0.3)

    start = time.perf_counter()
    t._per_branch("update_actor", slow, timing, at_once=True)
    assert time.perf_counter() - start < 0.55  # two 0.3 s calls in parallel, not 0.6 s in turn
    assert 0.3 <= timing["update_actor"] < 0.55 and t._branch_timing["mul"]["update_actor"] >= 0.3
    t._per_branch("adv", slow, timing, at_once=False)
    assert timing["adv"] >= 0.6  # in turn: the sum

    def fails(b):
        if b.name == "mul":
            raise RuntimeError("mul broke")

    with pytest.raises(RuntimeError, match="mul broke"):
        t._per_branch("update_actor", fails, timing, at_once=True)
