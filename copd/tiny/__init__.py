"""Tiny, randomly initialised models and tokenizers built offline (no model hub), for CPU runs, rehearsals of the
GPU runs, and tests.

Below both `recipe` and `verl_patches`, so either may use them. Imports transformers and tokenizers only (no ray,
verl or hydra); nothing heavy is imported here.
- `copd.tiny.qwen3`: a tiny Qwen3 causal LM over `copd.tiny.char_tokenizer`'s characters (the embedded default).
- `copd.tiny.qwen3vl`: a random Qwen3-VL (model, tokenizer, chat template, image and video processors), installed
  into a local Hugging Face cache so that a hub id such as `copd-tiny/Qwen3-VL-tiny` loads offline.
"""
