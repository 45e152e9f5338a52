"""The HF export finds the model's files for a folder and for a hub id in the local cache."""

import pytest

from copd.tiny.qwen3vl import install_hub_cache
from recipe.copd.worker import model_files_dir


def test_folder_and_hub_id(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = install_hub_cache("copd-tiny/Qwen3-VL-tiny", cache_dir=str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))  # read at import from $HF_HUB_CACHE
    assert model_files_dir(snapshot) == snapshot
    resolved = model_files_dir("copd-tiny/Qwen3-VL-tiny")
    assert resolved == snapshot and (tmp_path / "hub").exists()
    with pytest.raises(FileNotFoundError, match="neither a folder nor in the local Hugging Face cache"):
        model_files_dir("nobody/not-there")
