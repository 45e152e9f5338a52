"""A run SIGKILLed mid-phase and resumed ends with the same merged weights as an uninterrupted run, bitwise.

`rollout.full_determinism=true` (per-sample seeds from stable uids), fixed seeds, CPU. Slow: three recipe runs.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

RUN = [
    "copd.n_cycles=1",
    "copd.s_rl=2",
    "copd.s_opd=2",  # steps 1-2 Phase I, 3-4 Phase II
    "trainer.save_freq=1",
    "actor_rollout_ref.rollout.full_determinism=true",
    "copd.run.validate_merged=false",
]
KILL_AFTER_CHECKPOINT = 3  # the kill lands in step 4, mid Phase II


def _cmd(workdir: Path, tiny: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "recipe.copd.main", f"copd.run.toy.workdir={workdir}", *tiny, *RUN, *extra]


def _env(workdir: Path) -> dict:  # verl's file logger writes under VERL_FILE_LOGGER_ROOT (else into the cwd)
    return dict(os.environ, OMP_NUM_THREADS="1", VERL_FILE_LOGGER_ROOT=str(workdir / "tracking"))


def _merged(workdir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(workdir / "run" / "merged" / "model.safetensors"))


def _run_and_kill(workdir: Path, tiny: list[str], log: Path) -> None:
    """Start a run in its own process group; SIGKILL the whole group once checkpoint N is complete."""
    tracker = workdir / "run" / "latest_checkpointed_iteration.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            _cmd(workdir, tiny),
            cwd=ROOT,
            env=_env(workdir),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 900
        try:
            while time.time() < deadline and proc.poll() is None:
                if tracker.exists() and tracker.read_text().strip() == str(KILL_AFTER_CHECKPOINT):
                    break
                time.sleep(0.05)
            assert proc.poll() is None, f"the run ended before checkpoint {KILL_AFTER_CHECKPOINT}: {log}"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Ray cluster and workers: no clean shutdown
            proc.wait()


def test_sigkill_mid_phase_then_resume_is_bitwise(tmp_path, toy_workdir, tiny_overrides):
    straight = toy_workdir(tmp_path / "straight")
    proc = subprocess.run(
        _cmd(straight, tiny_overrides), cwd=ROOT, env=_env(straight), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    killed = toy_workdir(tmp_path / "killed")
    _run_and_kill(killed, tiny_overrides, tmp_path / "killed.log")
    assert not (killed / "run" / "merged").exists()
    proc = subprocess.run(
        _cmd(killed, tiny_overrides, "trainer.resume_mode=auto"),
        cwd=ROOT,
        env=_env(killed),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[copd] step 4/4" in proc.stdout and "[copd] step 3/" not in proc.stdout  # resumed after step 3

    a, b = _merged(straight), _merged(killed)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"merged weights differ after kill + resume: {differ[:3]}"
