"""Hydra entry of the CoPD recipe: ``python -m recipe.copd.main [overrides]``.

With no arguments it runs the embedded default on a CPU machine: it builds a two-skill toy task and a tiny
Qwen3 (cached), trains two co-evolving branches through verl's workers, merges them, and prints a table of
held-out accuracy per skill with plots of reward and overlap per step. The same trainer runs on GPUs
with vLLM from a preset in ``configs/``.

The run, in order: ``preflight.prepare`` (every check that can reject the input, before Ray starts),
``runner.run_copd`` (Ray, the trainer, the merge), then for the embedded default its baseline and report.
"""

from __future__ import annotations

import sys
import time
import warnings

import hydra
from omegaconf import DictConfig

from recipe.copd.preflight import prepare
from recipe.copd.runner import QUIET_WARNINGS, run_copd

_, _, _category, _module = QUIET_WARNINGS.split(":")
warnings.filterwarnings("ignore", category=UserWarning, module=_module.replace(".", r"\."))


def main_with_config(config: DictConfig) -> dict:
    """Run CoPD with a composed config; bad input exits 2 with one line before anything expensive starts."""
    t0 = time.time()
    try:
        prepared = prepare(config)
    except (ValueError, FileNotFoundError) as err:  # bad input: one actionable line, no traceback
        print(f"copd: error: {err}", file=sys.stderr)
        sys.exit(2)
    result = run_copd(config, prepared.copd, prepared.run)
    if prepared.toy_files is not None:
        from recipe.copd.toy.report import toy_finish

        toy_finish(config, prepared, result, t0)
    return result


@hydra.main(config_path="config", config_name="copd_trainer", version_base=None)
def main(config: DictConfig) -> None:
    main_with_config(config)


if __name__ == "__main__":
    main()
