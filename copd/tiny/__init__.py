"""Tiny, randomly initialised models and tokenizers built offline (no model hub), for CPU runs and tests.

Below both `recipe` and `verl_patches`, so either may use them. Imports transformers and tokenizers only (no ray,
verl or hydra). `copd.tiny.qwen3`: a tiny Qwen3 causal LM over `copd.tiny.char_tokenizer`'s character vocabulary
(the embedded default's model).
"""
