"""Toy setting for CPU runs: a character tokenizer and a tiny Qwen3, both built offline."""

from recipe.copd.toy.model import build_tiny_qwen3, save_tiny
from recipe.copd.toy.tokenizer import build_char_tokenizer

__all__ = ["build_char_tokenizer", "build_tiny_qwen3", "save_tiny"]
