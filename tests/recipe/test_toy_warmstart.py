"""Warm start (short run on a tiny model), its cache, and greedy evaluation of the saved folder."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from copd.tiny.char_tokenizer import build_char_tokenizer
from recipe.copd.toy.evaluate import evaluate_models, format_table, greedy_accuracy, greedy_answers
from recipe.copd.toy.tasks import make_problems
from recipe.copd.toy.warmstart import (
    IGNORE,
    batch_counts,
    collate,
    encode_examples,
    lr_at,
    read_manifest,
    screened_value_accuracy,
    warm_start,
)

TINY = dict(
    steps=20, lr=3e-3, batch_size=16, hidden_size=64, num_layers=2, intermediate_size=128, processes=1, threads=1
)


@pytest.fixture(scope="module")
def warm_dir(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ws") / "warm"
    warm_start(out, target_acc=None, log=lambda msg: None, **TINY)
    return out


def test_encode_and_collate_supervise_answer_and_eos_only():
    tokenizer = build_char_tokenizer()
    (ids, n_prompt), (ids2, n_prompt2) = encode_examples(
        tokenizer, [{"prompt": "3+4=", "answer": "7"}, {"prompt": "12*3=", "answer": "36"}]
    )
    assert ids[n_prompt:] == tokenizer.encode("7", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert len(ids2) == len(ids) + 2  # one more prompt char and one more answer char
    batch = collate([(ids, n_prompt), (ids2, n_prompt2)], tokenizer.pad_token_id)
    labels_B_T, mask_B_T = batch["labels"], batch["attention_mask"]
    assert labels_B_T.shape == mask_B_T.shape == (2, len(ids2))
    assert (labels_B_T != IGNORE).sum(1).tolist() == [2, 3]  # "7"+eos and "36"+eos
    assert mask_B_T.sum(1).tolist() == [len(ids), len(ids2)] and mask_B_T[0, -2:].tolist() == [0, 0]  # right padding


def test_batch_counts_follow_the_mix():
    assert batch_counts(64, {"add": 1, "mul": 2}) == {"add": 21, "mul": 43}  # 21.33 / 42.67: mul gets the spare one
    assert batch_counts(64, {"add": 1, "mul": 1}) == {"add": 32, "mul": 32}
    assert batch_counts(10, {"add": 0, "mul": 3}) == {"add": 0, "mul": 10}


def test_lr_schedule_warmup_then_cosine_to_a_tenth():
    assert lr_at(0, 100, 1.0, warmup=5) == pytest.approx(0.2)  # (0 + 1) / 5
    assert lr_at(5, 100, 1.0, warmup=5) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(100, 100, 1.0, warmup=5) == pytest.approx(0.1)  # and ends at lr / 10
    assert lr_at(52, 100, 1.0, warmup=5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 47 / 95)))


def _scored_by_flag(monkeypatch) -> list[int]:
    """``value_hits`` as each problem's own ``hit`` flag; returns the sizes of the sets it was asked to score."""
    import recipe.copd.toy.warmstart as ws

    calls: list[int] = []

    def fake_hits(model, tokenizer, problems):
        calls.append(len(problems))
        return [p["hit"] for p in problems]

    monkeypatch.setattr(ws, "value_hits", fake_hits)
    return calls


def _val(head_hits: int, tail_hits: int, n: int = 200) -> list[dict]:
    return [{"hit": i < head_hits} for i in range(50)] + [{"hit": i < tail_hits} for i in range(n - 50)]


def test_a_check_far_from_its_target_scores_only_the_first_problems(monkeypatch):
    calls = _scored_by_flag(monkeypatch)
    val = {"add": _val(10, 150), "mul": _val(50, 150)}  # add's head 0.2 < 0.6 - 0.2
    accs, screened = screened_value_accuracy(None, None, val, (0.6, 0.4))
    assert screened and accs == {"add": 0.2, "mul": 1.0}
    assert calls == [50, 50]


def test_a_check_near_its_target_scores_the_whole_set(monkeypatch):
    calls = _scored_by_flag(monkeypatch)
    val = {"add": _val(20, 100), "mul": _val(10, 70)}  # heads 0.4 and 0.2: both at their target - 0.2
    accs, screened = screened_value_accuracy(None, None, val, (0.6, 0.4))
    assert not screened and accs == {"add": 0.6, "mul": 0.4}
    assert sorted(calls) == [50, 50, 150, 150]


