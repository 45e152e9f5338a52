"""The paper's comparison in miniature, on the embedded two-skill toy task (skills ``add`` and ``mul``).

``python -m recipe.copd.compare [--seeds N] [--methods M ...] [--out DIR] [--steps T] [-- hydra overrides]``

Every method is a run of the same trainer (``recipe.copd.main.main_with_config``) composed from ``copd_trainer`` with
its own ``copd:`` node, as the presets of ``configs/baselines`` and ``configs/ablations`` spell them:

- ``base``: the warm-started toy model; ``expert_add`` / ``expert_mul``: one K=2 run with S_OPD = 0 (branches that
  never interact are independent experts), T steps each; ``average``: their parameter average (``copd.merge``);
- ``mixed``: one branch on the union of both skills' data (GRPO), 2T steps;
- ``static_add_to_mul`` / ``static_mul_to_add``: the frozen add (mul) expert teaches a mul (add) student that starts
  from the base; the student keeps its own GRPO rows and distils on the teacher's prompts, T steps;
- ``mopd``: a student without data of its own taught by both frozen experts, 2T steps;
- ``copd_wo_add_to_mul`` / ``copd_wo_mul_to_add``: CoPD with one direction of distillation removed;
- ``copd``: CoPD merged; ``copd_unmerged``: its branches before the merge (branch k scored on skill k).

T is the embedded CoPD's total steps, n_cycles * (s_rl + s_opd); ``--steps T`` sets it (CoPD then runs one cycle
split as S_RL : S_OPD is). Budgets as in the paper: CoPD's branch-steps (2T) = the sum of the experts' (T + T).
Per seed s the warm start, training problems, data order and sampling change (``copd.run.toy.seed``,
``data.seed``); the toy's data and model are cached in ``DIR/seed<s>/toy`` and shared by that seed's runs, each run
writes ``DIR/seed<s>/<run>/`` and is skipped on a rerun while its ``compare_run.json`` matches (same settings,
same warm start). Held-out greedy
accuracy (``recipe.copd.toy.evaluate``) is cached in ``DIR/seed<s>/eval.json``. The report
(``recipe.copd.compare_report``): ``DIR/compare.json``, ``DIR/compare.md``, ``DIR/overlap.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

SKILLS = ("add", "mul")
#: method -> the training run it is read from (None: no training)
RUN_OF = {
    "base": None,
    "expert_add": "experts",
    "expert_mul": "experts",
    "average": "experts",
    "mixed": "mixed",
    "static_add_to_mul": "static_add_to_mul",
    "static_mul_to_add": "static_mul_to_add",
    "mopd": "mopd",
    "copd_wo_add_to_mul": "copd_wo_add_to_mul",
    "copd_wo_mul_to_add": "copd_wo_mul_to_add",
    "copd_unmerged": "copd",
    "copd": "copd",
}
METHODS = tuple(RUN_OF)
#: runs whose frozen teachers are the experts' exports
NEEDS_EXPERTS = ("static_add_to_mul", "static_mul_to_add", "mopd")
CONFIG_DIR = Path(__file__).resolve().parent / "config"


def copd_schedule(n_cycles: int, s_rl: int, s_opd: int, steps: int | None = None) -> dict[str, int]:
    """CoPD's schedule: the config's, or for ``steps`` T one cycle of T steps split as S_RL : S_OPD (each phase the
    config has keeps >= 1 step when T allows)."""
    if steps is None:
        return {"n_cycles": n_cycles, "s_rl": s_rl, "s_opd": s_opd}
    opd = 0 if s_opd == 0 else max(1, round(steps * s_opd / (s_rl + s_opd)))
    opd = min(opd, steps - (1 if s_rl and steps > 1 else 0))
    return {"n_cycles": 1, "s_rl": steps - opd, "s_opd": opd}


def _branch(name: str, skills: tuple[str, ...] | None = None, frozen: bool = False) -> dict:
    return {"name": name, "skills": list((name,) if skills is None else skills), "frozen": frozen}


def run_specs(total: int, schedule: dict[str, int]) -> dict[str, dict]:
    """The ``copd:`` settings of every training run; each branch lists the skills of its training prompts
    (``branch_node`` turns it into a branch of the config). ``total``: T, CoPD's total steps."""
    one = {"n_cycles": 1, "topology": "pair", "edges": []}
    both = [_branch("add"), _branch("mul")]
    specs = {
        "experts": {**one, "branches": both, "s_rl": total, "s_opd": 0},
        "mixed": {**one, "branches": [_branch("mixed", SKILLS)], "topology": "all", "s_rl": 2 * total, "s_opd": 0},
        "mopd": {
            **one,
            "branches": [_branch("student", ()), _branch("add", frozen=True), _branch("mul", frozen=True)],
            "topology": "edges",
            "edges": [["student", "add"], ["student", "mul"]],
            "s_rl": 0,
            "s_opd": 2 * total,
        },
        "copd": {**schedule, "branches": both, "topology": "pair", "edges": []},
    }
    for teacher, student in (("add", "mul"), ("mul", "add")):
        specs[f"static_{teacher}_to_{student}"] = {
            **one,
            "branches": [_branch(student), _branch(teacher, frozen=True)],
            "topology": "edges",
            "edges": [[student, teacher]],
            "s_rl": 0,
            "s_opd": total,
        }
        # without teacher -> student: the only edge left is the other direction ([student, teacher] pairs)
        specs[f"copd_wo_{teacher}_to_{student}"] = {
            **schedule,
            "branches": both,
            "topology": "edges",
            "edges": [[teacher, student]],
        }
    return specs


