"""Hydra entry of the CoPD recipe: ``python -m recipe.copd.main [overrides]``.

With no arguments it runs the embedded default on a CPU machine: it builds a two-skill toy task and a tiny
Qwen3 (cached), trains two co-evolving branches through verl's workers, merges them, and prints a table of
held-out accuracy per skill with plots of reward and overlap per step. The same trainer runs on GPUs
with vLLM from a preset in ``configs/``.

The run, in order: ``preflight.prepare`` (every check that can reject the input, before Ray starts),
``runner.run_copd`` (Ray, the trainer, the merge), then for the embedded default its baseline and report.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import warnings
from collections.abc import Collection

import hydra
from omegaconf import DictConfig

from recipe.copd.checks import first_line, unknown_key_line
from recipe.copd.preflight import prepare
from recipe.copd.runner import QUIET_WARNINGS, run_copd

_, _, _category, _module = QUIET_WARNINGS.split(":")
warnings.filterwarnings("ignore", category=UserWarning, module=_module.replace(".", r"\."))


def _refuse(line: str) -> None:
    print(f"copd: error: {line}", file=sys.stderr)
    sys.exit(2)


def main_with_config(config: DictConfig, keep: Collection[str] = ()) -> dict:
    """Run CoPD with a composed config; bad input exits 2 with one line before anything expensive starts, a run
    that fails later exits 1 with one line (the traceback goes to ``copd_error.log`` in the output folder).
    ``keep``: the keys the user set on the command line (the CPU settings do not overwrite them)."""
    from recipe.copd.run_lock import RunLock
    from recipe.copd.runner import RunFailed

    t0 = time.time()
    try:
        prepared = prepare(config, keep)
        lock = RunLock.acquire(config.trainer.default_local_dir)
    except (ValueError, FileNotFoundError) as err:  # bad input: one actionable line, no traceback
        _refuse(str(err))
    try:
        result = run_copd(config, prepared.copd, prepared.run)
    except RunFailed as err:
        _fail(config, f"{err}")
    except Exception as err:  # anything else that ends a run: one line, the details in a file
        _fail(config, f"the run failed: {first_line(err)}")
    finally:
        lock.release()
    if prepared.toy_files is not None:
        from recipe.copd.toy.report import toy_finish

        toy_finish(config, prepared, result, t0)
    return result


def _fail(config: DictConfig, line: str) -> None:
    """Exit 1 with one line; the full traceback goes to ``copd_error.log`` beside the run's outputs."""
    log = os.path.join(str(config.trainer.default_local_dir), "copd_error.log")
    try:
        os.makedirs(os.path.dirname(log), exist_ok=True)
        with open(log, "w") as f:
            f.write(traceback.format_exc())
        where = f" (traceback: {log})"
    except OSError:
        where = ""
    print(f"copd: error: {line}{where}", file=sys.stderr)
    sys.exit(1)


@hydra.main(config_path="config", config_name="copd_trainer", version_base=None)
def main(config: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from recipe.copd.platform_setup import override_keys

    main_with_config(config, keep=override_keys(HydraConfig.get().overrides.task))


def compose_error_line(err: BaseException) -> str:
    """One line for hydra's config-composition error: an override of a missing key names the nearest valid key."""
    cause = err.__cause__ or err.__context__
    full_key = getattr(cause, "full_key", None)
    parent = getattr(cause, "parent_node", None)
    if "Could not override" in str(err) and full_key and parent is not None and hasattr(parent, "keys"):
        return unknown_key_line(str(full_key), list(parent.keys()))
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    override = getattr(err, "override", None)  # hydra's OverrideParseException
    return f"cannot parse the override {override}: {text}" if override else text


def cli() -> None:
    """``main()`` with hydra's own composition errors (a multi-line report, exit 1) turned into one line, exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # hydra re-raises instead of printing its report
    try:
        main()
    except (HydraException, OmegaConfBaseException) as err:  # raised while composing, before main_with_config
        _refuse(compose_error_line(err))


if __name__ == "__main__":
    cli()
