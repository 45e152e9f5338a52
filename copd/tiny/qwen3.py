"""A tiny randomly initialised Qwen3 causal LM over the character tokenizer, built and saved offline."""

import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

from copd.tiny.char_tokenizer import build_char_tokenizer


def build_tiny_qwen3(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    seed: int = 0,
) -> Qwen3ForCausalLM:
    """A fp32 Qwen3ForCausalLM sized for CPU tests (~0.1M parameters at the defaults).

    The vocabulary is `len(tokenizer)`, embeddings are untied (as verl's FSDP weight sync expects separate
    `lm_head.weight`), eos/pad/bos ids come from the tokenizer (bos falls back to pad), the context is 512.
    `intermediate_size` defaults to 2 * hidden_size. The same `seed` gives the same weights.
    """
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(
            f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}, "
            f"and num_heads by num_kv_heads={num_kv_heads}"
        )
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=bos_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=bos_id
    )
    return model


def save_tiny(out_dir: str | os.PathLike, **kw) -> Path:
    """Write the tiny model, its tokenizer and generation config to `out_dir` atomically; return the path.

    Builds in a temporary sibling directory and renames it into place, so a reader never sees a half-written
    model (an existing `out_dir` is replaced). `kw` goes to `build_tiny_qwen3`.
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer()
    model = build_tiny_qwen3(tokenizer, **kw)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