def budgets(total: int) -> dict[str, dict]:
    """Each method's budget: ``steps`` (optimizer steps of the evaluated model) and ``branch_steps`` (every trained
    branch's steps the method consumed, its frozen teachers' training included)."""
    t2 = 2 * total
    out = {
        "base": {"steps": 0, "branch_steps": 0, "note": "no training"},
        "expert_add": {"steps": total, "branch_steps": total, "note": "GRPO on add"},
        "expert_mul": {"steps": total, "branch_steps": total, "note": "GRPO on mul"},
        "average": {"steps": total, "branch_steps": t2, "note": "parameter average of the two experts"},
        "mixed": {"steps": t2, "branch_steps": t2, "note": "GRPO on add + mul"},
        "mopd": {"steps": t2, "branch_steps": 2 * t2, "note": "student 2T + the experts' T + T"},
        "copd_unmerged": {"steps": total, "branch_steps": t2, "note": "each branch before the merge"},
        "copd": {"steps": total, "branch_steps": t2, "note": "2 branches x T = the experts' T + T"},
    }
    for teacher, student in (("add", "mul"), ("mul", "add")):
        out[f"static_{teacher}_to_{student}"] = {
            "steps": total,
            "branch_steps": t2,
            "note": f"{student} student T + the {teacher} expert's T",
        }
        out[f"copd_wo_{teacher}_to_{student}"] = {"steps": total, "branch_steps": t2, "note": "2 branches x T"}
    return out


def runs_for(methods: list[str]) -> list[str]:
    """The training runs ``methods`` need, in run order (the experts first: the teachers of static OPD and MOPD)."""
    needed = {RUN_OF[m] for m in methods if RUN_OF[m]}
    if needed & set(NEEDS_EXPERTS):
        needed.add("experts")
    order = ["experts", "mixed", "static_add_to_mul", "static_mul_to_add", "mopd"]
    order += ["copd_wo_add_to_mul", "copd_wo_mul_to_add", "copd"]
    return [r for r in order if r in needed]


