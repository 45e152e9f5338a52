"""The tiny Qwen3-VL: deterministic build, offline hub-id loading, Qwen3-VL's chat rendering, pad expansion,
forward / generate / backward."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from copd.tiny import vl_tokenizer as vt
from copd.tiny.qwen3vl import DEFAULT_REPO_ID, build_tiny_processor, build_tiny_qwen3vl, install_hub_cache

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The model installed under DEFAULT_REPO_ID in a fresh hub cache."""
    cache = tmp_path_factory.mktemp("hub")
    return cache, install_hub_cache(DEFAULT_REPO_ID, cache_dir=str(cache))


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor()


def test_build_is_deterministic_and_seeded(tmp_path, hub):
    a, b = build_tiny_qwen3vl(tmp_path / "a"), build_tiny_qwen3vl(tmp_path / "b")
    assert digests(a) == digests(b) == digests(hub[1])
    c = digests(build_tiny_qwen3vl(tmp_path / "c", seed=1))
    assert (
        c["model.safetensors"] != digests(a)["model.safetensors"]
        and c["tokenizer.json"] == digests(a)["tokenizer.json"]
    )


LOAD = """
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
repo = {repo!r}
processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(repo)
tokenizer = AutoTokenizer.from_pretrained(repo)
print(type(model).__name__, type(processor).__name__, type(processor.video_processor).__name__, tokenizer.eos_token)
"""


def test_loads_by_hub_id_offline(hub):
    cache, snapshot = hub
    assert (cache / f"models--{DEFAULT_REPO_ID.replace('/', '--')}" / "refs" / "main").read_text() == Path(
        snapshot
    ).name
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(cache / "home"))
    out = subprocess.run(
        [sys.executable, "-c", LOAD.format(repo=DEFAULT_REPO_ID)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-4:] == [
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLProcessor",
        "TinyQwen3VLVideoProcessor",
        "<|im_end|>",
    ]
    assert install_hub_cache(DEFAULT_REPO_ID, cache_dir=str(cache)) == snapshot  # reinstalling is a no-op


def test_special_tokens_keep_qwen_names_order_and_flags():
    tokenizer = vt.build_vl_tokenizer()
    # Qwen3-VL: 151652 vision_start, 151653 vision_end, 151655 image_pad, 151656 video_pad, 151645 im_end
    for qwen_id, name in [(151652, "<|vision_start|>"), (151655, "<|image_pad|>"), (151656, "<|video_pad|>")]:
        assert tokenizer.convert_tokens_to_ids(name) == vt.tiny_id(qwen_id)
    assert tokenizer.eos_token_id == vt.tiny_id(151645) and tokenizer.pad_token_id == vt.tiny_id(151643)
    assert tokenizer.encode("\n", add_special_tokens=False) == [1]  # one id, as verl's Qwen builder checks
    text = "<think>\nx</think><|im_end|>"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False), skip_special_tokens=True) == (
        "<think>\nx</think>"  # <think> is not special in Qwen3-VL's tokenizer, <|im_end|> is
    )
    assert len(tokenizer) <= vt.VOCAB_SIZE


@pytest.mark.parametrize(
    "messages,kwargs,expected",
    [
        # text only: no default system prompt (Qwen3-VL-Instruct, unlike Qwen2-VL)
        ([{"role": "user", "content": "2+2?"}], {}, "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"),
        (
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": "A cat."},
                {"role": "user", "content": [{"type": "video", "video": "v.mp4"}, {"type": "text", "text": "And?"}]},
            ],
            {},
            "<|im_start|>system\nBe brief.<|im_end|>\n"
            f"<|im_start|>user\n{IMAGE}What?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
            f"<|im_start|>user\n{VIDEO}And?<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            [{"role": "user", "content": [{"image": "a.png"}, {"image_url": "b"}, {"type": "video"}]}],
            {"add_vision_id": True},
            f"<|im_start|>user\nPicture 1: {IMAGE}Picture 2: {IMAGE}Video 1: {VIDEO}<|im_end|>\n"
            "<|im_start|>assistant\n",
        ),
        (
            [
                {"role": "user", "content": "sum"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}],
                },
                {"role": "tool", "content": "1"},
                {"role": "tool", "content": [{"type": "image"}]},
            ],
            {},
            "<|im_start|>user\nsum<|im_end|>\n<|im_start|>assistant\n"
            '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call><|im_end|>\n'
            f"<|im_start|>user\n<tool_response>\n1\n</tool_response>\n<tool_response>\n{IMAGE}\n</tool_response>"
            "<|im_end|>\n<|im_start|>assistant\n",
        ),
    ],
)
def test_chat_template_renders_like_qwen3vl(processor, messages, kwargs, expected):
    # expected strings: Qwen3-VL-4B-Instruct's chat_template rendered on the same messages
    assert processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs) == expected


