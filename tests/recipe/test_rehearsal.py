"""The rehearsal: its shrink rule, and the 2-branch and 3-branch-hub presets run shrunk through the real trainer
with 2 PPO mini-batches per update (cross rows mixed into each). The other presets: ``make rehearse``, or this
file with ``COPD_REHEARSE_ALL=1``."""

import json
import os

import pytest

from recipe.copd import rehearse


def test_shrink_keeps_the_budget_relations():
    assert rehearse.shrunk_schedule(4, 30, 20) == {"n_cycles": 1, "s_rl": 1, "s_opd": 1}  # 2-branch CoPD: 2
    assert rehearse.shrunk_schedule(6, 30, 20) == {"n_cycles": 1, "s_rl": 2, "s_opd": 1}  # hub: 3
    assert rehearse.shrunk_schedule(1, 100, 0) == {"n_cycles": 1, "s_rl": 1, "s_opd": 0}  # each expert: 1
    assert rehearse.shrunk_schedule(1, 0, 100) == {"n_cycles": 1, "s_rl": 0, "s_opd": 1}  # static OPD, MOPD
    assert rehearse.shrunk_schedule(1, 200, 0)["s_rl"] == 2  # mixed RLVR: CoPD's total


def test_every_preset_is_rehearsed_and_teachers_come_first():
    names = rehearse.presets()
    assert set(rehearse.ORDER) == set(names)
    for var, (preset, _) in rehearse.EXPERTS.items():
        users = [n for n in names if var in rehearse.teachers_needed(rehearse.compose_preset(n))]
        assert users and all(names.index(preset) < names.index(u) for u in users), var


def _check_cross_fractions(out_dir, share=0.5):
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl")) if line.strip()]
    seen = 0
    for r in rows:
        for key, lo in r.items():
            if not key.endswith("copd/cross_fraction_mb_min"):
                continue
            prefix = key.removesuffix("cross_fraction_mb_min")
            hi, n_mb = r[prefix + "cross_fraction_mb_max"], r[prefix + "n_minibatches"]
            assert n_mb >= 2, (key, n_mb)
            if r.get("copd/phase") == "opd" and hi > 0:  # one cross batch per teacher, as large as the native one
                seen += 1
                assert abs(lo - share) <= 0.15 and abs(hi - share) <= 0.15, (key, lo, hi, share)
    return seen


@pytest.mark.slow
def test_two_branch_and_hub_rehearsals(tmp_path):
    names = ["qwen3vl_text_image", "qwen3vl_text_image_video_hub"]
    rc = rehearse.main([*names, "--out", str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    assert rc == 0, report
    rows = {r["preset"]: r for r in json.loads((tmp_path / "report.json").read_text())}
    assert rows["qwen3vl_text_image"]["steps"] == 2 and rows["qwen3vl_text_image_video_hub"]["steps"] == 3
    assert set(rows["qwen3vl_text_image_video_hub"]["rewards"]) == {"text", "image", "video"}
    assert _check_cross_fractions(tmp_path / "qwen3vl_text_image") == 2  # both branches in the OPD step
    # the hub learns from 2 spokes: 1 native + 2 cross batches, cross share 2/3; each spoke 1/2
    hub_rows = [json.loads(line) for line in open(tmp_path / "qwen3vl_text_image_video_hub" / "metrics.jsonl")]
    opd = [r for r in hub_rows if r.get("copd/phase") == "opd"]
    assert abs(opd[0]["branch_text/copd/cross_fraction_mb_min"] - 2 / 3) <= 0.15
    assert abs(opd[0]["branch_video/copd/cross_fraction_mb_max"] - 1 / 2) <= 0.15
    for name in names:
        assert (tmp_path / name / "merged" / "model.safetensors").exists()
        assert (tmp_path / name / "hf" / "branch_text" / "processor_config.json").exists()  # exported by hub id


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("COPD_REHEARSE_ALL"), reason="every preset: set COPD_REHEARSE_ALL=1")
def test_every_preset_rehearses(tmp_path):
    assert rehearse.main(["--out", str(tmp_path)]) == 0, (tmp_path / "report.md").read_text()
