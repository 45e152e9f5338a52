"""Qwen3-VL's processor and video processor without torchvision (PIL resize, torch arithmetic).

transformers' `Qwen3VLVideoProcessor` reaches torchvision in exactly three places: `convert_to_rgb`, `resize` and
`normalize`. This subclass overrides those three the way the slow (PIL) image processors do them: each frame is
resized by PIL with the configured resampling filter on uint8 pixels, then rescaled and normalized in float32.
Everything else (frame sampling, smart resize, temporal padding, patch order, `video_grid_thw`, metadata for the
processor's timestamps) is Qwen3-VL's own code. On a box with torchvision, outputs differ from the fast processor
only by the resize kernel (PIL vs torchvision bicubic with antialias).

Without torchvision, `ProcessorMixin` also rejects any video processor (see `Qwen3VLProcessor` below).

This file is self-contained (imports transformers, torch, numpy and PIL only) because `build_tiny_qwen3vl` also
copies it into the model folder, where `AutoProcessor` / `AutoVideoProcessor` load it as remote code
(`trust_remote_code=True`).
"""

import numpy as np
import torch
from PIL import Image
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor as _Qwen3VLProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.video_processing_utils import BaseVideoProcessor


class TinyQwen3VLVideoProcessor(Qwen3VLVideoProcessor):
    """`Qwen3VLVideoProcessor` with PIL resizing: frames (..., C, H, W) uint8 in, same layout out."""

    def convert_to_rgb(self, video: torch.Tensor) -> torch.Tensor:
        """Grayscale (1 channel) to RGB by repetition; RGBA drops alpha over white, as PIL's convert does."""
        if video.shape[-3] == 1:
            return video.repeat_interleave(3, dim=-3)
        if video.shape[-3] == 4:
            rgb, alpha = video[..., :3, :, :].float(), video[..., 3:, :, :].float() / 255.0
            return (rgb * alpha + 255.0 * (1.0 - alpha)).round().to(video.dtype)
        return video

    def resize(self, image: torch.Tensor, size: SizeDict, resample=None, **kwargs) -> torch.Tensor:
        """Resize every (C, H, W) frame of `image` (..., C, H, W) to (size.height, size.width) with PIL.

        PIL resizes 8-bit pixels: float frames (verl's dataset hands over 0..255 floats) are rounded first; the
        result keeps the input's dtype.
        """
        resample = PILImageResampling(resample if resample is not None else self.resample)
        lead, (channels, height, width) = image.shape[:-3], image.shape[-3:]
        if (height, width) == (size.height, size.width):
            return image
        frames = image.reshape(-1, channels, height, width)
        if frames.is_floating_point():
            frames = frames.round().clamp(0, 255)
        frames = frames.to(torch.uint8).permute(0, 2, 3, 1).numpy()
        resized = [
            np.asarray(Image.fromarray(frame).resize((size.width, size.height), resample=resample)) for frame in frames
        ]
        out = torch.from_numpy(np.stack(resized)).reshape(-1, size.height, size.width, channels)
        out = out.permute(0, 3, 1, 2).reshape(*lead, channels, size.height, size.width)
        return out.to(image.dtype).contiguous()

    def normalize(self, image: torch.Tensor, mean, std, **kwargs) -> torch.Tensor:
        """(image - mean) / std per channel (dim -3), in float32."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        return (image.float() - mean) / std


class Qwen3VLProcessor(_Qwen3VLProcessor):
    """transformers' `Qwen3VLProcessor`, accepting a video processor when torchvision is absent.

    Without torchvision, `transformers.BaseVideoProcessor` is a placeholder class, so the parent's type check
    rejects every video processor; this one checks against the real base class instead. Nothing else changes.
    The class keeps its parent's name because verl picks its M-RoPE helpers by processor class name.
    """

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor":
            if not isinstance(argument, BaseVideoProcessor):
                raise TypeError(f"video_processor must be a BaseVideoProcessor, got {type(argument).__name__}")
            return BaseVideoProcessor
        return super().check_argument_for_proper_class(argument_name, argument)


__all__ = ["Qwen3VLProcessor", "TinyQwen3VLVideoProcessor"]