def picture(height, width, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8))


def test_processor_expands_pads_with_qwen3vl_timestamps(processor):
    frames = torch.randint(0, 256, (4, 3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    meta = {"fps": 2.0, "frames_indices": [0, 2, 4, 6], "total_num_frames": 8}
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = processor(
        text=[text],
        images=[picture(64, 64)],
        videos=[frames],
        video_metadata=[meta],
        do_sample_frames=False,  # what verl passes: frames already sampled by the dataset
        return_tensors="pt",
    )
    ids = out["input_ids"][0]
    # image 64x64: min 4096 px -> 64x64, 4x4 patches of 16, merged 2x2 -> 4 tokens
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]] and int((ids == vt.token_id("<|image_pad|>")).sum()) == 4
    # video 4 x 64x96: 4*64*96 within 4096..65536 px -> kept; T 4/2 = 2; 4x6 patches -> 6 tokens per time step
    assert out["video_grid_thw"].tolist() == [[2, 4, 6]] and int((ids == vt.token_id("<|video_pad|>")).sum()) == 12
    rendered = processor.tokenizer.decode(ids)
    # frames (0, 2) and (4, 6) at 2 fps: midpoints 0.5 s and 2.5 s, one timestamp per temporal patch
    assert f"<0.5 seconds><|vision_start|>{'<|video_pad|>' * 6}<|vision_end|><2.5 seconds>" in rendered
    assert out["mm_token_type_ids"][0].tolist() == [
        1 if t == vt.token_id("<|image_pad|>") else 2 if t == vt.token_id("<|video_pad|>") else 0 for t in ids
    ]
    assert out["pixel_values_videos"].shape == (2 * 4 * 6, 3 * 2 * 16 * 16)


def test_video_resize_matches_pil_image_processor(processor):
    """Each frame resizes and normalises as the slow (PIL) image processor does a picture."""
    frame = np.asarray(picture(50, 70, seed=3))  # both resize it to 64x64 (the video rule counts 2 frames)
    video = torch.from_numpy(frame).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)  # two equal frames
    v = processor.video_processor(videos=[video], do_sample_frames=False, return_tensors="pt")
    i = processor.image_processor(images=[Image.fromarray(frame)], return_tensors="pt")
    assert v["video_grid_thw"].tolist() == i["image_grid_thw"].tolist()
    torch.testing.assert_close(v["pixel_values_videos"], i["pixel_values"], atol=1e-6, rtol=0)


def test_forward_generate_backward(hub, processor):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(hub[1]).eval()
    frames = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(
        text=[text],
        images=[picture(64, 64)],
        videos=[frames],
        video_metadata=[{"fps": 2.0, "frames_indices": [0, 1], "total_num_frames": 2}],
        do_sample_frames=False,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**inputs).logits
        blind = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert logits.shape == (*inputs["input_ids"].shape, vt.VOCAB_SIZE) and torch.isfinite(logits).all()
    assert (logits - blind).abs().max() > 1e-3  # the pixels reach the model
    out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=True)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5
    model.train()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0  # gradients reach the vision tower


def test_cli_refuses_a_bad_repo_id(capsys):
    from copd.tiny.qwen3vl import main

    assert main(["--repo-id", "no-slash"]) == 2
    assert "org/name" in capsys.readouterr().err


def test_float_frames_resize_like_their_uint8_pixels(processor):
    """verl's dataset hands over float frames (0..255): they are rounded to 8 bits before PIL resizes them."""
    frames_u8 = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    jitter = torch.rand(frames_u8.shape, generator=torch.Generator().manual_seed(5)) * 0.8 - 0.4  # rounds back
    outs = [
        processor.video_processor(videos=[v], do_sample_frames=False, return_tensors="pt")["pixel_values_videos"]
        for v in (frames_u8, frames_u8.float() + jitter)
    ]
    torch.testing.assert_close(outs[1], outs[0], atol=0, rtol=0)
