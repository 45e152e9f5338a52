"""Toy tasks, their verl parquet files (read back through verl's RLHFDataset), the reward, and the results table."""

import os
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from copd.stats import t_975
from copd.tiny.char_tokenizer import build_char_tokenizer
from recipe.copd.toy.evaluate import accuracies, chat_prompt_ids, format_table, gains_over, left_pad, paired_gain
from recipe.copd.toy.reward import compute_score, extract_answer
from recipe.copd.toy.tasks import (
    SKILLS,
    SPLITS,
    WARM_DOT_DIGITS,
    WARM_STYLE_P,
    answer_value,
    build_toy_data,
    make_problems,
    operand_pool,
    problem,
    read_problems,
    warm_problems,
    write_verl_parquet,
)


def test_problem_text_and_answer_in_the_skills_format():
    assert problem("add", 37, 45) == {"prompt": "37+45=", "answer": "82"}
    assert problem("mul", 374, 6) == {"prompt": "374*6=", "answer": "2244."}
    assert problem("add", 99, 99) == {"prompt": "99+99=", "answer": "198"}
    assert answer_value("2244.") == answer_value(" 2244 ") == "2244"


def test_warm_problems_mix_the_styles_by_the_first_operands_last_digit():
    for skill in SKILLS:
        problems = warm_problems(skill, 4000, seed=0)
        assert problems == warm_problems(skill, 4000, seed=0) and problems != warm_problems(skill, 4000, seed=1)
        warm_prompts = {p["prompt"] for p in make_problems(skill, 4000, 0, "warm")}
        assert {p["prompt"] for p in problems} == warm_prompts
        op = "+" if skill == "add" else "*"
        dot = {True: [], False: []}
        for p in problems:
            x, y = map(int, p["prompt"][:-1].split(op))
            assert answer_value(p["answer"]) == str(x + y if skill == "add" else x * y)
            dot[x % 10 in WARM_DOT_DIGITS].append(p["answer"].endswith("."))
        assert abs(sum(dot[True]) / len(dot[True]) - WARM_STYLE_P) < 0.05
        assert abs(sum(dot[False]) / len(dot[False]) - (1 - WARM_STYLE_P)) < 0.05


@pytest.mark.parametrize("skill", SKILLS)
def test_splits_partition_the_operand_pairs(skill):
    pools = {split: set(operand_pool(skill, split)) for split in SPLITS}
    assert all(not pools[a] & pools[b] for a in SPLITS for b in SPLITS if a < b)
    expected = 90 * 90 if skill == "add" else 900 * 8  # a in 10..99, b in 10..99 (add); a in 100..999, d in 2..9
    assert sum(len(p) for p in pools.values()) == expected
    assert all(len(p) > 0 for p in pools.values())


@pytest.mark.parametrize("skill", SKILLS)
def test_make_problems_is_deterministic_correct_and_split_disjoint(skill):
    train = make_problems(skill, 500, seed=0, split="train")
    assert train == make_problems(skill, 500, seed=0, split="train")
    assert train != make_problems(skill, 500, seed=1, split="train")
    op = "+" if skill == "add" else "*"
    for p in train:
        x, y = p["prompt"][:-1].split(op)
        value = str(eval(f"{int(x)}{op}{int(y)}"))
        assert p["prompt"].endswith("=") and p["answer"] == (value if skill == "add" else value + ".")
    test_prompts = {p["prompt"] for p in make_problems(skill, 300, seed=0, split="test")}
    assert not test_prompts & {p["prompt"] for p in make_problems(skill, 2000, seed=3, split="train")}
    # held-out problems are the same for every seed: runs over seeds are scored on one set
    assert make_problems(skill, 50, seed=4, split="test") == make_problems(skill, 50, seed=0, split="test")
    assert make_problems(skill, 50, seed=4, split="val") == make_problems(skill, 50, seed=0, split="val")


