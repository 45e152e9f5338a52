"""Every preset points verl's reward at the router, and every data source of its branches gets a built-in score."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from verl.utils.import_utils import load_extern_object

from recipe.copd.preflight import copd_config_from

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted(
    str(p.relative_to(ROOT / "configs").with_suffix(""))
    for p in (ROOT / "configs").rglob("*.yaml")
    if "common" not in p.parts
)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_data_sources_are_scored(name, monkeypatch, tmp_path):
    for var in ("COPD_DATA", "COPD_TEXT_EXPERT", "COPD_IMAGE_EXPERT", "COPD_VIDEO_EXPERT"):
        monkeypatch.setenv(var, str(tmp_path))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name=name)
    fn_cfg = cfg.reward.custom_reward_function
    compute_score = load_extern_object(fn_cfg.path, fn_cfg.name)
    # a branch with data_source null (mixed RLVR, MOPD's student) trains or validates on the text/image/video files
    sources = {b.data_source for b in copd_config_from(cfg).branches if b.data_source} | {"text"}
    for source in sources:
        assert compute_score(source, "so \\boxed{B}", "B", {"answer_type": "choice"}) == 1.0
        assert compute_score(source, "Answer: 7", "8", {"answer_type": "math"}) == 0.0
