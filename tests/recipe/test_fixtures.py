"""The rehearsal's fixtures go through verl's RLHFDataset and the tiny Qwen3-VL processor without torchvision
(``verl_patches.vision_cpu``)."""

import importlib.util
import sys

import pytest

from verl_patches import vision_cpu


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="the real qwen_vl_utils is usable")
def test_fixtures_through_verl_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    monkeypatch.delitem(sys.modules, "qwen_vl_utils", raising=False)
    import verl_patches.patches as patches

    monkeypatch.setattr(patches, "_is_cpu_cache", None)
    assert vision_cpu.provide_qwen_vl_utils_without_torchvision() is True
    assert vision_cpu.provide_qwen_vl_utils_without_torchvision() is False  # idempotent
    from omegaconf import OmegaConf
    from transformers import AutoProcessor, AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from copd.tiny.qwen3vl import build_tiny_qwen3vl
    from recipe.copd.fixtures import write_fixtures

    paths = write_fixtures(str(tmp_path / "data"), n_train=2, n_val=1)
    model = build_tiny_qwen3vl(str(tmp_path / "model"))
    processor = AutoProcessor.from_pretrained(model, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(model)
    # no datasets worker pool: forking one inside a pytest process that already runs threads can deadlock (it did in CI)
    cfg = OmegaConf.create(
        {
            "max_prompt_length": 256,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": None,
            "image_patch_size": 16,
        }
    )
    image_ds = RLHFDataset([paths["image"]["train"]], tokenizer, cfg, processor)
    images, videos, _ = image_ds._process_multi_modal_info(image_ds[0]["raw_prompt"], 16, cfg)
    assert [im.size for im in images] == [(64, 64)] and videos is None
    video_ds = RLHFDataset([paths["video"]["train"]], tokenizer, cfg, processor)
    messages = video_ds[0]["raw_prompt"]
    images, videos, _ = video_ds._process_multi_modal_info(messages, 16, cfg)
    ((frames, meta),) = videos
    assert images is None and tuple(frames.shape) == (4, 3, 64, 64) and meta["frames_indices"] == [0, 1, 2, 3]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    out = processor(text=[text], videos=[frames], video_metadata=[meta], do_sample_frames=False, return_tensors="pt")
    assert out["video_grid_thw"].tolist() == [[2, 4, 4]]  # 4 frames / temporal 2, 64 px / patch 16
    with pytest.raises(ValueError, match="no such file"):  # video files are decoded with PyAV (test_vision_cpu.py)
        vision_cpu.fetch_video({"video": "clip.mp4"})
