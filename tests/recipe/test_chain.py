"""prepare -> train -> evaluate, as a user runs it: three training sets prepared from their public layouts
(DAPO-Math parquet, Geometry3K parquet with embedded images, Video-R1's JSON with mp4 and image paths) into one
``COPD_DATA`` folder, the 3-branch hub preset rehearsed on it (Phase I and a Phase II step whose cross batches mix
Video-R1's image and video rows), and the merged model against the base on benchmarks of each Table 1 group."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recipe.copd import rehearse
from recipe.copd.data.__main__ import main as prepare
from recipe.copd.eval import main as evaluate
from tests.recipe.data.public_layouts import WRITERS

TRAIN_SETS = {"text": "dapo_math", "image": "geometry3k", "video": "video_r1"}
BENCHMARKS = ["aime24", "math500", "mathvista", "mmmu", "mvbench", "videomathqa"]


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
    video_rows = pq.read_table(data / "video_train.parquet").to_pylist()
    assert any(r["videos"] for r in video_rows) and any(r["images"] for r in video_rows)  # both modalities

    out = tmp_path / "rehearsal"
    preset = "qwen3vl_text_image_video_hub"
    assert rehearse.main([preset, "--data", str(data), "--out", str(out)]) == 0, (out / "report.md").read_text()
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
    vl = ["actor_rollout_ref.model.trust_remote_code=True", "data.max_prompt_length=1024",
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