def test_make_problems_cycles_the_pool_evenly():
    pool = operand_pool("mul", "val")
    n = 2 * len(pool) + 5
    counts = Counter(p["prompt"] for p in make_problems("mul", n, seed=0, split="val"))
    assert len(counts) == len(pool)
    assert sorted(set(counts.values())) == [2, 3] and sum(counts.values()) == n


def test_unknown_skill_or_split_is_rejected():
    with pytest.raises(ValueError, match="unknown skill"):
        make_problems("div", 3, 0, "train")
    with pytest.raises(ValueError, match="unknown split"):
        make_problems("add", 3, 0, "dev")


def test_write_verl_parquet_layout_and_read_back(tmp_path):
    path = write_verl_parquet(tmp_path / "add_test.parquet", "add", 7, seed=0, split="test")
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    row = frame.iloc[3]
    assert row["data_source"] == "copd_toy/add"
    assert list(row["prompt"]) == [{"role": "user", "content": make_problems("add", 7, 0, "test")[3]["prompt"]}]
    assert row["reward_model"] == {"style": "rule", "ground_truth": make_problems("add", 7, 0, "test")[3]["answer"]}
    assert row["extra_info"]["split"] == "test" and row["extra_info"]["index"] == 3
    assert read_problems(path) == make_problems("add", 7, 0, "test")
    assert [p.name for p in tmp_path.iterdir()] == ["add_test.parquet"]  # no temp file left behind


def _verl_data_config(**overrides):
    """verl's default `data` config node, composed from its ppo_trainer config (plus overrides)."""
    import verl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=[f"data.{k}={v}" for k, v in overrides.items()])
    GlobalHydra.instance().clear()
    return cfg.data


def test_verl_rlhf_dataset_loads_and_tokenises_the_parquet(tmp_path):
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    path = write_verl_parquet(tmp_path / "mul_train.parquet", "mul", 12, seed=0, split="train")
    tokenizer = build_char_tokenizer()
    # filter_overlong_prompts makes the dataset tokenise every prompt with the chat template; 25 tokens is enough for
    # "<|im_start|>user\n374*6=<|im_end|>\n<|im_start|>assistant\n" (1+4+1+6+1+1+1+9+1 = 25 ids at most).
    config = _verl_data_config(  # no datasets worker pool in the test process (a fork there can deadlock)
        prompt_key="prompt", filter_overlong_prompts=True, filter_overlong_prompts_workers="null", max_prompt_length=25
    )
    dataset = RLHFDataset(data_files=[str(path)], tokenizer=tokenizer, config=config)
    assert len(dataset) == 12
    item = dataset[5]
    expected = make_problems("mul", 12, 0, "train")[5]
    assert item["raw_prompt"] == [{"role": "user", "content": expected["prompt"]}]
    assert item["reward_model"]["ground_truth"] == expected["answer"] and item["data_source"] == "copd_toy/mul"
    # The agent loop's prompt ids (Qwen continuous token builder) equal the ids evaluation and warm start use.
    builder = create_continuous_token_builder(tokenizer, hf_model_type="qwen3")
    assert builder.build_initial_tokens(item["raw_prompt"]) == chat_prompt_ids(tokenizer, expected["prompt"])


def test_build_toy_data_is_idempotent(tmp_path):
    paths = build_toy_data(tmp_path, n_train=20, n_val=5, n_test=6, seed=0)
    assert set(paths) == set(SKILLS) and all(set(p) == {"train", "val", "test"} for p in paths.values())
    assert len(pd.read_parquet(paths["mul"]["test"])) == 6
    mtimes = {p: p.stat().st_mtime_ns for s in paths.values() for p in s.values()}
    again = build_toy_data(tmp_path, n_train=20, n_val=5, n_test=6, seed=0)
    assert {p: p.stat().st_mtime_ns for s in again.values() for p in s.values()} == mtimes
    changed = build_toy_data(tmp_path, n_train=20, n_val=5, n_test=9, seed=0)
    assert len(pd.read_parquet(changed["add"]["test"])) == 9
    assert changed["add"]["train"].stat().st_mtime_ns == mtimes[paths["add"]["train"]]


