"""Bad input to `python -m recipe.copd.main` fails fast with one actionable line and exit code 2, before Ray starts.

Each case runs the entry point in a subprocess on a user's run (the toy disabled) over a tiny random model and
toy parquet files, then checks: exit 2, the last stderr line is the one `copd: error:` line and names the problem,
no traceback, nothing written to the output folder, and no process of the run (Ray included) left behind.
"""

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

import verl_patches

ROOT = Path(__file__).resolve().parents[2]
TOY_REWARD = ROOT / "recipe" / "copd" / "toy" / "reward.py"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """A tiny random model, toy data and the bad files the cases point at."""
    from copd.tiny.qwen3 import save_tiny
    from recipe.copd.toy.tasks import build_toy_data

    work = tmp_path_factory.mktemp("bad_inputs")
    files = build_toy_data(work / "data", n_train=8, n_val=4, n_test=4)
    model = save_tiny(work / "model")
    (work / "not_parquet.parquet").write_text("prompt,answer\n1+1=,2\n")
    (work / "data.csv").write_text("prompt\n1+1=\n")
    frame = pd.read_parquet(files["add"]["train"])
    frame.drop(columns=["prompt"]).to_parquet(work / "no_prompt.parquet")
    frame.head(0).to_parquet(work / "empty.parquet")
    frame.assign(data_source="nobody/knows").to_parquet(work / "unscored.parquet")
    (work / "no_config").mkdir()
    (work / "no_config" / "model.safetensors").write_bytes(b"")
    (work / "no_tokenizer").mkdir()
    (work / "no_tokenizer" / "config.json").write_text((model / "config.json").read_text())
    return {"work": work, "files": files, "model": model}


def _branches(inputs, add_train=None, reward=True) -> str:
    f = inputs["files"]
    rows = []
    for skill, train in (("add", add_train or f["add"]["train"]), ("mul", f["mul"]["train"])):
        row = f"name: {skill}, data_source: copd_toy/{skill}, train_files: [{train}], val_files: [{f[skill]['val']}]"
        rows.append("{" + row + (f", reward_path: {TOY_REWARD}" if reward else "") + "}")
    return f"copd.branches=[{', '.join(rows)}]"


def _user_run(inputs, micro_batch=8, **kw) -> list[str]:
    model = f"actor_rollout_ref.model.path={inputs['model']}"
    micro = [f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch}"]
    micro += ["actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8"]  # whole micro-batches of 4 x 8 rows
    return ["copd.run.toy.enable=false", model, _branches(inputs, **kw), "data.train_batch_size=4", *micro]


