"""Run a study: every (grid point, seed) as a train.py run, then the report.

    python -m experiments.study experiments/studies/lm_scaling.py --out results/lm_scaling
    python -m experiments.study experiments/studies/lm_scaling.py:smoke --out /tmp/smoke_study
    python -m experiments.study experiments/studies/lm_scaling.py --out results/x --print-commands
    python -m experiments.study experiments/studies/lm_scaling.py --out results/x --collect

A study file defines `get_study(arg) -> Study`: a base config, a grid of
overrides, the seeds, the budget and the metrics. Runs execute one at a
time in this process. The study is resumable: a run already in
`results.jsonl` is skipped, a finished workdir (with `summary.json`) is
collected without training, and an interrupted run resumes from its last
checkpoint. `--print-commands` prints one `train.py` command per run instead,
to fan the runs out on a cluster; `--collect` then gathers their workdirs
into `results.jsonl`.

Budgets (`Study.budget`): each run's `train.num_steps` is derived from
  flops:  total training FLOPs per run; steps = budget / (FLOPs/token x tokens/step),
          both counted by the run's task (`Task.train_flops_per_token_of`,
          `Task.tokens_per_step_of` in tasks/base.py), so a model that costs
          more per token trains fewer steps and a CLIP run counts both towers;
  tokens: training tokens per run, in the task's unit (CLIP: image-text pairs);
  steps:  the same number of steps for every run.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from experiments.study.results import append_result, load_results
from experiments.study.stats import steps_for_budget
from nn.errors import InputError, StudyError

ROOT = Path(__file__).resolve().parents[2]
BUDGET_MODES = ("flops", "tokens", "steps")



@dataclasses.dataclass
class Study:
    name: str
    config: str                                   # config file, optionally "path:arg"
    grid: list[dict[str, Any]]                    # one dict of dotted overrides per grid point
    seeds: list[int]
    budget: dict[str, Any]                        # {"mode": "flops"|"tokens"|"steps", "value": number}
    metrics: tuple[str, ...] = ("eval/bpb", "eval/loss")
    baseline: str | None = None                   # point name; default: the first point
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # applied to every run
    evals_per_run: int = 10
    compare: bool = True                          # pairwise comparisons need >= 2 seeds
    names: list[str] | None = None                # grid point names (default: from the overrides)
    warmup_fraction: float | None = 0.1           # warmup = this fraction of each run's steps (None: keep config)

    def point_names(self) -> list[str]:
        if self.names is not None:
            return list(self.names)
        return [point_name(p) for p in self.grid]


def grid_product(**axes: list) -> list[dict[str, Any]]:
    """{'model.d_model': [64, 128], 'seed_free.x': [..]} -> the cartesian product as override dicts."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def point_name(overrides: dict[str, Any]) -> str:
    """'model.d_model=128,model.n_layers=4' -> 'd_model=128,n_layers=4' (last key component)."""
    return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items()) or "base"


@dataclasses.dataclass
class Run:
    point: str
    overrides: dict[str, Any]
    seed: int
    config: Any
    workdir: Path

    @property
    def steps(self) -> int:
        return int(self.config.train.num_steps)


# ----------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------

