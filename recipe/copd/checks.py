"""The input checks that open files, done before Ray starts: every data file a branch names is read (format,
the columns verl's dataset and reward loop read, prompts that fit ``data.max_prompt_length``, a scorer for every
``data_source`` in it), every model folder loads (config and tokenizer), and config keys that do not exist are
named with the nearest valid one. Each failure is one ``ValueError`` line (``recipe.copd.main`` exits 2)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable

from omegaconf import DictConfig

from copd.config import CoPDConfig

#: rows per data file whose prompts are tokenized for the length check (a run needs some prompts that fit)
LENGTH_SAMPLE = 64
DATA_SUFFIXES = (".parquet", ".json", ".jsonl")  # what verl's RLHFDataset reads
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def first_line(err: BaseException) -> str:
    """``Type: first line of the message``, for an error raised by a library."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def unknown_key_line(full_key: str, valid: Iterable[str]) -> str:
    """One line for a config key that does not exist, with the nearest valid key when one is close."""
    parent, _, leaf = full_key.rpartition(".")
    valid = sorted(str(v) for v in valid)
    near = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.5)
    hint = f"did you mean {parent + '.' if parent else ''}{near[0]}?" if near else f"valid keys: {', '.join(valid)}"
    return f"unknown config key {full_key}; {hint}"


def check_copd_keys(node: dict) -> None:
    """Name the first key under ``copd`` (``copd.run``, ``copd.run.toy``) that is not a field, like a hydra override
    of a missing key does (``+copd.sr_l=3`` and ``copd.sr_l=3`` give the same line)."""
    import dataclasses

    from recipe.copd.preflight import RECIPE_KEYS
    from recipe.copd.run_config import RunConfig, ToyConfig

    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    levels = [("copd", node, fields(CoPDConfig) + list(RECIPE_KEYS))]
    if isinstance(node.get("run"), dict):
        levels.append(("copd.run", node["run"], fields(RunConfig)))
        if isinstance(node["run"].get("toy"), dict):
            levels.append(("copd.run.toy", node["run"]["toy"], fields(ToyConfig)))
    for where, d, valid in levels:
        for key in d:
            if key not in valid:
                raise ValueError(unknown_key_line(f"{where}.{key}", valid))


def _read_table(path: str, columns: list[str] | None = None):
    """The file's column names, row count and (for ``columns``) the first rows as a list of dicts."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = list(pf.schema_arrow.names)
        n_rows = pf.metadata.num_rows
        rows = []
        if columns and n_rows:
            cols = [c for c in columns if c in names]
            batch = next(pf.iter_batches(batch_size=LENGTH_SAMPLE, columns=cols), None)
            rows = batch.to_pylist() if batch is not None else []
        return names, n_rows, rows, (lambda col: pf.read(columns=[col]).column(col).to_pylist())
    import pandas as pd

    frame = pd.read_json(path, lines=path.endswith(".jsonl"))
    head = frame.head(LENGTH_SAMPLE).to_dict("records")
    return list(frame.columns), len(frame), head, (lambda col: frame[col].tolist())


def check_data_file(path: str, where: str, data_cfg: DictConfig, tokenizer) -> tuple[set[str], int]:
    """Open ``path`` as verl's dataset would; return the ``data_source`` values in it and its row count."""
    if not path.endswith(DATA_SUFFIXES):
        raise ValueError(f"{where}: data file {path} must end in .parquet, .json or .jsonl (what verl reads)")
    prompt_key = str(data_cfg.get("prompt_key", "prompt"))
    source_key = str(data_cfg.get("reward_fn_key", "data_source"))
    try:
        names, n_rows, rows, column = _read_table(path, [prompt_key])
    except Exception as err:  # pyarrow / pandas: not parquet, truncated, unreadable
        kind = path.rsplit(".", 1)[-1]
        raise ValueError(f"{where}: data file {path} does not read as {kind}: {first_line(err)}") from None
    missing = [c for c in (prompt_key, source_key, "reward_model") if c not in names]
    if missing:
        raise ValueError(
            f"{where}: data file {path} lacks column(s) {missing} that verl reads (has {names}); "
            f"data.prompt_key / data.reward_fn_key name other columns"
        )
    if n_rows == 0:
        raise ValueError(f"{where}: data file {path} has no rows")
    _check_prompt_lengths(rows, prompt_key, int(data_cfg.max_prompt_length), data_cfg, tokenizer, where, path)
    return {str(s) for s in set(column(source_key))}, n_rows