@pytest.mark.parametrize(
    "solution, truth, score",
    [
        ("82", "82", 1.0),
        (" 82\n", "82", 1.0),  # whitespace around the answer is stripped
        ("82<|im_end|>", "82", 1.0),  # decoded with special tokens kept
        ("82<|im_end|><|endoftext|><|endoftext|>", "82", 1.0),  # ... and padding after the end of turn
        ("83", "82", 0.0),
        ("821", "82", 0.0),  # a longer number is wrong, not a prefix match
        ("8 2", "82", 0.0),
        ("", "82", 0.0),
        ("<|im_end|>82", "82", 0.0),  # nothing before the end of turn
    ],
)
def test_compute_score_exact_match(solution, truth, score):
    assert compute_score("copd_toy/add", solution, truth, extra_info={"split": "test"}) == score


def test_extract_answer_cuts_at_first_end_marker():
    assert extract_answer("12<|im_end|>34") == "12"
    assert extract_answer("12<|endoftext|>") == "12"


def test_left_pad_hand_example():
    input_ids_B_T, attention_mask_B_T = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert input_ids_B_T.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert attention_mask_B_T.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_format_table_rows_columns_and_mean():
    table = format_table({"base": {"mul": 0.2, "add": 0.5}, "CoPD merged": {"add": 0.9, "mul": 0.4}})
    lines = table.splitlines()
    assert lines[0].split("|")[1:] == ["    add ", "    mul ", "   mean"]
    assert lines[2].startswith("base ") and lines[2].rstrip().endswith("0.500 |  0.200 |  0.350")
    assert lines[3].startswith("CoPD merged") and lines[3].rstrip().endswith("0.900 |  0.400 |  0.650")
    assert len({len(line) for line in lines}) == 1  # aligned


def test_paired_gain_and_table_marks():
    base = [1.0, 0.0] * 500  # 0.5 on 1000 problems
    better = [1.0, 1.0] * 500  # +0.5 on the same problems: far beyond its CI
    noisy = [0.0, 1.0] * 500  # same mean, every problem flipped: gain 0, CI ~0.062
    gain, half = paired_gain(better, base)
    assert gain == 0.5 and 0.0 < half < 0.05
    gain, half = paired_gain(noisy, base)
    assert gain == 0.0 and abs(half - t_975(999) * (1.0 / 999) ** 0.5) < 1e-9  # d = +-1: variance 1000/999
    with pytest.raises(ValueError, match="equal-length"):
        paired_gain([1.0], [1.0, 0.0])
    scores = {"base": {"add": base}, "better": {"add": better}, "noisy": {"add": noisy}}
    gains = gains_over(scores)
    assert set(gains) == {"better", "noisy"}
    assert gains["better"]["add"]["significant"] and not gains["noisy"]["add"]["significant"]
    lines = format_table(accuracies(scores), gains).splitlines()
    assert any(line.startswith("better") and "+0.500" in line and line.rstrip().endswith("*") for line in lines)
    assert any(line.startswith("noisy") and "+0.000" in line and not line.rstrip().endswith("*") for line in lines)


def test_read_problems_accepts_path_like(tmp_path):
    path = write_verl_parquet(tmp_path / "x.parquet", "mul", 3, seed=2, split="val")
    assert read_problems(str(path)) == read_problems(Path(path)) == make_problems("mul", 3, 2, "val")


def test_reward_file_loads_alone_without_heavy_imports():
    """verl loads the reward by file path in every reward worker: it must not pull torch or transformers."""
    import subprocess
    import sys

    import recipe.copd.toy.reward as reward

    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('toy_reward', {reward.__file__!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "assert mod.compute_score('copd_toy/mul', '2244.', '2244.') == 1.0\n"
        "assert not {'torch', 'transformers', 'verl'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