def _load_module(path: str):
    p = Path(path)
    if not p.exists() and (ROOT / path).exists():
        p = ROOT / path
    if not p.exists():
        candidate = ROOT / "experiments" / "studies" / f"{path}.py"
        if not candidate.exists():
            if path.endswith(".py") or "/" in path:
                raise StudyError(f"study file {path!r} does not exist")
            raise StudyError(f"study {path!r} not found (neither a file nor experiments/studies/{path}.py)")
        p = candidate
    spec = importlib.util.spec_from_file_location(f"_study_{p.stem}", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_study(spec: str) -> Study:
    path, _, arg = spec.partition(":")
    mod = _load_module(path)
    if not hasattr(mod, "get_study"):
        raise StudyError(f"study file {path!r} defines no get_study(arg)")
    study = mod.get_study(arg or None)
    validate_study(study)
    return study


def load_config(spec: str):
    path, _, arg = spec.partition(":")
    full = Path(path) if Path(path).is_absolute() else ROOT / path
    if not full.exists():
        raise StudyError(f"study config {path!r} does not exist")
    s = importlib.util.spec_from_file_location(f"_cfg_{full.stem}", full)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod.get_config(arg or None)


def _set(cfg, dotted: str, value: Any, where: str) -> None:
    node = cfg
    *parents, leaf = dotted.split(".")
    for name in parents:
        if name not in node:
            raise StudyError(f"{where} names unknown config field {dotted!r}")
        node = node[name]
    if not hasattr(node, "keys") or leaf not in node:
        raise StudyError(f"{where} names unknown config field {dotted!r}")
    node[leaf] = value


def validate_study(study: Study) -> None:
    if not study.grid:
        raise StudyError(f"study {study.name!r} has an empty grid")
    if study.budget.get("mode") not in BUDGET_MODES:
        raise StudyError(f"study {study.name!r}: budget.mode={study.budget.get('mode')!r} must be one of {list(BUDGET_MODES)}")
    if not study.seeds:
        raise StudyError(f"study {study.name!r} has no seeds")
    if len(set(study.seeds)) != len(study.seeds):
        raise StudyError(f"study {study.name!r}: seeds {study.seeds} repeat a seed")
    if study.compare and len(study.seeds) < 2:
        raise StudyError(
            f"study {study.name!r} has {len(study.seeds)} seed(s): comparisons with confidence intervals need at least 2"
        )
    if study.names is not None and len(study.names) != len(study.grid):
        raise StudyError(f"study {study.name!r}: {len(study.names)} names for {len(study.grid)} grid points")
    names = study.point_names()
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise StudyError(f"study {study.name!r}: grid points repeat: {dupes}")
    if study.baseline is not None and study.baseline not in names:
        raise StudyError(f"study {study.name!r}: baseline={study.baseline!r} is not a grid point; points are {names}")


# ----------------------------------------------------------------------------
# Expansion into runs
# ----------------------------------------------------------------------------

def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s.replace(",", "__"))


