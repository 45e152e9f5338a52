"""Table 1's layout from per-benchmark scores: averages, bold best, missing values."""

import pytest

from recipe.copd.data.common import info, make_row, write_parquet
from recipe.copd.eval import EvalError, loadable_groups, parse_benchmarks
from recipe.copd.table import build_table, render_markdown


def test_averages_by_hand():
    scores = {"base": {"aime24": 10.0, "math500": 50.0, "mmmu": 40.0}, "copd": {"aime24": 20.0, "math500": 60.0,
              "mmmu": 30.0}}  # fmt: skip
    table = build_table(scores, {"aime24": 30, "math500": 500, "mmmu": 900})
    rows = {r["name"]: r for r in table["rows"]}
    assert [r["name"] for r in table["rows"]] == ["mmmu", "image_avg", "aime24", "math500", "text_avg", "overall"]
    assert rows["text_avg"]["values"] == {"base": 30.0, "copd": 40.0}  # (10+50)/2, (20+60)/2
    assert rows["image_avg"]["values"] == {"base": 40.0, "copd": 30.0}
    assert rows["overall"]["values"] == {"base": 35.0, "copd": 35.0}  # mean of the two group averages
    assert rows["text_avg"]["n"] == 530 and rows["overall"]["n"] == 1430
    md = render_markdown(table)
    assert "| MMMU | **40.00** | 30.00 | 900 |" in md and "| *Overall avg* | **35.00** | **35.00** | 1430 |" in md


def test_missing_benchmark_leaves_the_average_blank():
    table = build_table({"a": {"aime24": 10.0, "aime25": 5.0}, "b": {"aime24": 20.0}}, {"aime24": 30, "aime25": 30})
    avg = next(r for r in table["rows"] if r["name"] == "text_avg")
    assert avg["values"] == {"a": 7.5, "b": None}
    assert "| AIME25 | 5.00 | - | 30 |" in render_markdown(table)


def test_benchmark_spec():
    assert parse_benchmarks("text") == ["aime24", "aime25", "hmmt25", "math500", "minerva_math"]
    assert parse_benchmarks("mvbench,aime24") == ["aime24", "mvbench"]
    assert len(parse_benchmarks("all")) == 14
    with pytest.raises(EvalError, match="not a group"):
        parse_benchmarks("gsm8k")


def test_eval_bad_input_exits_2_before_any_run(tmp_path, capsys):
    from recipe.copd.eval import main

    (tmp_path / "m").mkdir()
    cases = [
        (["--models", f"a={tmp_path / 'nope'}", "--data", str(tmp_path)], "not a folder"),
        (["--models", "nameless", "--data", str(tmp_path)], "NAME=PATH"),
        (["--models", f"a={tmp_path / 'm'}", "--data", str(tmp_path), "--benchmarks", "gsm8k"], "not a group"),
        (["--models", f"a={tmp_path / 'm'}", "--data", str(tmp_path), "--benchmarks", "aime24"], "no aime24.parquet"),
        (["--models", f"a={tmp_path / 'm'}", "--data", str(tmp_path), "--n", "4"], "--temperature > 0"),
    ]
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("copd.eval: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("preset", ["qwen3vl_text_image", "qwen3vl_text_image_video_hub", "baselines/mopd"])
def test_eval_overrides_compose_with_every_kind_of_preset(preset, tmp_path, monkeypatch):
    """The recipe command that the evaluation runs validates on a pair, a hub and an edges preset."""
    from argparse import Namespace
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from recipe.copd.eval import recipe_command
    from recipe.copd.preflight import copd_config_from

    for var in ("COPD_DATA", "COPD_TEXT_EXPERT", "COPD_IMAGE_EXPERT", "COPD_VIDEO_EXPERT"):
        monkeypatch.setenv(var, str(tmp_path))
    root = Path(__file__).resolve().parents[2]
    args = Namespace(n=1, temperature=0.0, top_p=1.0, config_name=preset, config_path=str(root / "configs"))
    cmd = recipe_command(str(tmp_path), ["/d/aime24.parquet", "/d/mmmu.parquet"], str(tmp_path / "run"), args, [])
    overrides = cmd[cmd.index(preset) + 1 :]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(root / "configs"), version_base=None):
        cfg = compose(config_name=preset, overrides=overrides)
    copd = copd_config_from(cfg)
    assert [b.name for b in copd.branches] == ["eval"] and copd.pairs == []
    assert list(copd.branches[0].val_files) == ["/d/aime24.parquet", "/d/mmmu.parquet"]
    assert cfg.trainer.val_only and cfg.reward.custom_reward_function.path == "pkg://recipe.copd.reward"


def test_files_verl_cannot_load_together_go_to_separate_runs(tmp_path):
    """Text and image files load as one dataset; videos as frame lists and as paths do not (datasets refuses to
    align the two struct types), so the path file starts a second group."""
    row = lambda **media: make_row("x", "x", "q", "1", info("math", 0, "test"), **media)  # noqa: E731
    files = {
        "text": row(),
        "image": row(images=[b"png"]),
        "frames": row(videos=[{"video": ["a.jpg", "b.jpg"]}]),
        "path": row(videos=[{"video": "a.mp4"}]),
        "text2": row(),
    }
    paths = {}
    for name, r in files.items():
        paths[name] = str(tmp_path / f"{name}.parquet")
        write_parquet([r], paths[name])
    groups = loadable_groups(paths)
    assert [list(g) for g in groups] == [["text", "image", "frames", "text2"], ["path"]]
