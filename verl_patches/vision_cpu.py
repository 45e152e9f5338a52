"""A torchvision-free ``qwen_vl_utils`` for verl's image and video path on CPU.

verl 0.9.1 reads a prompt's images and videos with ``from qwen_vl_utils import process_vision_info`` (in
``RLHFDataset.process_vision_info`` / ``_process_multi_modal_info``, called by the dataset's prompt-length filter
and by every agent loop) and ``fetch_image`` / ``fetch_video`` (``verl.utils.dataset.vision_utils``).
qwen-vl-utils 0.0.14 imports torchvision at module level, and the CPU torch here has no torchvision, so every image
or video prompt fails with ``ModuleNotFoundError: torchvision``.

``provide_qwen_vl_utils_without_torchvision`` (in ``verl_patches.patches.ALL_PATCHES``) registers this module as
``qwen_vl_utils`` when the real one cannot import for want of torchvision. It implements the same three functions
for the inputs verl's dataset produces: images (PIL, path, ``file://``, base64 ``data:image``) resized by
qwen-vl-utils' ``smart_resize`` rule with PIL's bicubic filter, and videos given as lists of frames (the same
inputs) or as video files, decoded with PyAV and sampled by qwen-vl-utils' ``smart_nframes`` rule (``fps``, default
2, within ``min_frames``/``max_frames``, or ``nframes``), returned as qwen-vl-utils returns them: a float
(T, C, H, W) tensor and its metadata. Constants are qwen-vl-utils 0.0.14's.
"""

from __future__ import annotations

import base64
import importlib.util
import math
import os
import sys
from io import BytesIO

MAX_RATIO = 200
SPATIAL_MERGE_SIZE = 2
IMAGE_MIN_TOKEN_NUM = 4
IMAGE_MAX_TOKEN_NUM = 16384
VIDEO_MIN_TOKEN_NUM = 128
VIDEO_MAX_TOKEN_NUM = 768
FRAME_FACTOR = 2
FPS = 2.0
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
MODEL_SEQ_LEN = int(float(os.environ.get("MODEL_SEQ_LEN", 128000)))


def smart_resize(height: int, width: int, factor: int, min_pixels=None, max_pixels=None) -> tuple[int, int]:
    """qwen-vl-utils' rule: sides divisible by ``factor``, pixels in [min_pixels, max_pixels], aspect kept."""
    max_pixels = max_pixels if max_pixels is not None else IMAGE_MAX_TOKEN_NUM * factor**2
    min_pixels = min_pixels if min_pixels is not None else IMAGE_MIN_TOKEN_NUM * factor**2
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {max(height, width) / min(height, width)}"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _open_image(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        raise ValueError(f"image URL {image[:60]!r}: fetching over the network is not supported here; use a file")
    if isinstance(image, str) and image.startswith("file://"):
        return Image.open(image[7:])
    if isinstance(image, str) and image.startswith("data:image") and "base64," in image:
        return Image.open(BytesIO(base64.b64decode(image.split("base64,", 1)[1])))
    if isinstance(image, str | os.PathLike):
        return Image.open(image)
    raise ValueError(f"unrecognized image input {type(image).__name__}: give a PIL image, a path or a data:image URL")


def fetch_image(ele: dict, image_patch_size: int = 14):
    """The element's image as RGB, resized as qwen-vl-utils does (``resized_height``/``_width`` or pixel bounds)."""
    factor = int(image_patch_size * SPATIAL_MERGE_SIZE)
    image = _open_image(ele["image"] if "image" in ele else ele["image_url"])
    image = image.convert("RGB")
    if "resized_height" in ele and "resized_width" in ele:
        height, width = smart_resize(ele["resized_height"], ele["resized_width"], factor=factor)
    else:
        w, h = image.size
        min_pixels = ele.get("min_pixels", IMAGE_MIN_TOKEN_NUM * factor**2)
        max_pixels = ele.get("max_pixels", IMAGE_MAX_TOKEN_NUM * factor**2)
        height, width = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return image.resize((width, height), resample=3)  # PIL.Image.BICUBIC