def toy_beta() -> float:
    """The embedded default's beta (``copd_base.yaml``'s branches): every method distils with the demo's beta."""
    from omegaconf import OmegaConf

    betas = {float(b.beta) for b in OmegaConf.load(CONFIG_DIR / "copd_base.yaml").copd.branches}
    if len(betas) != 1:
        raise ValueError(f"copd_base.yaml's branches have different betas {sorted(betas)}: the comparison needs one")
    return betas.pop()


def branch_node(spec: dict, files: dict, experts_dir: str) -> dict:
    """A ``copd.branches`` entry: a skill's branch gets that skill's data source and reward; a frozen teacher starts
    from the expert of its skill; every trainable branch validates on its skills (all skills for a student without
    data of its own)."""
    name, skills = spec["name"], spec["skills"]
    from recipe.copd.toy.prepare import REWARD_PATH

    node = {
        "name": name,
        "beta": toy_beta(),
        "data_source": f"copd_toy/{name}" if name in SKILLS else None,
        "reward_path": REWARD_PATH if name in SKILLS else None,
        "train_files": [str(files[s]["train"]) for s in skills],
        "val_files": [] if spec["frozen"] else [str(files[s]["val"]) for s in (skills or SKILLS)],
    }
    if spec["frozen"]:
        node.update(frozen=True, init_path=os.path.join(experts_dir, "hf", f"branch_{name}"))
    return node


def compose(overrides: list[str]):
    """``copd_trainer`` composed with hydra's compose API (as ``python -m recipe.copd.main`` composes it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(config_name="copd_trainer", overrides=overrides)


def seed_overrides(out: Path, seed: int, extra: list[str]) -> list[str]:
    return [*extra, f"copd.run.toy.seed={seed}", f"data.seed={seed}", f"copd.run.toy.workdir={out / f'seed{seed}/toy'}"]


def run_config(run: str, spec: dict, base_overrides: list[str], files: dict, model: str, seed_dir: Path):
    """The composed config of one training run of one seed."""
    from omegaconf import open_dict

    import recipe.copd.reward as router
    from recipe.copd.toy.prepare import REWARD_PATH

    cfg = compose([*base_overrides, "copd.run.toy.enable=false", "copd.run.validate_merged=false"])
    with open_dict(cfg):
        for key in ("n_cycles", "s_rl", "s_opd", "topology", "edges"):
            cfg.copd[key] = spec[key]
        cfg.copd.hub, cfg.copd.merge_weights = None, None
        cfg.copd.branches = [branch_node(b, files, str(seed_dir / "experts")) for b in spec["branches"]]
        cfg.actor_rollout_ref.model.path = model
        cfg.trainer.default_local_dir = str(seed_dir / run)
        cfg.trainer.experiment_name = f"compare_{run}"
        # rows of both skills are scored by the toy's reward even where no branch names their data source (mixed)
        fn = cfg.reward.custom_reward_function
        fn.path, fn.name = os.path.abspath(router.__file__), "compute_score"
        fn.reward_kwargs = {"routes": {f"copd_toy/{s}": {"path": REWARD_PATH, "name": "compute_score"} for s in SKILLS}}
    return cfg


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def fingerprint(folder: str) -> list:
    """Size and modification time of a model folder's weights: a run or an evaluation is reused only while the
    model it started from (or scored) is the same file."""
    st = os.stat(os.path.join(folder, "model.safetensors"))
    return [st.st_size, st.st_mtime_ns]


def run_key(spec: dict, overrides: list[str], model: str) -> str:
    """What a finished run must match to be skipped: its ``copd:`` settings, the overrides and the base model."""
    payload = json.dumps({"spec": spec, "overrides": overrides, "model": fingerprint(model)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def finished_record(seed_dir: Path, run: str, key: str) -> dict | None:
    """The ``compare_run.json`` of a run that finished with the same ``key``, else None."""
    done = seed_dir / run / "compare_run.json"
    record = json.loads(done.read_text()) if done.exists() else None
    return record if record is not None and record.get("key") == key else None


def train(run: str, seed: int, cfg, seed_dir: Path, key: str, keep: list[str] | None = None) -> dict:
    """Run one training run, or skip it when its ``compare_run.json`` exists with the same ``key``. ``keep``: the
    keys of the user's overrides (after ``--``), which the CPU settings leave alone as in ``recipe.copd.main``."""
    from recipe.copd.main import main_with_config

    before = finished_record(seed_dir, run, key)
    if before is not None:
        print(f"[compare] seed {seed} {run}: done before, skipped", flush=True)
        return before
    print(f"[compare] seed {seed} {run}: start", flush=True)
    t0 = time.time()
    try:
        result = main_with_config(cfg, keep or ())
    except SystemExit as err:  # the run failed (one line printed); a busy machine can time Ray's startup out
        if err.code == 2:  # refused input: a retry would be refused too
            raise
        print(f"[compare] seed {seed} {run}: failed (exit {err.code}); retrying it once", flush=True)
        try:
            result = main_with_config(cfg, keep or ())
        except SystemExit:
            print(
                f"[compare] seed {seed} {run}: failed again; stopping. Rerun the same command to resume "
                "(finished runs are skipped)",
                file=sys.stderr,
                flush=True,
            )
            raise
    record = {"run": run, "seed": seed, "key": key, "wall_s": round(time.time() - t0, 1), "result": result}
    _write_json(seed_dir / run / "compare_run.json", record)
    print(f"[compare] seed {seed} {run}: done in {record['wall_s']:.0f} s", flush=True)
    return record


