"""`copd` stays a pure library: importing it pulls no ray, hydra or verl (verl only on explicit registration)."""

import importlib.util
import subprocess
import sys

MODULES = ["copd", "copd.overlap", "copd.schedule", "copd.topology", "copd.config", "copd.advantages"]
MODULES += ["copd.tiny", "copd.tiny.qwen3vl", "copd.tiny.vl_tokenizer", "copd.tiny.qwen3vl_processing"]
if importlib.util.find_spec("copd.merge") is not None:
    MODULES.append("copd.merge")

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
