"""benchmarks/process_cpu.py: process kinds, the per-kind sum, and a real child's CPU measured from /proc."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("process_cpu", REPO / "benchmarks" / "process_cpu.py")
process_cpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(process_cpu)


def test_ray_actors_are_named_by_their_class():
    assert process_cpu.process_kind("ray::HFServer.generate") == "HFServer"
    assert process_cpu.process_kind("ray::IDLE") == "IDLE"
    assert process_cpu.process_kind("python -m recipe.copd.main") == "python -m recipe.copd.main"


def test_aggregate_sums_each_kind_most_cpu_first():
    cpu = {"1": 2.0, "2": 3.0, "3": 0.5}
    names = {"1": "ray::WorkerDict.x", "2": "ray::WorkerDict.y", "3": "ray::HFServer"}
    assert process_cpu.aggregate(cpu, names) == [("WorkerDict", 2, 5.0), ("HFServer", 1, 0.5)]


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")
def test_a_busy_child_is_measured(capsys):
    burn = "import time; t = time.process_time(); [0 for _ in iter(lambda: time.process_time() - t < 1.5, False)]"
    assert process_cpu.main(["--period", "0.2", "--", sys.executable, "-c", burn]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("total CPU-s: ")
    child = [line for line in out.splitlines() if "-c import time" in line and line.split()[0][0].isdigit()]
    assert child and float(child[0].split()[0]) >= 1.0, out


def test_no_command_is_a_usage_error():
    with pytest.raises(SystemExit) as err:
        process_cpu.main([])
    assert err.value.code == 2