def _train_child(run: str, seed: int, cfg, seed_dir: Path, key: str, keep: list[str], log_path: str) -> None:
    """``train`` in a child process of its own (its own Ray instance), its console in ``log_path``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1), os.dup2(fd, 2)  # Ray's and the workers' output too, not only Python's
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    train(run, seed, cfg, seed_dir, key, keep)


def next_runnable(pending: list[str], done: set[str], all_runs: list[str]) -> str | None:
    """The first pending run whose inputs are ready: static OPD and MOPD wait for the experts (their frozen teachers)
    when the experts are among the runs; the others start at once."""
    for run in pending:
        if run in NEEDS_EXPERTS and "experts" in all_runs and "experts" not in done:
            continue
        return run
    return None


def train_seed(runs: list[str], seed: int, configs: dict, seed_dir: Path, keys: dict, keep: list[str], jobs: int):
    """Every run of one seed: one after another in this process (``jobs`` 1), or up to ``jobs`` at a time, each in a
    child process with its own Ray instance and its console in ``<run>/console.log`` (a run reads only the files
    of the runs it waits for). A run that fails stops the seed once the others running have ended; the runs that
    finished are kept (a rerun skips them)."""
    if jobs <= 1:
        return {run: train(run, seed, configs[run], seed_dir, keys[run], keep) for run in runs}
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no Ray or torch state of this one
    records, pending, running, failed = {}, list(runs), {}, []
    for run in runs:  # finished before: no process to start (``train`` only prints that it skips it)
        if finished_record(seed_dir, run, keys[run]) is not None:
            records[run] = train(run, seed, configs[run], seed_dir, keys[run], keep)
            pending.remove(run)
    while pending or running:
        while len(running) < jobs and not failed:
            run = next_runnable(pending, set(records), runs)
            if run is None:
                break
            pending.remove(run)
            log = seed_dir / run / "console.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            args = (run, seed, configs[run], seed_dir, keys[run], keep, str(log))
            running[run] = ctx.Process(target=_train_child, args=args, name=f"compare-{run}")
            running[run].start()
            print(f"[compare] seed {seed} {run}: start (console: {log})", flush=True)
        if not running:
            break
        from multiprocessing.connection import wait

        wait([p.sentinel for p in running.values()])
        for run, proc in list(running.items()):
            if proc.is_alive():
                continue
            proc.join()
            del running[run]
            record = finished_record(seed_dir, run, keys[run])
            if proc.exitcode == 0 and record is not None:
                records[run] = record
                print(f"[compare] seed {seed} {run}: done in {records[run]['wall_s']:.0f} s", flush=True)
            else:
                failed.append((run, proc.exitcode))
                print(
                    f"[compare] seed {seed} {run}: failed (exit {proc.exitcode}); its console: "
                    f"{seed_dir / run / 'console.log'}",
                    file=sys.stderr,
                    flush=True,
                )
    if failed:
        code = 2 if any(c == 2 for _, c in failed) else 1
        print("[compare] stopping; rerun the same command to resume (finished runs are skipped)", file=sys.stderr)
        sys.exit(code)
    return {run: records[run] for run in runs}


def models_of(methods: list[str], seed_dir: Path, base_model: str) -> dict[str, dict[str, str]]:
    """method -> {label: HF folder} of the models evaluated for it (``copd_unmerged``: both branches)."""
    hf = lambda run, name: str(seed_dir / run / "hf" / f"branch_{name}")  # noqa: E731
    paths = {
        "base": {"base": base_model},
        "expert_add": {"expert_add": hf("experts", "add")},
        "expert_mul": {"expert_mul": hf("experts", "mul")},
        "average": {"average": str(seed_dir / "average")},
        "mixed": {"mixed": hf("mixed", "mixed")},
        "static_add_to_mul": {"static_add_to_mul": hf("static_add_to_mul", "mul")},
        "static_mul_to_add": {"static_mul_to_add": hf("static_mul_to_add", "add")},
        "mopd": {"mopd": hf("mopd", "student")},
        "copd_wo_add_to_mul": {"copd_wo_add_to_mul": str(seed_dir / "copd_wo_add_to_mul" / "merged")},
        "copd_wo_mul_to_add": {"copd_wo_mul_to_add": str(seed_dir / "copd_wo_mul_to_add" / "merged")},
        "copd_unmerged": {f"copd_branch_{s}": hf("copd", s) for s in SKILLS},
        "copd": {"copd": str(seed_dir / "copd" / "merged")},
    }
    return {m: paths[m] for m in methods}


def evaluate_seed(methods: list[str], seed_dir: Path, base_model: str, files: dict) -> dict:
    """Greedy accuracy per skill of every model the methods need, cached per model in ``seed_dir/eval.json``."""
    from copd.merge import merge_checkpoints
    from recipe.copd.toy.evaluate import evaluate_models
    from recipe.copd.toy.tasks import read_problems

    experts = [str(seed_dir / "experts" / "hf" / f"branch_{s}") for s in SKILLS]
    average = seed_dir / "average" / "model.safetensors"
    if "average" in methods and (
        not average.exists() or max(fingerprint(e)[1] for e in experts) > average.stat().st_mtime_ns
    ):
        merge_checkpoints(experts, str(seed_dir / "average"), method="average", overwrite=True, progress=False)
    path = seed_dir / "eval.json"
    cache = json.loads(path.read_text()) if path.exists() else {"models": {}}
    problems = {s: read_problems(files[s]["test"]) for s in SKILLS}
    cache["n_problems"] = {s: len(p) for s, p in problems.items()}
    for labels in models_of(methods, seed_dir, base_model).values():
        for label, folder in labels.items():
            if cache["models"].get(label, {}).get("weights") == [folder, *fingerprint(folder)]:
                continue
            t0 = time.time()
            acc = evaluate_models({label: folder}, problems)[label]
            cache["models"][label] = {"weights": [folder, *fingerprint(folder)], **acc}
            _write_json(path, cache)
            accs = ", ".join(f"{s} {acc[s]:.3f}" for s in SKILLS)
            seed = seed_dir.name.removeprefix("seed")
            print(f"[compare] seed {seed} eval {label}: {accs} ({time.time() - t0:.0f} s)", flush=True)
    _write_json(path, cache)
    return cache


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="python -m recipe.copd.compare",
        description=__doc__.splitlines()[0],
        epilog="Hydra overrides after -- apply to every run before the method's own settings, "
        "e.g. -- copd.run.toy.n_test=500",
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), metavar="M", help=f"default all: {' '.join(METHODS)}")
    p.add_argument("--out", default="outputs/compare", help="output folder (default outputs/compare)")
    p.add_argument("--steps", type=int, help="T, CoPD's total steps (default: the config's n_cycles*(s_rl+s_opd))")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="training runs at a time within a seed, each in its own process and Ray instance, its console in "
        "<run>/console.log (default 1: one after another, consoles on this one); for machines with more cores: on "
        "2 cores 2 jobs took 5%% less wall time for 25%% more CPU (docs/LOG.md)",
    )
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.exit(2, f"copd.compare: error: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}\n")
    if args.seeds < 1:
        p.exit(2, f"copd.compare: error: --seeds {args.seeds}: need at least 1 seed\n")
    if args.jobs < 1:
        p.exit(2, f"copd.compare: error: --jobs {args.jobs}: need at least 1\n")
    if args.steps is not None and args.steps < 1:
        p.exit(2, f"copd.compare: error: --steps {args.steps}: need at least 1 step\n")
    args.methods = [m for m in METHODS if m in args.methods]  # table order, no repeats
    return args, extra


def _compose_or_exit(overrides: list[str]):
    """The composed base config; a bad override is one line and exit 2, before anything is trained."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from recipe.copd.main import compose_error_line
    from recipe.copd.preflight import copd_config_from, run_config_from

    try:
        cfg = compose(overrides)
        run_config_from(cfg), copd_config_from(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        print(f"copd.compare: error: {compose_error_line(err)}", file=sys.stderr)
        sys.exit(2)
    except ValueError as err:
        print(f"copd.compare: error: {err}", file=sys.stderr)
        sys.exit(2)
    return cfg


def main(argv: list[str] | None = None) -> dict:
    args, extra = parse(list(sys.argv[1:] if argv is None else argv))
    out = Path(args.out).resolve()
    base = _compose_or_exit(seed_overrides(out, 0, extra))
    schedule = copd_schedule(int(base.copd.n_cycles), int(base.copd.s_rl), int(base.copd.s_opd), args.steps)
    total = schedule["n_cycles"] * (schedule["s_rl"] + schedule["s_opd"])
    specs, runs = run_specs(total, schedule), runs_for(args.methods)
    print(f"[compare] T={total} (CoPD {schedule}); seeds {args.seeds}; runs per seed: {', '.join(runs) or 'none'}")
    from transformers.utils import logging as hf_logging

    from recipe.copd.compare_report import write_report
    from recipe.copd.platform_setup import override_keys
    from recipe.copd.preflight import run_config_from
    from recipe.copd.toy.prepare import build_toy_inputs

    hf_logging.disable_progress_bar()
    evals, records = {}, {}
    for seed in range(args.seeds):
        seed_dir, overrides = out / f"seed{seed}", seed_overrides(out, seed, extra)
        toy = run_config_from(compose(overrides)).toy
        t0 = time.time()
        files, model = build_toy_inputs(str(seed_dir / "toy"), toy)
        print(f"[compare] seed {seed} toy task and warm start ready in {time.time() - t0:.0f} s", flush=True)
        configs = {run: run_config(run, specs[run], overrides, files, model, seed_dir) for run in runs}
        keys = {run: run_key(specs[run], overrides, model) for run in runs}
        records[seed] = train_seed(runs, seed, configs, seed_dir, keys, override_keys(extra), args.jobs)
        evals[seed] = evaluate_seed(args.methods, seed_dir, model, files)
    report = write_report(out, args.methods, evals, records, budgets(total), total, schedule)
    print("\n" + (out / "compare.md").read_text(), flush=True)
    return report


if __name__ == "__main__":
    main()
