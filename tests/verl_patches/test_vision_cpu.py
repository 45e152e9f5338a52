"""verl_patches.vision_cpu: qwen-vl-utils' resize rule (the dataset path: tests/recipe/test_fixtures.py)."""

from verl_patches import vision_cpu


def test_smart_resize_keeps_factor_and_bounds():
    assert vision_cpu.smart_resize(64, 64, 32, 64 * 64, 64 * 64) == (64, 64)
    h, w = vision_cpu.smart_resize(100, 300, 32, 32 * 32 * 4, 32 * 32 * 16)
    assert h % 32 == 0 and w % 32 == 0 and h * w <= 32 * 32 * 16


def _mp4(path, frames: int, fps: int):
    """A 48 x 32 video (mp4, or mkv: a container without a frame count) whose frame k has grey level 20 k."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 48, 3), 20 * k, dtype=np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def test_video_file_sampled_as_qwen_vl_utils_samples_it(tmp_path):
    """A 12-frame, 6 fps file at the default 2 fps: 4 frames spread over the clip (qwen-vl-utils' rule), in order."""
    path = _mp4(tmp_path / "clip.mp4", frames=12, fps=6)
    (video, meta), sample_fps = vision_cpu.fetch_video({"video": f"file://{path}"}, 16, True, True)
    assert meta == {"fps": 6.0, "frames_indices": [0, 4, 7, 11], "total_num_frames": 12}
    assert sample_fps == 2.0 and video.shape[:2] == (4, 3) and video.shape[2] % 32 == 0 and video.shape[3] % 32 == 0
    levels = video.mean(dim=(1, 2, 3))
    assert (levels[1:] > levels[:-1]).all()  # later frames are brighter: the frames kept, in order
    both = vision_cpu.fetch_video({"video": str(path), "nframes": 6}, 16, False, True)[1]
    assert len(both["frames_indices"]) == 6


def test_a_container_without_a_frame_count_is_counted_by_decoding(tmp_path):
    path = _mp4(tmp_path / "clip.mkv", frames=12, fps=6)
    (video, meta), sample_fps = vision_cpu.fetch_video({"video": str(path)}, 16, True, True)
    assert meta == {"fps": 6.0, "frames_indices": [0, 4, 7, 11], "total_num_frames": 12} and video.shape[0] == 4


def test_video_file_errors_are_one_line(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="no such file"):
        vision_cpu.fetch_video({"video": str(tmp_path / "missing.mp4")})
    with pytest.raises(ValueError, match="network"):
        vision_cpu.fetch_video({"video": "https://example.com/v.mp4"})
