"""Every preset points verl's reward at the router, and every data source of its branches gets a built-in score."""

from verl.utils.import_utils import load_extern_object

from recipe.copd.preflight import copd_config_from


def test_preset_data_sources_are_scored(preset_name, compose_preset):
    cfg = compose_preset(preset_name)
    fn_cfg = cfg.reward.custom_reward_function
    compute_score = load_extern_object(fn_cfg.path, fn_cfg.name)
    # a branch with data_source null (mixed RLVR, MOPD's student) trains or validates on the text/image/video files
    sources = {b.data_source for b in copd_config_from(cfg).branches if b.data_source} | {"text"}
    for source in sources:
        assert compute_score(source, "so \\boxed{B}", "B", {"answer_type": "choice"}) == 1.0
        assert compute_score(source, "Answer: 7", "8", {"answer_type": "math"}) == 0.0