def expand(study: Study, out: Path) -> list[Run]:
    from models.config import validate_model_config
    from nn.errors import ConfigError
    from tasks import get_task

    runs = []
    for i, (overrides, point) in enumerate(zip(study.grid, study.point_names())):
        for seed in study.seeds:
            cfg = load_config(study.config)
            for k, v in study.overrides.items():
                _set(cfg, k, v, f"study {study.name!r} overrides")
            for k, v in overrides.items():
                _set(cfg, k, v, f"study {study.name!r} grid point {i} ({point})")
            cfg.seed = int(seed)
            try:
                validate_model_config(cfg.model)
                # The task's own counts, from the config alone: building the task would load its data.
                task = get_task(cfg.task)
                tokens_per_step, fpt = task.tokens_per_step_of(cfg), task.train_flops_per_token_of(cfg)
            except ConfigError as e:
                raise StudyError(f"study {study.name!r} grid point {point}: {e}") from None
            try:
                steps = steps_for_budget(study.budget["mode"], float(study.budget["value"]), fpt, tokens_per_step)
            except ValueError as e:
                raise StudyError(f"study {study.name!r} grid point {point}: {e}") from None
            every = max(1, steps // max(1, study.evals_per_run))
            cfg.train.num_steps = steps
            cfg.train.eval_every = every
            cfg.train.checkpoint_every = every
            cfg.train.log_every = min(int(cfg.train.log_every), every)
            cfg.train.keep_checkpoints = 1
            if study.warmup_fraction is not None:
                # Runs of different lengths get the same schedule shape.
                cfg.optim.warmup_steps = max(1, round(study.warmup_fraction * steps))
            runs.append(Run(point, dict(overrides), int(seed), cfg,
                            out / "runs" / _slug(point) / f"seed_{seed}"))
    return runs


def command_for(study: Study, run: Run) -> str:
    args = [sys.executable, "train.py", "--config", study.config, "--workdir", str(run.workdir)]
    flat = {**study.overrides, **run.overrides, "seed": run.seed, "train.num_steps": run.steps,
            "train.eval_every": run.config.train.eval_every, "train.checkpoint_every": run.config.train.checkpoint_every,
            "train.log_every": run.config.train.log_every, "train.keep_checkpoints": 1,
            "optim.warmup_steps": run.config.optim.warmup_steps}
    args += [f"--config.{k}={v}" for k, v in flat.items()]
    return " ".join(shlex.quote(a) for a in args)


def record_for(study: Study, run: Run, summary: dict, data_order: str) -> dict:
    return {
        "study": study.name, "point": run.point, "overrides": run.overrides, "seed": run.seed,
        "budget": dict(study.budget), "steps": summary["steps"], "tokens": summary["tokens"],
        "params": summary["params"], "flops_per_token": summary["flops_per_token"],
        "train_flops": summary["train_flops"], "wall_time_s": summary["wall_time_s"],
        "final": {k: v for k, v in summary["final"].items() if k in study.metrics},
        "best": {k: v for k, v in summary["best"].items() if k in study.metrics},
        "curve": [{k: v for k, v in c.items() if k == "step" or k in study.metrics} for c in summary["curve"]],
        "data_order": data_order,
    }


def data_order_of(study: Study) -> str:
    """Runs with equal seeds see the same batches unless the grid changes the data pipeline."""
    touches_data = any(k.startswith("data.") for p in study.grid for k in p)
    return "independent" if touches_data else "seed"


def _finished_summary(run: Run) -> dict | None:
    path = run.workdir / "summary.json"
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    return summary if summary.get("steps") == run.steps and summary.get("final") else None


# ----------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------

def run_study(study: Study, out: str | Path, *, collect_only: bool = False, report: bool = True,
              log=print) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = expand(study, out)
    results = out / "results.jsonl"
    done = set()
    if results.exists():
        done = {(r["point"], r["seed"]) for r in load_results(results)}
    order = data_order_of(study)
    for i, run in enumerate(runs, 1):
        tag = f"[{i}/{len(runs)}] {run.point} seed={run.seed} ({run.steps} steps)"
        if (run.point, run.seed) in done:
            log(f"{tag}: in results.jsonl, skipped")
            continue
        summary = _finished_summary(run)
        if summary is None:
            if collect_only:
                log(f"{tag}: not finished in {run.workdir}, left out")
                continue
            from trainer import loop

            log(f"{tag}: training in {run.workdir}")
            summary = loop.train_and_evaluate(run.config, str(run.workdir))
        append_result(results, record_for(study, run, summary, order))
        final = " ".join(f"{k}={v:.4f}" for k, v in summary["final"].items() if k in study.metrics)
        log(f"{tag}: {final}")
    if report:
        from experiments.study.report import write_report

        # One report per metric: the first is report.md, the others report_<metric>.md.
        for j, metric in enumerate(study.metrics):
            suffix = "" if j == 0 else "_" + re.sub(r"[^A-Za-z0-9]+", "_", metric.split("/", 1)[-1])
            path = write_report(out, baseline=study.baseline, metric=metric, suffix=suffix)
            log(f"report: {path}")
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="study file (path[:arg]) or a name in experiments/studies")
    p.add_argument("--out", required=True, help="results folder (results.jsonl, runs/, report.md)")
    p.add_argument("--print-commands", action="store_true", help="print one train.py command per run and exit")
    p.add_argument("--collect", action="store_true", help="only gather finished workdirs into results.jsonl")
    p.add_argument("--no-report", action="store_true")
    a = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    try:
        if Path(a.out).exists() and not Path(a.out).is_dir():
            raise StudyError(f"--out={a.out!r} is an existing file, not a results folder")
        study = load_study(a.study)
        if a.print_commands:
            for run in expand(study, Path(a.out)):
                print(command_for(study, run))
            return 0
        run_study(study, a.out, collect_only=a.collect, report=not a.no_report)
    except (InputError, FileNotFoundError) as e:  # a study, config (e.g. a bad `:arg`) or data error
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
