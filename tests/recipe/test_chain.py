"""prepare -> train -> evaluate, as a user runs it: three training sets prepared from their public layouts
(DAPO-Math parquet, Geometry3K parquet with embedded images, Video-R1's JSON with mp4 and image paths) into one
``COPD_DATA`` folder, the 3-branch hub preset rehearsed on it (Phase I and a Phase II step; the video branch's 8
rows, 4 image and 4 video, all within the prompt limit, feed its native batches and the hub's cross batch), and the
merged model against the base on benchmarks of each Table 1 group."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recipe.copd import rehearse
from recipe.copd.data.__main__ import main as prepare
from recipe.copd.eval import main as evaluate
from tests.recipe.data.public_layouts import WRITERS

TRAIN_SETS = {"text": "dapo_math", "image": "geometry3k", "video": "video_r1"}
BENCHMARKS = ["aime24", "math500", "mathvista", "mmmu", "mvbench", "videomathqa"]


LIMIT = 1024  # prompt tokens: a Video-R1 fixture video row is over the shrink's 160 with the tiny Qwen3-VL's processor


KEPT = """
import sys
from omegaconf import OmegaConf
from transformers import AutoProcessor, AutoTokenizer
from verl_patches.vision_cpu import provide_qwen_vl_utils_without_torchvision
from verl.utils.dataset.rl_dataset import RLHFDataset
from copd.tiny.qwen3vl import build_tiny_qwen3vl

provide_qwen_vl_utils_without_torchvision()  # as the recipe does on CPU (no torchvision here)
path, limit, tmp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = build_tiny_qwen3vl(tmp + "/vl")
tok, proc = AutoTokenizer.from_pretrained(model), AutoProcessor.from_pretrained(model, trust_remote_code=True)
cfg = {"max_prompt_length": limit, "filter_overlong_prompts": True, "return_raw_chat": True, "prompt_key": "prompt",
       "image_key": "images", "video_key": "videos", "cache_dir": tmp + "/cache"}
print("KEPT", len(RLHFDataset([path], tok, OmegaConf.create(cfg), processor=proc)))
"""


def _kept(path, limit, tmp):
    """Rows verl's dataset keeps under ``data.max_prompt_length=limit`` (it counts image and video tokens); in a
    child process, as the recipe's CPU patch of qwen-vl-utils is process-wide."""
    out = subprocess.run([sys.executable, "-c", KEPT, str(path), str(limit), str(tmp)], capture_output=True, text=True)
    kept = [line for line in out.stdout.splitlines() if line.startswith("KEPT ")]
    assert kept, out.stderr[-2000:]
    return int(kept[-1].split()[1])


def _grow(path, times):
    """The public-layout fixtures hold 2-3 rows; the shrunk preset needs 4 prompts per batch and a cross batch."""
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table] * times), path)


@pytest.mark.slow
def test_prepare_train_evaluate(tmp_path):
    data = tmp_path / "copd_data"
    for branch, name in TRAIN_SETS.items():
        src = WRITERS[name](tmp_path / "src" / name)
        for split in ("train", "val"):
            args = [name, "--input", str(src), "--output", str(data), "--name", f"{branch}_{split}"]
            assert prepare([*args, "--data-source", branch]) == 0, name
        _grow(data / f"{branch}_train.parquet", 4)
    # both of Video-R1's modalities, and every row within the prompt limit (verl would drop the longer ones: at the
    # shrink's 160 tokens the video rows go, and the video branch trains on images only)
    assert _kept(data / "video_train.parquet", 160, tmp_path / "kept") == 4  # the shrink's own limit: images only
    assert _kept(data / "video_train.parquet", LIMIT, tmp_path / "kept") == 8
    video_rows = pq.read_table(data / "video_train.parquet").to_pylist()
    assert sum(bool(r["videos"]) for r in video_rows) == 4 and sum(bool(r["images"]) for r in video_rows) == 4

    out = tmp_path / "rehearsal"
    preset = "qwen3vl_text_image_video_hub"
    args = [preset, "--data", str(data), "--out", str(out), "--", f"data.max_prompt_length={LIMIT}"]
    assert rehearse.main(args) == 0, (out / "report.md").read_text()
    row = json.loads((out / "report.json").read_text())[0]
    assert row["steps"] == 3 and set(row["rewards"]) == {"text", "image", "video"}
    opd = [json.loads(line) for line in open(out / preset / "metrics.jsonl") if '"opd"' in line]
    assert opd and opd[0]["branch_text/copd/cross_fraction_mb_max"] > 0  # the hub learned from the video spoke

    bench = tmp_path / "bench"
    for name in BENCHMARKS:
        src = WRITERS[name](tmp_path / "src" / name)
        media = ["--media-root", str(tmp_path / "src" / name / name)] if name == "videomathqa" else []  # videos/
        assert prepare([name, "--input", str(src), "--output", str(bench), *media]) == 0, name
    base = next((out / "hub").glob("models--*/snapshots/*"))
    merged = json.loads((out / preset / "copd_result.json").read_text())["merged"]
    report_dir = tmp_path / "report"
    vl = ["actor_rollout_ref.model.trust_remote_code=True", f"data.max_prompt_length={LIMIT}",
          "data.max_response_length=8"]  # fmt: skip
    models = ["--models", f"base={base}", f"copd={merged}"]
    args = [*models, "--benchmarks", ",".join(BENCHMARKS), "--data", str(bench), "--out", str(report_dir), "--", *vl]
    assert evaluate(args) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report["scores"]) == {"base", "copd"}
    assert all(set(s) == set(BENCHMARKS) for s in report["scores"].values())
    md = (report_dir / "report.md").read_text()
    assert "| base | copd |" in md.splitlines()[next(i for i, ln in enumerate(md.splitlines()) if "|" in ln)]
    assert "| *Overall avg* |" in md