def smart_nframes(ele: dict, total_frames: int, video_fps: float) -> int:
    """qwen-vl-utils' rule for how many frames to sample from a video file (``nframes``, or ``fps`` within
    ``min_frames``/``max_frames``), a multiple of FRAME_FACTOR, at most the frames the file has."""
    floor_by = lambda x: math.floor(x / FRAME_FACTOR) * FRAME_FACTOR  # noqa: E731
    if "nframes" in ele:
        nframes = round(ele["nframes"] / FRAME_FACTOR) * FRAME_FACTOR
    else:
        min_frames = math.ceil(ele.get("min_frames", FPS_MIN_FRAMES) / FRAME_FACTOR) * FRAME_FACTOR
        max_frames = floor_by(ele.get("max_frames", min(FPS_MAX_FRAMES, total_frames)))
        nframes = total_frames / video_fps * ele.get("fps", FPS)
        nframes = floor_by(min(min(max(nframes, min_frames), max_frames), total_frames))
    if not FRAME_FACTOR <= nframes <= total_frames:
        raise ValueError(f"nframes should be in [{FRAME_FACTOR}, {total_frames}], got {nframes}")
    return nframes


def _decode_video_file(ele: dict):
    """Frames of a video file (path or ``file://``) sampled as qwen-vl-utils samples them, decoded with PyAV (what
    ``recipe.copd.data`` decodes with too): (PIL frames, metadata, sample fps)."""
    path = str(ele["video"])
    path = path[7:] if path.startswith("file://") else path
    if path.startswith(("http://", "https://")):
        raise ValueError(f"video URL {path[:60]!r}: fetching over the network is not supported here; use a file")
    try:
        import av
    except ImportError:
        raise ValueError(
            f"video {path[:60]!r}: decoding a video file needs PyAV (pip install av), torchvision, decord or "
            "torchcodec; or store the video as a list of frames"
        ) from None
    if not os.path.isfile(path):
        raise ValueError(f"video {path[:60]!r}: no such file")
    with av.open(path) as container:
        stream = container.streams.video[0]
        video_fps = float(stream.average_rate or stream.guessed_rate or FPS)
        total = stream.frames  # from the container; 0 when it does not say
        if total >= FRAME_FACTOR:  # only the sampled frames become images (a long video stays small in memory)
            indices = _frame_indices(ele, total, video_fps, path)
            wanted, kept = set(indices), {}
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    kept[i] = frame.to_image().convert("RGB")
                if i >= indices[-1]:
                    break  # the rest of the video is not sampled
            if len(kept) == len(wanted):
                metadata = dict(fps=video_fps, frames_indices=indices, total_num_frames=total)
                return [kept[i] for i in indices], metadata, len(indices) / total * video_fps
    with av.open(path) as container:  # no frame count in the container, or a wrong one: count by decoding
        decoded = [frame.to_image().convert("RGB") for frame in container.decode(container.streams.video[0])]
    total = len(decoded)
    indices = _frame_indices(ele, total, video_fps, path)
    metadata = dict(fps=video_fps, frames_indices=indices, total_num_frames=total)
    return [decoded[i] for i in indices], metadata, len(indices) / total * video_fps


def _frame_indices(ele: dict, total: int, video_fps: float, path: str) -> list[int]:
    """The frames qwen-vl-utils samples: ``smart_nframes`` of them, evenly spread (``torch.linspace(...).round()``)."""
    if total < FRAME_FACTOR:
        raise ValueError(f"video {path[:60]!r}: {total} frame(s), at least {FRAME_FACTOR} needed")
    nframes = smart_nframes(ele, total, video_fps)
    return [round(k * (total - 1) / (nframes - 1)) for k in range(nframes)]