def _tagged_processes(tag: str) -> list[int]:
    """Pids of live processes whose environment carries ``tag`` (the run's driver, Ray and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if tag.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _main(*args: str) -> subprocess.CompletedProcess:
    tag = f"COPD_TEST_RUN={uuid.uuid4().hex}"
    env = dict(os.environ, OMP_NUM_THREADS="1", COPD_TEST_RUN=tag.split("=")[1])
    cmd = [sys.executable, "-m", "recipe.copd.main", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    proc.leftover = _tagged_processes(tag)
    return proc


def _assert_refused(proc, needle: str, out: Path, before: list[str]) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines and lines[-1].startswith("copd: error:") and needle in lines[-1], proc.stderr[-2000:]
    assert sum(line.startswith("copd: error:") for line in lines) == 1
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == before if out.exists() else not before, "a refused run wrote"
    assert not proc.leftover, f"processes of the refused run outlived it: {proc.leftover}"


CONFIG_CASES = [
    (["copd.branches=[{name: a, beta: -1.0}, {name: b}]"], "beta"),
    (["copd.s_rl=0", "copd.s_opd=0"], "s_rl"),
    (["copd.topology=star"], "topology"),
    (["copd.topology=hub", "copd.hub=nobody"], "hub"),
    (["copd.merge_weights=[1.0]"], "merge_weights"),
    (["copd.branches=[{name: a}]"], "branch"),
    (["+copd.bogus_knob=1"], "bogus_knob"),
    (["copd.branches=[{name: a, train_files: [/no/such.parquet]}, {name: b}]"], "/no/such.parquet"),
    (["actor_rollout_ref.rollout.name=sglang"], "rollout.name=sglang"),
    (["actor_rollout_ref.rollout.disaggregation.enabled=true"], "disaggregation"),
    # an override of a key that does not exist: the same line with and without `+`, naming the nearest key
    (["copd.sr_l=3"], "unknown config key copd.sr_l; did you mean copd.s_rl?"),
    (["+copd.sr_l=3"], "unknown config key copd.sr_l; did you mean copd.s_rl?"),
    (["copd.run.validate_merge=false"], "did you mean copd.run.validate_merged?"),
    (["+copd.run.toy.n_trian=3"], "did you mean copd.run.toy.n_train?"),
    (["trainer.save_frq=1"], "unknown config key trainer.save_frq; did you mean trainer.save_freq?"),
    (["data.train_batch_size=[1"], "cannot parse the override data.train_batch_size=[1"),  # hydra cannot parse it
    (["copd.run.cross_batch_size=0"], "cross_batch_size"),  # copd.run's values are checked too
    (
        ["algorithm.rollout_correction.bypass_mode=true", "actor_rollout_ref.rollout.calculate_log_probs=false"],
        "calculate_log_probs=true",
    ),  # verl's rollout default is true; a user who turned it off is told
]


@pytest.mark.parametrize(("overrides", "needle"), CONFIG_CASES)
def test_bad_config_is_one_line(overrides, needle, tmp_path):
    out = tmp_path / "run"
    proc = _main("copd.run.toy.enable=false", f"trainer.default_local_dir={out}", *overrides)
    _assert_refused(proc, needle, out, [])


@pytest.mark.skipif(not verl_patches.is_cpu(), reason="on an accelerator vLLM is the rollout")
def test_a_gpu_rollout_named_on_the_command_line_is_refused_on_cpu(tmp_path):
    # the CPU settings keep the user's keys; this one cannot run here, so it is refused before the toy's warm start
    out = tmp_path / "run"
    workdir = tmp_path / "toy"
    rollout = "actor_rollout_ref.rollout.name=vllm"
    proc = _main(f"copd.run.toy.workdir={workdir}", f"trainer.default_local_dir={out}", rollout)
    _assert_refused(proc, "rollout.name=vllm needs an accelerator", out, [])
    assert not workdir.exists()  # no data, no warm start


# the files a run names are opened and checked before Ray starts: (case, needle)
FILE_CASES = [
    ("not_parquet", "does not read as parquet"),
    ("csv", "must end in .parquet, .json or .jsonl"),
    ("no_prompt", "lacks column(s) ['prompt']"),
    ("empty", "has no rows"),
    ("too_long", "exceeds data.max_prompt_length=3, and data.truncation=error stops the run"),
    ("too_long_filtered", "no prompt among the first 8 rows"),
    ("small_batch", "fewer than one batch (data.train_batch_size=64)"),
    ("unscored", "no scorer for data_source='nobody/knows'"),
    ("no_reward_route", "no scorer for data_source='copd_toy/add'"),
    ("no_config", "has no config.json"),
    ("no_tokenizer", "has no tokenizer (tokenizer.json"),
    ("locked", "is in use by a running copd run"),
    # checked after the data: 1 cross prompt x n 8 = 8 rows is not a whole number of 16-row micro-batches
    ("micro_batch", "ppo_micro_batch_size_per_gpu=16 does not divide a step's cross rows (8"),
]


@pytest.mark.parametrize(("case", "needle"), FILE_CASES, ids=[c for c, _ in FILE_CASES])
def test_bad_files_are_one_line(case, needle, inputs, tmp_path):
    work, out = inputs["work"], tmp_path / "run"
    extra, before = [], []
    if case in ("not_parquet", "no_prompt", "empty", "unscored"):
        args = _user_run(inputs, add_train=work / f"{case}.parquet")
    elif case == "csv":
        args = _user_run(inputs, add_train=work / "data.csv")
    elif case == "no_reward_route":
        args = _user_run(inputs, reward=False)
    elif case == "micro_batch":
        args = [*_user_run(inputs, micro_batch=16), "copd.run.cross_batch_size=1"]
    elif case in ("no_config", "no_tokenizer"):
        args = [*_user_run(inputs), f"actor_rollout_ref.model.path={work / case}"]
    else:
        args = _user_run(inputs)
    if case == "too_long":
        extra = ["data.max_prompt_length=3"]
    if case == "too_long_filtered":
        extra = ["data.max_prompt_length=3", "data.filter_overlong_prompts=true"]
    if case == "small_batch":
        extra = ["data.train_batch_size=64"]
    if case == "locked":  # a live owner on this host: this test's own process
        out.mkdir()
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": "earlier"}
        (out / "copd.lock").write_text(json.dumps(owner))
        before = ["copd.lock"]
    proc = _main(*args, *extra, f"trainer.default_local_dir={out}")
    _assert_refused(proc, needle, out, before)
