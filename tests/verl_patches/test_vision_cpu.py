"""verl_patches.vision_cpu: qwen-vl-utils' resize rule (the dataset path: tests/recipe/test_fixtures.py)."""

from verl_patches import vision_cpu


def test_smart_resize_keeps_factor_and_bounds():
    assert vision_cpu.smart_resize(64, 64, 32, 64 * 64, 64 * 64) == (64, 64)
    h, w = vision_cpu.smart_resize(100, 300, 32, 32 * 32 * 4, 32 * 32 * 16)
    assert h % 32 == 0 and w % 32 == 0 and h * w <= 32 * 32 * 16