def _check_prompt_lengths(rows, key, limit, data_cfg, tokenizer, where, path) -> None:
    """verl drops prompts longer than ``limit`` tokens (``data.filter_overlong_prompts``), or raises on the first one
    (``data.truncation=error``): refuse a file where none of the first rows would stay, or where one would raise."""
    filtered = bool(data_cfg.get("filter_overlong_prompts", False))
    if not filtered and data_cfg.get("truncation", "error") != "error":
        return  # verl cuts long prompts to the limit
    kwargs = dict(data_cfg.get("apply_chat_template_kwargs") or {})
    for k in ("tokenize", "return_dict", "return_tensors"):
        kwargs.pop(k, None)
    lengths, error = [], None
    for row in rows:
        messages = row[key]
        if not isinstance(messages, list):
            raise ValueError(f"{where}: data file {path}: column {key} must hold chat messages [{{role, content}}]")
        try:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
        except Exception as err:
            error = error or err
            continue
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        lengths.append(len(ids))
    if not lengths and error is not None:
        raise ValueError(f"{where}: data file {path}: the prompts do not go through the chat template: "
                         f"{first_line(error)}")  # fmt: skip
    if lengths and not filtered and max(lengths) > limit:
        raise ValueError(
            f"{where}: a prompt of {max(lengths)} tokens in {path} exceeds data.max_prompt_length={limit}, and "
            f"data.truncation=error stops the run on it; raise the limit, or set data.filter_overlong_prompts=true"
        )
    if lengths and min(lengths) > limit:
        raise ValueError(
            f"{where}: no prompt among the first {len(lengths)} rows of {path} fits data.max_prompt_length={limit} "
            f"(shortest: {min(lengths)} tokens); raise data.max_prompt_length"
        )


def load_model(path: str, where: str, trust_remote_code: bool):
    """Load the model config and tokenizer at ``path`` (as verl's workers will); returns the tokenizer."""
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{where}={path} has no config.json: point it at a Hugging Face model folder")
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise ValueError(f"{where}={path} has no tokenizer ({' / '.join(TOKENIZER_FILES)}): save one beside the model")
    from transformers import AutoConfig
    from verl.utils import hf_tokenizer

    try:
        AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise ValueError(f"{where}={path}: the model config does not load: {first_line(err)}") from None
    try:
        return hf_tokenizer(path, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise ValueError(f"{where}={path}: the tokenizer does not load: {first_line(err)}") from None


def _routes(config: DictConfig, copd: CoPDConfig) -> dict | None:
    """The reward router's table, or None when the run scores with something this check cannot see into."""
    from recipe.copd import reward as reward_module
    from recipe.copd.reward import route_table

    reward = config.get("reward") or {}
    if (reward.get("reward_model") or {}).get("enable", False):
        return None
    custom = (reward.get("custom_reward_function") or {}).get("path")
    routes = route_table(copd)
    router = (os.path.abspath(reward_module.__file__), "pkg://recipe.copd.reward")
    if custom and not routes and str(custom) not in router:
        return None  # a user's own reward function decides what it scores
    kwargs = (reward.get("custom_reward_function") or {}).get("reward_kwargs") or {}
    return {**dict(kwargs.get("routes") or {}), **routes}


def check_data_and_models(config: DictConfig, copd: CoPDConfig) -> None:
    """Every model folder loads, every data file reads with the columns and prompt lengths verl needs, and every
    ``data_source`` in the data has a scorer."""
    from recipe.copd.reward import has_scorer

    model_cfg = config.actor_rollout_ref.model
    trust = bool(model_cfg.get("trust_remote_code", False))
    tokenizers: dict[str, object] = {}

    def tokenizer_for(path: str, where: str):
        if path not in tokenizers:
            tokenizers[path] = load_model(path, where, trust)
        return tokenizers[path]

    routes = _routes(config, copd)
    rows: dict[str, int] = {}
    for b in copd.branches:
        path, where = (b.init_path, f"branch {b.name}: init_path") if b.init_path else (
            str(model_cfg.path), "actor_rollout_ref.model.path"
        )  # fmt: skip
        tokenizer = tokenizer_for(path, where)
        rows[b.name] = 0
        for file in (*b.train_files, *b.val_files):
            sources, n_rows = check_data_file(file, f"branch {b.name}", config.data, tokenizer)
            rows[b.name] += n_rows if file in b.train_files else 0
            for source in sorted(sources):
                if routes is not None and not has_scorer(source, routes):
                    raise ValueError(
                        f"branch {b.name}: no scorer for data_source={source!r} in {file}: give the branch "
                        f"data_source: {source} and reward_path: <a .py with compute_score>, or use a source "
                        f"verl scores by default"
                    )
    if not config.trainer.get("val_only", False):  # an evaluation never draws a training batch
        _check_batch_sizes(config, copd, rows)


def _check_batch_sizes(config: DictConfig, copd: CoPDConfig, rows: dict[str, int]) -> None:
    """A branch's own prompts fill a ``data.train_batch_size`` batch, and a teacher's fill a cross batch."""
    from recipe.copd.preflight import run_config_from

    batch = int(config.data.train_batch_size)
    cross = run_config_from(config).cross_batch_size or batch
    teachers = {teacher for _, teacher in copd.pairs}
    for b in copd.branches:
        if not b.train_files:
            continue
        if not b.frozen and rows[b.name] < batch:
            raise ValueError(
                f"branch {b.name}: its train_files hold {rows[b.name]} prompts, fewer than one batch "
                f"(data.train_batch_size={batch}); lower data.train_batch_size or add data"
            )
        if b.name in teachers and rows[b.name] < cross:
            raise ValueError(
                f"branch {b.name}: its train_files hold {rows[b.name]} prompts, fewer than one cross batch of its "
                f"students ({cross}: copd.run.cross_batch_size or data.train_batch_size); lower it or add data"
            )