def test_a_validation_set_no_larger_than_the_screen_is_checked_whole(monkeypatch):
    _scored_by_flag(monkeypatch)
    val = {"add": [{"hit": False}] * 4, "mul": [{"hit": True}] * 4}
    assert screened_value_accuracy(None, None, val, (1.0, 1.0)) == ({"add": 0.0, "mul": 1.0}, False)


def test_warm_start_trains_saves_and_loads(warm_dir):
    manifest = read_manifest(warm_dir)
    assert manifest["steps_done"] == 20 and len(manifest["loss_curve"]) == 20
    curve = manifest["loss_curve"]
    assert sum(curve[-5:]) / 5 < 0.8 * sum(curve[:5]) / 5  # the loss went down
    model = AutoModelForCausalLM.from_pretrained(warm_dir)
    tokenizer = AutoTokenizer.from_pretrained(warm_dir)
    assert model.config.hidden_size == 64 and model.dtype == torch.float32
    assert tokenizer.padding_side == "left" and tokenizer.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert not list(warm_dir.parent.glob(".warm.*"))  # no temp folder left behind


def test_warm_start_cache_hit_and_miss(warm_dir):
    stamp = (warm_dir / "model.safetensors").stat().st_mtime_ns
    logs = []
    assert warm_start(warm_dir, target_acc=None, log=logs.append, **TINY) == warm_dir
    assert any("cache hit" in m for m in logs) and (warm_dir / "model.safetensors").stat().st_mtime_ns == stamp
    other = warm_dir.parent / "other"
    warm_start(other, target_acc=None, log=lambda msg: None, **{**TINY, "steps": 2})
    assert read_manifest(other)["hash"] != read_manifest(warm_dir)["hash"]


def test_warm_start_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a warm start folder"):
        warm_start(tmp_path, log=lambda msg: None, **TINY)


def test_warm_start_stops_early_at_targets(tmp_path):
    kw = dict(target_acc=(0.0, 0.0), eval_every=3, n_val=4, log=lambda m: None, **TINY)
    manifest = read_manifest(warm_start(tmp_path / "w", anneal_steps=0, **kw))
    assert manifest["steps_done"] == 3 and manifest["target_reached_at"] == 3
    assert set(manifest["val_accuracy"]) == set(manifest["val_value_accuracy"]) == {"add", "mul"}
    # with an anneal: the targets are reached at step 3, then 4 steps of decaying learning rate, then the stop
    annealed = read_manifest(warm_start(tmp_path / "a", anneal_steps=4, **kw))
    assert annealed["target_reached_at"] == 3 and annealed["steps_done"] == 7


def test_warm_start_warns_when_it_stops_short_of_its_targets(tmp_path):
    lines = []
    kw = dict(target_acc=(1.0, 1.0), eval_every=3, n_val=4, anneal_steps=0, log=lines.append, **TINY)
    manifest = read_manifest(warm_start(tmp_path / "w", **kw))
    assert manifest["target_reached_at"] is None
    assert sum("warning: stopped before its targets" in line for line in lines) == 1
    warm_start(tmp_path / "w", **kw)  # the cache hit says it again
    assert sum("warning: stopped before its targets" in line for line in lines) == 2


def test_data_parallel_processes_train_as_one_process_does(tmp_path):
    """Two 1-thread children (the default's path) sum the gradients of the whole batch's mean token loss: the same
    run as one process, up to float rounding, with the same validation checks, stop and saved folder."""
    kw = dict(target_acc=(0.0, 0.0), eval_every=5, n_val=9, anneal_steps=3, **{**TINY, "steps": 12})
    alone = read_manifest(warm_start(tmp_path / "one", log=lambda m: None, **kw))
    lines = []
    two = read_manifest(warm_start(tmp_path / "two", log=lines.append, **{**kw, "processes": 2}))
    assert two["hash"] == alone["hash"]  # the same recipe: the cache does not care how it was trained
    assert two["steps_done"] == alone["steps_done"] == 8 and two["target_reached_at"] == 5
    assert two["loss_curve"] == pytest.approx(alone["loss_curve"], abs=1e-4)
    assert two["val_value_accuracy"] == alone["val_value_accuracy"]  # 9 problems split 5 / 4 and summed
    assert any("2 processes of 1 thread" in line for line in lines)  # rank 0's lines reach the caller's log
    assert any("targets [0.0, 0.0] reached at step 5" in line for line in lines)
    one_w = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    two_w = AutoModelForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    assert max((one_w[k] - two_w[k]).abs().max().item() for k in one_w) < 1e-4
    assert "eager" not in (tmp_path / "two" / "config.json").read_text()  # training's attention stays out of it


