"""``python -m recipe.copd.eval --models NAME=PATH ... --benchmarks SPEC --data DIR [--out DIR]``: Table 1.

For each model, the recipe itself (``python -m recipe.copd.main``, a subprocess) validates one branch whose
validation files are the benchmarks' parquet files (``trainer.val_only``): generation is verl's rollout (vLLM on
GPU, the ``hf`` rollout on CPU), scoring is ``recipe.copd.reward`` (the built-in scorers), and verl's validation
metrics give one accuracy per data source (``val-core/<benchmark>/acc/mean@n``: the mean over the n samples of
every prompt). The numbers go into ``DIR/report.json`` and ``DIR/report.md`` in Table 1's layout. Files that verl
cannot load as one dataset (MVBench's frame lists beside VideoMathQA's mp4 paths) are validated in separate runs.

Sampling: greedy by default (n=1, temperature 0); ``--n 8 --temperature 1.0`` reports the mean accuracy of 8
samples per prompt. Hydra overrides after ``--`` go to the recipe (e.g. a preset's lengths, GPUs, TP size).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pandas as pd

from recipe.copd.data.registry import DATASETS, GROUPS, benchmarks
from recipe.copd.table import build_table, render_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class EvalError(ValueError):
    """Bad input to the evaluation (an unknown benchmark, a missing file or model)."""


def parse_benchmarks(spec: str) -> list[str]:
    """``text,image``, ``all`` or benchmark names (comma-separated) -> benchmark names in Table 1's order."""
    chosen = set()
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "all":
            chosen |= set(benchmarks())
        elif item in GROUPS:
            chosen |= set(benchmarks(item))
        elif item in DATASETS and DATASETS[item].role == "eval":
            chosen.add(item)
        else:
            raise EvalError(f"--benchmarks: {item!r} is not a group ({', '.join(GROUPS)}, all) or a benchmark "
                            f"({', '.join(benchmarks())})")  # fmt: skip
    return [b for b in benchmarks() if b in chosen]


def benchmark_file(data_dir: str, name: str) -> str:
    """The prepared file of a benchmark: ``<name>.parquet`` or ``<name>_<split>.parquet`` (``recipe.copd.data``)."""
    spec = DATASETS[name]
    for base in (name, f"{name}_{spec.split or spec.role}"):
        path = os.path.join(data_dir, f"{base}.parquet")
        if os.path.isfile(path):
            return path
    raise EvalError(f"benchmark {name}: no {name}.parquet or {name}_{spec.split or spec.role}.parquet in {data_dir} "
                    f"(prepare it: python -m recipe.copd.data {name} --input ... --output {data_dir})")  # fmt: skip


def recipe_command(model: str, files: list[str], run_dir: str, args, overrides: list[str]) -> list[str]:
    """The recipe's command line that validates ``model`` on ``files`` and stops (no training)."""
    listed = ", ".join(f'"{f}"' for f in files)
    do_sample = args.n > 1 or args.temperature > 0
    cmd = [sys.executable, "-m", "recipe.copd.main"]
    if args.config_name:
        cmd += ["--config-path", os.path.abspath(args.config_path), "--config-name", args.config_name]
    return cmd + [
        "copd.run.toy.enable=false",
        f"copd.branches=[{{name: eval, data_source: null, train_files: [{listed}], val_files: [{listed}]}}]",
        # one branch, no teachers: the schedule is never run (val_only), it only has to validate
        "copd.topology=all", "copd.hub=null", "copd.edges=[]", "copd.merge_weights=null",
        "copd.n_cycles=1", "copd.s_rl=1", "copd.s_opd=0", "copd.run.validate_merged=false",
        f"actor_rollout_ref.model.path={os.path.abspath(model)}",
        "reward.custom_reward_function.path=pkg://recipe.copd.reward",
        "reward.custom_reward_function.name=compute_score",
        f"actor_rollout_ref.rollout.val_kwargs.n={args.n}",
        f"actor_rollout_ref.rollout.val_kwargs.do_sample={str(do_sample).lower()}",
        f"actor_rollout_ref.rollout.val_kwargs.temperature={args.temperature}",
        f"actor_rollout_ref.rollout.val_kwargs.top_p={args.top_p}",
        "trainer.val_only=true", "trainer.val_before_train=true", "trainer.resume_mode=disable",
        "data.gen_batch_size=1",  # verl's train dataloader (never drawn from here) is not empty for a small benchmark
        "trainer.logger=[console,file]", f"trainer.default_local_dir={run_dir}",
        *overrides,
    ]  # fmt: skip


def read_scores(metrics_path: str, names: list[str], n: int) -> dict[str, float]:
    """Accuracy (%) per benchmark from verl's validation metrics in the file logger's JSONL."""
    metrics = {}
    with open(metrics_path) as f:
        for line in f:
            metrics.update(json.loads(line).get("data", {}))
    out = {}
    for name in names:
        # verl's core variable: "acc" when the reward loop reports it (0.9.1 does), else "reward"
        hits = [
            v for var in ("acc", "reward") for k, v in metrics.items() if k.endswith(f"val-core/{name}/{var}/mean@{n}")
        ]
        if not hits:
            raise RuntimeError(f"no val-core/{name}/acc/mean@{n} in {metrics_path}: the validation did not run")
        out[name] = 100.0 * float(hits[0])
    return out


