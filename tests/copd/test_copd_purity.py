"""`copd` stays a pure library: importing it pulls no ray, hydra or verl (verl only on explicit registration)."""

import pkgutil
import subprocess
import sys

import copd

# every module of the package, found by walking it (a new module is checked without editing this list)
MODULES = ["copd"] + [m.name for m in pkgutil.walk_packages(copd.__path__, "copd.") if not m.name.endswith("__main__")]

CHECK = """
import sys
for name in {modules!r}:
    __import__(name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "hydra", "verl"))
assert not bad, f"copd imported {{bad[:5]}}"
"""


def test_import_pulls_no_ray_hydra_or_verl():
    code = CHECK.format(modules=MODULES)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
