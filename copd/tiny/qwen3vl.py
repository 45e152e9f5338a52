"""A tiny random Qwen3-VL, built offline and deterministically, loadable by a hub-style id.

`build_tiny_qwen3vl(dir)` writes `Qwen3VLForConditionalGeneration` weights, config, generation config, the
tokenizer (`copd.tiny.vl_tokenizer`), the image processor (transformers' PIL `Qwen2VLImageProcessorPil`, the slow
one), the video processor (`copd.tiny.qwen3vl_processing`, loaded as remote code) and `Qwen3VLProcessor`'s config
and chat template. `install_hub_cache(repo_id)` puts that folder into a Hugging Face cache
(`models--org--name/snapshots/<rev>`, `refs/main`) so that `from_pretrained(repo_id)` works with
`HF_HUB_OFFLINE=1` and `HF_HUB_CACHE` (or `HF_HOME`) pointing there.

Shrunk from Qwen3-VL-4B-Instruct's config (text: 36 layers x 2560, 32 heads / 8 kv heads of 128, tied embeddings,
interleaved M-RoPE [24, 20, 20], theta 5e6; vision: depth 24 x 1024, 16 heads, patch 16, merge 2, temporal patch
2, DeepStack from 3 layers [5, 11, 17]): the same classes, the same structure (tied embeddings, interleaved
M-RoPE over 3 sections, 3 DeepStack layers, patch/merge/temporal sizes, token layout), small sizes. Token ids are
remapped into a 128-id vocabulary (see `vl_tokenizer`): `image_token_id` etc. are the tiny ids.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from copd.tiny import vl_tokenizer as vt

DEFAULT_REPO_ID = "copd-tiny/Qwen3-VL-tiny"
#: The processor classes' module as remote code in the model folder (a copy of copd/tiny/qwen3vl_processing.py).
PROCESSING_MODULE = "processing_tiny_qwen3_vl"
PROCESSING_FILE = PROCESSING_MODULE + ".py"

#: Text tower (Qwen3-VL-4B: hidden 2560, 36 layers, 32/8 heads of 128, intermediate 9728).
TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,  # >= the 3 DeepStack layers, which add into the first 3 decoder layers
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention as in 4B (32 / 8)
    head_dim=16,
    hidden_act="silu",
    max_position_embeddings=262144,
    rms_norm_eps=1e-6,
    # 4B: mrope_section [24, 20, 20] of head_dim/2 = 64 rotary pairs (T, H, W); here 8 pairs
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "mrope_section": [4, 2, 2],
        "mrope_interleaved": True,
    },
    attention_bias=False,
    tie_word_embeddings=True,
)
#: Vision tower (4B: depth 24, hidden 1024, intermediate 4096, 16 heads, deepstack [5, 11, 17]).
VISION = dict(
    depth=4,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    hidden_act="gelu_pytorch_tanh",
    in_channels=3,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=2304,  # a 48 x 48 grid of learned positions, interpolated, as in 4B
    deepstack_visual_indexes=[1, 2, 3],
)
#: Processor sizes in pixels (4B: images 65,536..16,777,216; videos 4,096..25,165,824 over all frames);
#: shrunk so a 64 x 64 picture is 4 image tokens and a short clip a few dozen video tokens.
IMAGE_PIXELS = {"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 64}
VIDEO_PIXELS = {"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 64}
VIDEO_FRAMES = dict(fps=2, min_frames=2, max_frames=16)


def tiny_qwen3vl_config():
    """The `Qwen3VLConfig` (ids in the tiny vocabulary)."""
    from transformers import Qwen3VLConfig

    text = dict(
        TEXT,
        vocab_size=vt.VOCAB_SIZE,
        bos_token_id=vt.token_id("<|endoftext|>"),
        eos_token_id=vt.token_id("<|im_end|>"),
        pad_token_id=vt.token_id("<|endoftext|>"),
    )
    return Qwen3VLConfig(
        text_config=text,
        vision_config=dict(VISION, out_hidden_size=TEXT["hidden_size"]),
        image_token_id=vt.token_id("<|image_pad|>"),
        video_token_id=vt.token_id("<|video_pad|>"),
        vision_start_token_id=vt.token_id("<|vision_start|>"),
        vision_end_token_id=vt.token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )


def build_tiny_processor(tokenizer=None):
    """`Qwen3VLProcessor` over the tiny tokenizer, the PIL image processor and the torchvision-free video one."""
    from transformers import Qwen2VLImageProcessorPil

    from copd.tiny.qwen3vl_processing import Qwen3VLProcessor, TinyQwen3VLVideoProcessor

    mean_std = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    sizes = dict(patch_size=16, temporal_patch_size=2, merge_size=2)
    image_processor = Qwen2VLImageProcessorPil(size=dict(IMAGE_PIXELS), **sizes, **mean_std)
    video_processor = TinyQwen3VLVideoProcessor(size=dict(VIDEO_PIXELS), **sizes, **mean_std, **VIDEO_FRAMES)
    tokenizer = tokenizer or vt.build_vl_tokenizer()
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=vt.CHAT_TEMPLATE,
    )


def build_tiny_model(seed: int = 0):
    """The random `Qwen3VLForConditionalGeneration` (fp32, eval mode), its weights a function of `seed` only."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    config = tiny_qwen3vl_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config).eval()
    g = model.generation_config
    g.bos_token_id = vt.token_id("<|endoftext|>")
    g.eos_token_id = [vt.token_id("<|im_end|>"), vt.token_id("<|endoftext|>")]
    g.pad_token_id = vt.token_id("<|endoftext|>")
    # Qwen3-VL-4B-Instruct's sampling defaults
    g.do_sample, g.temperature, g.top_p, g.top_k, g.repetition_penalty = True, 0.7, 0.8, 20, 1.0
    return model


