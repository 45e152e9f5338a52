"""Tiny, offline, deterministic stand-ins for the paper's models, for CPU rehearsals of the GPU runs.

`copd.tiny.qwen3vl` builds a random Qwen3-VL (model, tokenizer, chat template, image and video processors) and
installs it into a local Hugging Face cache so that a hub id such as `copd-tiny/Qwen3-VL-tiny` loads offline.
Nothing heavy is imported here.
"""