def loadable_groups(files: dict[str, str]) -> list[dict[str, str]]:
    """The benchmarks split into the fewest groups (greedily, in order) whose files verl's ``RLHFDataset`` can load
    as one dataset: ``datasets.concatenate_datasets`` refuses a column whose type differs between files, e.g. videos
    as mp4 paths (VideoMathQA) beside videos as frame lists (MVBench). Checked on the first row of each file."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable

    def first_row(path: str):
        batch = next(pq.ParquetFile(path).iter_batches(batch_size=1))
        return datasets.Dataset(InMemoryTable(pa.Table.from_batches([batch])))

    groups: list[tuple[list, dict[str, str]]] = []
    for name, path in files.items():
        row = first_row(path)
        for heads, members in groups:
            try:
                datasets.concatenate_datasets([*heads, row])
            except ValueError:
                continue
            heads.append(row)
            members[name] = path
            break
        else:
            groups.append(([row], {name: path}))
    return [members for _, members in groups]


def evaluate_model(name: str, path: str, files: dict[str, str], out_dir: str, args, overrides) -> dict[str, float]:
    """Run the recipe's validation on one model, once per group of files verl loads together (usually one);
    returns accuracy (%) per benchmark."""
    groups = loadable_groups(files)
    scores = {}
    for k, group in enumerate(groups):
        run = name if len(groups) == 1 else os.path.join(name, f"part{k + 1}")
        scores |= _validate(name, run, path, group, out_dir, args, overrides)
    return scores


def _validate(name: str, run: str, path: str, files: dict[str, str], out_dir: str, args, overrides) -> dict:
    run_dir = os.path.abspath(os.path.join(out_dir, "runs", run))
    os.makedirs(run_dir, exist_ok=True)
    metrics_path = os.path.join(run_dir, "val_metrics.jsonl")
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=metrics_path)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    cmd = recipe_command(path, list(files.values()), run_dir, args, overrides)
    t0 = time.time()
    with open(os.path.join(run_dir, "recipe.log"), "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(os.path.join(run_dir, "recipe.log")) as log:
            last = [line.strip() for line in log if line.strip()][-1:] or [""]
        raise RuntimeError(
            f"model {name}: the recipe exited {proc.returncode} ({last[0][:300]}); see {run_dir}/recipe.log"
        )
    print(f"[copd.eval] {name}: {', '.join(files)} in {time.time() - t0:.0f}s", flush=True)
    return read_scores(metrics_path, list(files), args.n)


def write_report(out_dir: str, scores: dict, counts: dict, protocol: dict) -> dict:
    """``report.json`` (scores, averages, counts, protocol) and ``report.md``, each written then renamed."""
    table = build_table(scores, counts)
    samples = {b: c * protocol["n"] for b, c in counts.items()}
    report = {"protocol": protocol, "scores": scores, "prompts": counts, "samples": samples, "table": table}
    note = (f"Accuracy (%), {protocol['description']}. n: prompts per benchmark (sum for averages). "
            "Group average: mean of its benchmarks; overall: mean of the group averages shown.")  # fmt: skip
    for fname, text in (("report.json", json.dumps(report, indent=1)), ("report.md", render_markdown(table, note))):
        tmp = os.path.join(out_dir, f".{fname}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, fname))
    return report


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m recipe.copd.eval", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", required=True, metavar="NAME=PATH", help="HF model folders to compare")
    p.add_argument("--benchmarks", default="all", help="groups (text, image, video, all) and/or names, by commas")
    p.add_argument("--data", required=True, help="folder of the prepared benchmark files (recipe.copd.data)")
    p.add_argument("--out", default="outputs/copd_eval", help="report folder")
    p.add_argument("--n", type=int, default=1, help="samples per prompt (accuracy is their mean)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 with --n 1: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--config-path", default=os.path.join(ROOT, "configs"), help="with --config-name: a preset")
    p.add_argument("--config-name", help="a preset of configs/ (e.g. qwen3vl_text_image); default: the CPU config")
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    return p.parse_args(argv[: argv.index("--")] if "--" in argv else argv), overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        models = dict(m.split("=", 1) for m in args.models if "=" in m)
        if len(models) != len(args.models):
            raise EvalError("--models: write each model as NAME=PATH")
        for name, path in models.items():
            if not os.path.isdir(path):
                raise EvalError(f"--models {name}={path}: not a folder")
        if args.n < 1 or (args.n > 1 and args.temperature <= 0):
            raise EvalError("--n must be >= 1, and --n > 1 needs --temperature > 0 (greedy samples are identical)")
        names = parse_benchmarks(args.benchmarks)
        files = {b: benchmark_file(args.data, b) for b in names}
    except EvalError as err:
        print(f"copd.eval: error: {err}", file=sys.stderr)
        return 2
    counts = {b: len(pd.read_parquet(f, columns=["data_source"])) for b, f in files.items()}
    os.makedirs(args.out, exist_ok=True)
    scores = {name: evaluate_model(name, path, files, args.out, args, overrides) for name, path in models.items()}
    greedy = args.n == 1 and args.temperature == 0
    desc = "greedy decoding" if greedy else f"mean over {args.n} samples at temperature {args.temperature}"
    protocol = {"n": args.n, "temperature": args.temperature, "top_p": args.top_p, "description": desc}
    report = write_report(args.out, scores, counts, protocol)
    print(render_markdown(report["table"]), flush=True)
    print(f"[copd.eval] report: {os.path.join(args.out, 'report.md')} and report.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
