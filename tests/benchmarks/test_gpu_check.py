"""benchmarks/gpu_check.py runs at a tiny size on CPU, passes its own checks, and imports no ray, verl or hydra
(the GPU box it is written for has only torch and transformers)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RUN = """
import runpy, sys
sys.argv = ["gpu_check.py", *{argv!r}]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as e:
    code = e.code
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "verl", "hydra", "omegaconf"))
assert not bad, f"gpu_check imported {{bad[:5]}}"
sys.exit(code)
"""


def test_tiny_cpu_run_passes_and_stays_off_ray_verl_hydra(tmp_path):
    argv = ["--shape", "tiny", "--device", "cpu", "--dtype", "fp32", "--lengths", "16,64", "--tokens", "128",
            "--chunk", "64", "--repeats", "1", "--workdir", str(tmp_path / "work")]  # fmt: skip
    argv += ["--json-out", str(tmp_path / "r.json")]
    code = RUN.format(argv=argv, script=str(REPO / "benchmarks" / "gpu_check.py"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="")  # the script finds copd/ by itself
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    record = json.loads((tmp_path / "r.json").read_text())
    assert [p["length"] for p in record["passes"]] == [16, 64] and record["merge"]["exact"]
    assert record["guard"]["absent"] is True
    assert "[FAIL]" not in out.stdout and out.stdout.count("[PASS]") == 8
    assert not list((tmp_path / "work").glob("merged*"))  # the merged copy is removed, the inputs stay
