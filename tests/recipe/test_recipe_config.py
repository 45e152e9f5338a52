"""Bad input to `python -m recipe.copd.main` fails fast with one actionable line and exit code 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _main(*overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "recipe.copd.main", "copd.run.toy.enable=false", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["copd.branches=[{name: a, beta: -1.0}, {name: b}]"], "beta"),
        (["copd.s_rl=0", "copd.s_opd=0"], "s_rl"),
        (["copd.topology=star"], "topology"),
        (["copd.topology=hub", "copd.hub=nobody"], "hub"),
        (["copd.merge_weights=[1.0]"], "merge_weights"),
        (["copd.branches=[{name: a}]"], "branch"),
        (["+copd.bogus_knob=1"], "bogus_knob"),
        (["+copd.run.validate_merge=false"], "validate_merge"),  # copd.run rejects unknown keys too
        (["copd.run.cross_batch_size=0"], "cross_batch_size"),
        (["copd.branches=[{name: a, train_files: [/no/such.parquet]}, {name: b}]"], "/no/such.parquet"),
        (["actor_rollout_ref.rollout.name=sglang"], "rollout.name=sglang"),
        (["actor_rollout_ref.rollout.disaggregation.enabled=true"], "disaggregation"),
    ],
)
def test_bad_input_is_one_line(overrides, needle, tmp_path):
    proc = _main(f"trainer.default_local_dir={tmp_path}", *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("copd: error:")]
    assert len(err) == 1 and needle in err[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir()), "a rejected run wrote outputs"