def _save_all(folder: Path, seed: int) -> None:
    build_tiny_model(seed).save_pretrained(folder)
    build_tiny_processor().save_pretrained(folder)
    # The processor classes travel as remote code (they import transformers, torch, numpy and PIL only).
    shutil.copyfile(Path(__file__).with_name("qwen3vl_processing.py"), folder / PROCESSING_FILE)
    config_path = folder / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoProcessor": f"{PROCESSING_MODULE}.Qwen3VLProcessor"}
    config["video_processor"]["auto_map"] = {"AutoVideoProcessor": f"{PROCESSING_MODULE}.TinyQwen3VLVideoProcessor"}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_tiny_qwen3vl(out_dir: str, seed: int = 0) -> str:
    """Write the tiny Qwen3-VL to `out_dir` (replaced atomically); return its absolute path.

    Deterministic: the same seed gives the same bytes (weights, configs, tokenizer, processor files).
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _save_all(tmp, seed)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return str(out)


def folder_revision(folder: str | Path) -> str:
    """A 40-hex revision for a model folder: sha1 over its files' names and bytes (stable for the same build)."""
    digest = hashlib.sha1()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def hub_cache_dir(cache_dir: str | None = None) -> Path:
    """The hub cache `from_pretrained` reads: `cache_dir`, else $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def install_hub_cache(repo_id: str = DEFAULT_REPO_ID, cache_dir: str | None = None, seed: int = 0) -> str:
    """Build the tiny Qwen3-VL into the hub cache layout under `repo_id`; return the snapshot path.

    Writes `models--{org}--{name}/snapshots/<rev>/...` and `refs/main` (= <rev>), where <rev> hashes the files.
    `cache_dir` defaults to where `from_pretrained` looks ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub).
    Loading needs `HF_HUB_OFFLINE=1` (no hub here) and, for the video processor, `trust_remote_code=True`.
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    repo = hub_cache_dir(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    repo.mkdir(parents=True, exist_ok=True)
    staged = Path(build_tiny_qwen3vl(str(repo / f".build-{os.getpid()}"), seed=seed))
    revision = folder_revision(staged)
    snapshot = repo / "snapshots" / revision
    if snapshot.exists():
        shutil.rmtree(staged)  # the same build is already installed
    else:
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    ref_tmp = repo / "refs" / f".main.{os.getpid()}"
    ref_tmp.write_text(revision)
    os.replace(ref_tmp, repo / "refs" / "main")
    return str(snapshot)


def main(argv=None) -> int:
    """`python -m copd.tiny.qwen3vl [--repo-id ORG/NAME] [--cache-dir DIR] [--out DIR] [--seed N]`: install into the
    hub cache (default) or write a plain folder (`--out`); prints the path."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m copd.tiny.qwen3vl", description=main.__doc__.splitlines()[0])
    p.add_argument("--repo-id", default=DEFAULT_REPO_ID, help="hub id to install under")
    p.add_argument("--cache-dir", default=None, help="hub cache (default: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache)")
    p.add_argument("--out", default=None, help="write a plain model folder here instead of the hub cache")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        path = (
            build_tiny_qwen3vl(args.out, args.seed)
            if args.out
            else install_hub_cache(args.repo_id, args.cache_dir, args.seed)
        )
    except ValueError as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
