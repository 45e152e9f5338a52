"""``python -m recipe.copd.data``: each data set's public layout -> verl rows that verl's RLHFDataset reads and
the built-in scorers score; bad input -> one line naming the row and the field, exit 2, no file."""

import os
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from verl.utils.dataset.rl_dataset import RLHFDataset

from recipe.copd import reward
from recipe.copd.data.__main__ import main
from recipe.copd.data.registry import DATASETS
from tests.recipe.data.public_layouts import WRITERS

MEDIA_ROOT = {"videomathqa": "videomathqa"}  # the parquet config folder sits beside videos/


def _convert(name: str, tmp_path: Path, capsys=None, **kw) -> pd.DataFrame:
    src = WRITERS[name](tmp_path / "src")
    args = [name, "--input", str(src), "--output", str(tmp_path / "out"), "--name", name]
    if name in MEDIA_ROOT:
        args += ["--media-root", str(tmp_path / "src" / MEDIA_ROOT[name])]
    assert main(args) == 0
    return pd.read_parquet(tmp_path / "out" / f"{name}.parquet")


def _perfect(gt: str, info: dict) -> str:
    return f"Let me think.\nThe answer is \\boxed{{{gt}}}"


def test_every_registered_name_has_a_fixture():
    assert set(WRITERS) == set(DATASETS)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_public_layout_converts_to_verl_rows(name, tmp_path):
    df = _convert(name, tmp_path)
    spec = DATASETS[name]
    assert len(df) >= 1 and set(df.data_source) == {spec.data_source}
    for _, row in df.iterrows():
        content = row.prompt[0]["content"]
        images = row.get("images") if "images" in df else None
        videos = row.get("videos") if "videos" in df else None
        n_img = 0 if images is None or (isinstance(images, float)) else len(images)
        n_vid = 0 if videos is None or (isinstance(videos, float)) else len(videos)
        assert content.count("<image>") == n_img and content.count("<video>") == n_vid
        if spec.group == "image" and spec.role == "eval":
            assert n_img >= 1
        for v in [] if n_vid == 0 else list(videos):
            paths = v["video"] if isinstance(v["video"], str) else list(v["video"])
            assert all(os.path.exists(p) for p in ([paths] if isinstance(paths, str) else paths))
        gt = row.reward_model["ground_truth"]
        info = dict(row.extra_info)
        assert reward.compute_score(row.data_source, _perfect(gt, info), gt, info) == 1.0
        assert reward.compute_score(row.data_source, "\\boxed{Zq}", gt, info) == 0.0


def _dataset(path: Path, tokenizer=None) -> RLHFDataset:
    cfg = OmegaConf.create({"max_prompt_length": 4096, "filter_overlong_prompts": False, "return_raw_chat": True})
    return RLHFDataset(data_files=[str(path)], tokenizer=tokenizer, config=cfg, processor=None)


def test_text_rows_load_through_verl_rlhf_dataset(tmp_path):
    from recipe.copd.toy.tokenizer import build_char_tokenizer

    _convert("math500", tmp_path)
    ds = _dataset(tmp_path / "out" / "math500.parquet", build_char_tokenizer())
    item = ds[0]
    assert item["data_source"] == "math500" and item["reward_model"]["ground_truth"] == "2"
    assert "\\boxed{}" in item["raw_prompt"][0]["content"]


@pytest.mark.parametrize("name", ["mmmu", "video_r1", "mvbench"])
def test_media_rows_become_verl_vision_messages(name, tmp_path):
    """verl's own ``_build_messages`` turns our placeholders into image/video segments (the processor, which
    needs torchvision, is not run here)."""
    from recipe.copd.toy.tokenizer import build_char_tokenizer

    _convert(name, tmp_path)
    ds = _dataset(tmp_path / "out" / f"{name}.parquet", build_char_tokenizer())
    ds.processor = "stand-in"  # _build_messages only asserts that a processor exists; it does not call it
    for i in range(len(ds.dataframe)):
        row = dict(ds.dataframe[i])
        n_media = len(row.get("images") or []) + len(row.get("videos") or [])
        parts = ds._build_messages(row, ds.prompt_key)[0]["content"]
        kinds = [p["type"] for p in parts]
        assert kinds.count("image") + kinds.count("video") == n_media >= 1 and kinds[-1] == "text"
        for p in parts:
            if p["type"] == "video":
                frames = p["video"] if isinstance(p["video"], list) else [p["video"]]
                assert all(os.path.exists(f) for f in frames)


def _bad(tmp_path, capsys, args) -> str:
    out = tmp_path / "out"
    assert main([*args, "--output", str(out)]) == 2
    assert not out.exists() or not list(out.iterdir())  # no partial output
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_missing_column(tmp_path, capsys):
    src = tmp_path / "aime.jsonl"
    src.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "solution": "no box"}\n')
    err = _bad(tmp_path, capsys, ["aime24", "--input", str(src)])
    assert "row 1" in err and "solution" in err


def test_unreadable_image(tmp_path, capsys):
    import datasets

    rows = {"images": [[{"bytes": b"not a png", "path": None}]], "problem": ["<image>x?"], "answer": ["1"]}
    path = tmp_path / "g3k" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    pd.DataFrame(rows).to_parquet(path)
    err = _bad(tmp_path, capsys, ["geometry3k", "--input", str(path.parent)])
    assert "row 0" in err and "images" in err and "unreadable image" in err
    assert datasets  # the layout is read by datasets


def test_missing_video(tmp_path, capsys):
    src = WRITERS["video_r1"](tmp_path / "src")
    os.remove(src.parent / "LLaVA-Video-178K" / "v1.mp4")
    err = _bad(tmp_path, capsys, ["video_r1", "--input", str(src)])
    assert "row 0" in err and "path" in err and "video not found" in err


def test_unknown_name(tmp_path, capsys):
    err = _bad(tmp_path, capsys, ["nosuchset", "--input", str(tmp_path)])
    assert "unknown data set" in err and "math500" in err


def test_limit_and_default_file_name(tmp_path):
    src = WRITERS["dapo_math"](tmp_path / "src")
    assert main(["dapo_math", "--input", str(src), "--output", str(tmp_path / "out"), "--limit", "2"]) == 0
    df = pd.read_parquet(tmp_path / "out" / "text_train.parquet")  # the file the presets read
    assert len(df) == 2


def test_cli_exit_code(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "recipe.copd.data", "nosuchset", "--input", str(tmp_path), "--output", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 2 and proc.stderr.startswith("copd.data: error: nosuchset: unknown data set")