def test_the_ranks_validation_shares_count_every_problem_once():
    """Each rank scores its share and the hits are summed: over the ranks, every problem is counted exactly once."""
    import recipe.copd.toy.warmstart as ws

    class LocalRank(ws.Group):  # the sum across ranks done below by hand, without a process group
        def sum_(self, tensor):
            return tensor

    val = {"add": [{"hit": i % 3 == 0} for i in range(9)], "mul": [{"hit": i != 2} for i in range(5)]}
    scored: list[dict] = []

    def score(problems):
        scored.extend(problems)
        return [p["hit"] for p in problems]

    ranks = [ws._hit_counts(score, val, LocalRank(rank, 2)) for rank in range(2)]
    assert {s: ranks[0][s] + ranks[1][s] for s in val} == ws._hit_counts(score, val, ws.SOLO) == {"add": 3, "mul": 4}
    assert len(scored) == 2 * (9 + 5)  # the two ranks' shares, then the whole sets once


def test_a_failed_training_process_raises_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")  # rank 0 cannot save under it
    with pytest.raises(RuntimeError, match="training process 0 of 2 exited with code 1"):
        warm_start(tmp_path / "file" / "w", target_acc=None, log=lambda m: None, **{**TINY, "steps": 2, "processes": 2})


def test_warm_start_rejects_bad_processes(tmp_path):
    for bad in (0, True, 17):  # 17 > batch_size 16
        with pytest.raises(ValueError, match="processes="):
            warm_start(tmp_path / "w", log=lambda m: None, **{**TINY, "processes": bad})


def test_warm_start_rejects_a_bad_anneal(tmp_path):
    with pytest.raises(ValueError, match="anneal_steps"):
        warm_start(tmp_path / "w", anneal_steps=-1, log=lambda m: None, **TINY)


def test_batched_greedy_equals_one_by_one(warm_dir):
    """Left padding must not change greedy answers (prompts of different lengths share a batch)."""
    model = AutoModelForCausalLM.from_pretrained(warm_dir)
    tokenizer = AutoTokenizer.from_pretrained(warm_dir)
    prompts = [p["prompt"] for p in make_problems("add", 3, 0, "test") + make_problems("mul", 3, 0, "test")]
    batched = greedy_answers(model, tokenizer, prompts, batch_size=6, max_new_tokens=4)
    assert batched == [greedy_answers(model, tokenizer, [p], max_new_tokens=4)[0] for p in prompts]


def test_greedy_accuracy_counts_exact_matches(warm_dir):
    model = AutoModelForCausalLM.from_pretrained(warm_dir)
    tokenizer = AutoTokenizer.from_pretrained(warm_dir)
    problems = make_problems("add", 4, 0, "test")
    answers = greedy_answers(model, tokenizer, [p["prompt"] for p in problems])
    # Ground truth replaced by the model's own answers: all correct; by an impossible answer: none.
    assert (
        greedy_accuracy(model, tokenizer, [{**p, "answer": a.strip()} for p, a in zip(problems, answers, strict=True)])
        == 1.0
    )
    assert greedy_accuracy(warm_dir, None, [{**p, "answer": "x"} for p in problems]) == 0.0


def test_evaluate_models_and_table(warm_dir):
    problems = {"add": make_problems("add", 4, 0, "test"), "mul": make_problems("mul", 4, 0, "test")}
    results = evaluate_models({"base": warm_dir, "base again": str(warm_dir)}, problems)
    assert list(results) == ["base", "base again"] and results["base"] == results["base again"]
    assert all(0.0 <= acc <= 1.0 for acc in results["base"].values())
    assert format_table(results).splitlines()[2].startswith("base ")


def test_evaluation_scores_do_not_depend_on_its_batch_or_threads(warm_dir):
    from recipe.copd.toy.evaluate import evaluate_scores

    problems = {"add": make_problems("add", 40, 0, "test"), "mul": make_problems("mul", 40, 0, "test")}
    before = torch.get_num_threads()
    small = evaluate_scores({"base": warm_dir}, problems, batch_size=7, threads=1)
    large = evaluate_scores({"base": warm_dir}, problems, batch_size=512, threads=2)
    assert small == large and len(large["base"]["add"]) == 40
    assert torch.get_num_threads() == before  # the evaluation's threads are restored