def fetch_video(ele: dict, image_patch_size: int = 14, return_video_sample_fps=False, return_video_metadata=False):
    """A video (a list of frames, or a file decoded with PyAV): (float (T, C, H, W) tensor, metadata), as
    qwen-vl-utils returns it."""
    import numpy as np
    import torch

    factor = image_patch_size * SPATIAL_MERGE_SIZE
    info = {k: v for k, v in ele.items() if k not in ("type", "video")}
    if isinstance(ele["video"], list | tuple):
        frames = [fetch_image({"image": frame, **info}, factor) for frame in ele["video"]]  # as qwen-vl-utils does
        nframes = math.ceil(len(frames) / FRAME_FACTOR) * FRAME_FACTOR
        frames += [frames[-1]] * (nframes - len(frames))
        sample_fps = ele.get("sample_fps", 2.0)
        raw_fps = info.pop("raw_fps", sample_fps)
        total = (nframes / sample_fps) * raw_fps
        metadata = dict(fps=raw_fps, frames_indices=list(range(nframes)), total_num_frames=total)
    else:
        frames, metadata, sample_fps = _decode_video_file(ele)
        nframes = len(frames)
    min_pixels = ele.get("min_pixels", VIDEO_MIN_TOKEN_NUM * factor * factor)
    total_pixels = ele.get("total_pixels", MODEL_SEQ_LEN * factor * factor * 0.9)
    max_pixels = max(
        min(VIDEO_MAX_TOKEN_NUM * factor * factor, total_pixels / nframes * FRAME_FACTOR), int(min_pixels * 1.05)
    )
    max_pixels = min(ele.get("max_pixels", max_pixels), max_pixels)
    w, h = frames[0].size
    if "resized_height" in ele and "resized_width" in ele:
        height, width = smart_resize(ele["resized_height"], ele["resized_width"], factor=factor)
    else:
        height, width = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    arrays = [np.asarray(f.resize((width, height), resample=3), dtype=np.float32).transpose(2, 0, 1) for f in frames]
    video = torch.from_numpy(np.stack(arrays))
    out = (video, metadata) if return_video_metadata else video
    return (out, sample_fps) if return_video_sample_fps else out


def extract_vision_info(conversations) -> list[dict]:
    if isinstance(conversations[0], dict):
        conversations = [conversations]
    return [
        ele
        for conversation in conversations
        for message in conversation
        if isinstance(message["content"], list)
        for ele in message["content"]
        if "image" in ele
        or "image_url" in ele
        or "video" in ele
        or ele.get("type", "text") in ("image", "image_url", "video")
    ]


def process_vision_info(conversations, return_video_kwargs=False, return_video_metadata=False, image_patch_size=14):
    """qwen-vl-utils' entry point: (images or None, videos or None[, video kwargs])."""
    images, videos, fps = [], [], []
    for ele in extract_vision_info(conversations):
        if "image" in ele or "image_url" in ele:
            images.append(fetch_image(ele, image_patch_size=image_patch_size))
        elif "video" in ele:
            video, sample_fps = fetch_video(ele, image_patch_size, True, return_video_metadata)
            videos.append(video)
            fps.append(sample_fps)
        else:
            raise ValueError("image, image_url or video should be in content")
    video_kwargs = {"do_sample_frames": False}
    if not return_video_metadata:
        video_kwargs["fps"] = fps
    result = (images or None, videos or None)
    return (*result, video_kwargs) if return_video_kwargs else result


def provide_qwen_vl_utils_without_torchvision() -> bool:
    """Register this module as ``qwen_vl_utils`` on CPU when the real one needs the missing torchvision.

    A no-op (False) off CPU, when torchvision is installed, or when already registered.
    """
    from verl_patches.patches import is_cpu

    if not is_cpu() or importlib.util.find_spec("torchvision") is not None:
        return False
    if sys.modules.get("qwen_vl_utils") is sys.modules[__name__]:
        return False
    sys.modules["qwen_vl_utils"] = sys.modules[__name__]
    return True
