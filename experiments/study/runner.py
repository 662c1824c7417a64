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
from trainer.paths import write_json_atomic
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
    # The declared protocol (see docs/studies.md):
    primary: str | None = None                    # the primary metric (default: metrics[0]); the rest are secondary
    comparisons: list[tuple[str, str]] | None = None  # (point, baseline) pairs tested; default: each vs baseline
    correction: str = "holm"                      # "holm" (family-wise) or "bh" over every test of every metric
    trend: str | None = None                      # dotted key of an ordered factor: dose-response tests over it
    fits: dict[str, str] = dataclasses.field(default_factory=dict)  # {fit kind: the question it answers}
    budgets: list[float] | None = None            # one run per (point, budget), each with its own schedule
    cells: set[tuple[str, float]] | None = None   # with budgets: only these (point name, budget) pairs run
    tuning: "Tuning | None" = None                # a tuning stage before the main grid
    # Baselines that need no training, scored on the evaluation split: f(config of the first main run) ->
    # {name: {"how": one line, <metric>: value}}. Computed once into references.json; every report shows them.
    references: Any = None
    # Per-bucket metrics tabled per point in every report, descriptive only (no tests, not in the family):
    # {title: "eval/test/depth_*/accuracy"}, "*" one path component (the bucket). A bucket's count, when the
    # task logs one as the sibling ".../examples", is tabled too. Kept in each record's "final".
    breakdowns: dict[str, str] = dataclasses.field(default_factory=dict)

    def point_names(self) -> list[str]:
        if self.names is not None:
            return list(self.names)
        return [point_name(p) for p in self.grid]


@dataclasses.dataclass
class Tuning:
    """A tuning stage: every point is trained over ``grid`` on a short ``budget`` with one seed; the
    best value by ``metric`` (default: the primary metric) is used for that point's main runs."""
    grid: dict[str, list]                         # {"optim.learning_rate": [1e-3, 3e-3, 1e-2]} (+ optionally one more)
    budget: dict[str, Any]                        # {"mode": ..., "value": ...}, the same for every point
    seed: int = 0
    # The metric the choice optimises, one of the study's metrics; default its primary. A study whose
    # primary metric is not the training objective (router balance) tunes on the objective (eval/bpb).
    metric: str | None = None

    def combos(self) -> list[dict[str, Any]]:
        return grid_product(**self.grid)


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
    budget: dict[str, Any] | None = None          # this run's budget (multi-budget studies: its own)
    base_point: str | None = None                 # the grid point (without @budget)
    tuned: dict[str, Any] | None = None           # overrides chosen by the tuning stage (main runs)
    combo: dict[str, Any] | None = None           # the tuning combination (tuning runs)

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
    if study.references is not None and not callable(study.references):
        raise StudyError(f"study {study.name!r}: references={study.references!r} must be a function of the config")
    for title, pattern in study.breakdowns.items():
        suffix = breakdown_parts(pattern)[1] if isinstance(pattern, str) else ""
        if not (pattern.count("*") == 1 and suffix.startswith("/") and suffix.count("/") == 1):
            raise StudyError(f"study {study.name!r}: breakdowns[{title!r}]={pattern!r} must be a metric name whose "
                             f"next-to-last component holds one '*' (the bucket), e.g. 'eval/test/depth_*/accuracy'")
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
    if study.baseline is not None and study.baseline not in run_point_names(study):
        raise StudyError(f"study {study.name!r}: baseline={study.baseline!r} is not a grid point; points are "
                         f"{run_point_names(study)}")
    if study.primary is not None and study.primary not in study.metrics:
        raise StudyError(f"study {study.name!r}: primary={study.primary!r} is not one of metrics {list(study.metrics)}")
    if study.correction not in ("holm", "bh"):
        raise StudyError(f"study {study.name!r}: correction={study.correction!r} must be 'holm' or 'bh'")
    from experiments.study.analysis import FIT_KINDS

    unknown = sorted(set(study.fits) - set(FIT_KINDS))
    if unknown:
        raise StudyError(f"study {study.name!r}: fits {unknown} unknown; known: {sorted(FIT_KINDS)}")
    for k, q in study.fits.items():
        if not (isinstance(q, str) and q.strip()):
            raise StudyError(f"study {study.name!r}: fit {k!r} must state the question it answers")
    if study.budgets is not None:
        if not study.budgets or any(not (isinstance(b, (int, float)) and b > 0) for b in study.budgets):
            raise StudyError(f"study {study.name!r}: budgets={study.budgets!r} must be positive numbers")
        if len(set(study.budgets)) != len(study.budgets):
            raise StudyError(f"study {study.name!r}: budgets {study.budgets} repeat a budget")
        bad = sorted(c for c in (study.cells or ()) if c[0] not in names or c[1] not in study.budgets)
        if bad:
            raise StudyError(f"study {study.name!r}: cells {bad} name unknown points or budgets")
    elif study.cells is not None:
        raise StudyError(f"study {study.name!r}: cells need budgets")
    pnames = run_point_names(study)
    for pair in study.comparisons or []:
        bad = [x for x in pair if x not in pnames]
        if len(pair) != 2 or bad:
            raise StudyError(f"study {study.name!r}: comparison {pair!r} names unknown point(s) {bad}")
    if study.tuning is not None:
        t = study.tuning
        if not t.grid or any(not isinstance(v, (list, tuple)) or not v for v in t.grid.values()):
            raise StudyError(f"study {study.name!r}: tuning.grid={t.grid!r} needs a non-empty list per key")
        if len(t.grid) > 2:
            raise StudyError(f"study {study.name!r}: tuning.grid has {len(t.grid)} keys; at most 2")
        if t.metric is not None and t.metric not in study.metrics:
            raise StudyError(f"study {study.name!r}: tuning.metric={t.metric!r} is not one of metrics "
                             f"{list(study.metrics)}")
        if t.budget.get("mode") not in BUDGET_MODES:
            raise StudyError(f"study {study.name!r}: tuning.budget.mode={t.budget.get('mode')!r} must be one of "
                             f"{list(BUDGET_MODES)}")


def breakdown_parts(pattern: str) -> tuple[str, str]:
    """'eval/test/depth_*/accuracy' -> ('eval/test/depth_', '/accuracy')."""
    prefix, _, suffix = pattern.partition("*")
    return prefix, suffix


def in_breakdown(study: Study, key: str) -> bool:
    """Whether a metric is a bucket of one of the study's breakdowns (its value or its ".../examples" count)."""
    for pattern in study.breakdowns.values():
        prefix, _ = breakdown_parts(pattern)
        rest = key[len(prefix):] if key.startswith(prefix) else ""
        if rest.count("/") == 1 and not rest.startswith("/"):
            return True
    return False


def _budget_tag(v: float) -> str:
    return f"{v:.3g}".replace("+", "")


def run_point_names(study: Study) -> list[str]:
    """The report's points: grid point names, or name@budget for each budget of a multi-budget study."""
    names = study.point_names()
    if study.budgets is None:
        return names
    return [f"{n}@{_budget_tag(b)}" for n in names for b in study.budgets
            if study.cells is None or (n, b) in study.cells]


# ----------------------------------------------------------------------------
# Expansion into runs
# ----------------------------------------------------------------------------

def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s.replace(",", "__"))


def _build(study: Study, i: int, point: str, overrides: dict, seed: int, budget: dict, workdir: Path,
           extra: dict | None = None) -> Run:
    from models.config import validate_model_config
    from nn.errors import ConfigError
    from tasks import get_task

    cfg = load_config(study.config)
    for k, v in study.overrides.items():
        _set(cfg, k, v, f"study {study.name!r} overrides")
    for k, v in overrides.items():
        _set(cfg, k, v, f"study {study.name!r} grid point {i} ({point})")
    for k, v in (extra or {}).items():
        _set(cfg, k, v, f"study {study.name!r} tuning")
    cfg.seed = int(seed)
    try:
        validate_model_config(cfg.model)
        # The task's own counts, from the config alone: building the task would load its data.
        task = get_task(cfg.task)
        tokens_per_step, fpt = task.tokens_per_step_of(cfg), task.train_flops_per_token_of(cfg)
    except ConfigError as e:
        raise StudyError(f"study {study.name!r} grid point {point}: {e}") from None
    try:
        steps = steps_for_budget(budget["mode"], float(budget["value"]), fpt, tokens_per_step)
    except ValueError as e:
        raise StudyError(f"study {study.name!r} grid point {point}: {e}") from None
    every = max(1, steps // max(1, study.evals_per_run))
    cfg.train.num_steps = steps
    cfg.train.eval_every = every
    cfg.train.checkpoint_every = every
    cfg.train.log_every = min(int(cfg.train.log_every), every)
    cfg.train.keep_checkpoints = 1
    if study.warmup_fraction is not None:
        # Runs of different lengths get the same schedule shape (the decay ends at each run's own budget).
        cfg.optim.warmup_steps = max(1, round(study.warmup_fraction * steps))
    return Run(point, dict(overrides), int(seed), cfg, workdir, budget=dict(budget), tuned=extra)


def expand(study: Study, out: Path, chosen: dict[str, dict] | None = None) -> list[Run]:
    """Every main run. ``chosen``: {grid point name: tuned overrides} from the tuning stage."""
    runs = []
    budgets = [None] if study.budgets is None else list(study.budgets)
    for i, (overrides, point) in enumerate(zip(study.grid, study.point_names())):
        extra = (chosen or {}).get(point)
        for b in budgets:
            if b is not None and study.cells is not None and (point, b) not in study.cells:
                continue
            budget = dict(study.budget) if b is None else {"mode": study.budget["mode"], "value": b}
            name = point if b is None else f"{point}@{_budget_tag(b)}"
            for seed in study.seeds:
                run = _build(study, i, name, overrides, seed, budget, out / "runs" / _slug(name) / f"seed_{seed}",
                             extra)
                run.base_point = point
                if extra is not None:
                    run.tuned = dict(extra)
                runs.append(run)
    return runs


def _combo_name(combo: dict) -> str:
    return ",".join(f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                    for k, v in combo.items())


def expand_tuning(study: Study, out: Path) -> list[Run]:
    """The tuning stage's runs: every grid point x every tuning combination, one seed, the short budget."""
    t = study.tuning
    runs = []
    for i, (overrides, point) in enumerate(zip(study.grid, study.point_names())):
        for combo in t.combos():
            run = _build(study, i, point, overrides, t.seed, dict(t.budget),
                         out / "tuning" / _slug(point) / _slug(_combo_name(combo)), combo)
            run.combo = combo
            runs.append(run)
    return runs


def command_for(study: Study, run: Run) -> str:
    args = [sys.executable, "train.py", "--config", study.config, "--workdir", str(run.workdir)]
    flat = {**study.overrides, **run.overrides, **(run.tuned or {}), "seed": run.seed, "train.num_steps": run.steps,
            "train.eval_every": run.config.train.eval_every, "train.checkpoint_every": run.config.train.checkpoint_every,
            "train.log_every": run.config.train.log_every, "train.keep_checkpoints": 1,
            "optim.warmup_steps": run.config.optim.warmup_steps}
    args += [f"--config.{k}={v}" for k, v in flat.items()]
    return " ".join(shlex.quote(a) for a in args)


def record_for(study: Study, run: Run, summary: dict, data_order: str) -> dict:
    return {
        "study": study.name, "point": run.point, "overrides": run.overrides, "seed": run.seed,
        "budget": dict(run.budget or study.budget), "steps": summary["steps"], "tokens": summary["tokens"],
        "params": summary["params"], "flops_per_token": summary["flops_per_token"],
        "train_flops": summary["train_flops"], "wall_time_s": summary["wall_time_s"],
        "final": {k: v for k, v in summary["final"].items() if k in study.metrics or in_breakdown(study, k)},
        "best": {k: v for k, v in summary["best"].items() if k in study.metrics},
        "curve": [{k: v for k, v in c.items() if k == "step" or k in study.metrics} for c in summary["curve"]],
        "data_order": data_order, **({"tuned": run.tuned} if run.tuned else {}),
        **({"eval_batches": summary["final_eval_batches"]} if summary.get("final_eval_batches") else {}),
        **({"tuning": run.combo, "grid_point": run.point} if run.combo is not None else {}),
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

def _train_all(runs, results: Path, study: Study, collect_only: bool, train_fn, log, key, what: str) -> None:
    done = set()
    if results.exists():
        done = {key(r) for r in load_results(results)}
    order = data_order_of(study)
    for i, run in enumerate(runs, 1):
        label = run.point + (f" {_combo_name(run.combo)}" if run.combo is not None else "")
        tag = f"[{what} {i}/{len(runs)}] {label} seed={run.seed} ({run.steps} steps)"
        rec_key = key({"point": run.point, "seed": run.seed, "tuning": run.combo})
        if rec_key in done:
            log(f"{tag}: in {results.name}, skipped")
            continue
        summary = _finished_summary(run)
        if summary is None:
            if collect_only:
                log(f"{tag}: not finished in {run.workdir}, left out")
                continue
            log(f"{tag}: training in {run.workdir}")
            summary = train_fn(run.config, str(run.workdir))
        append_result(results, record_for(study, run, summary, order))
        final = " ".join(f"{k}={v:.4f}" for k, v in summary["final"].items() if k in study.metrics)
        log(f"{tag}: {final}")


def tuning_metric(study: Study) -> str:
    return study.tuning.metric or study.primary or study.metrics[0]


def _tuning_key(r: dict):
    return (r["point"], json.dumps(r.get("tuning"), sort_keys=True))


def tuning_choice(study: Study, out: Path) -> tuple[dict[str, dict] | None, dict]:
    """({grid point: chosen overrides} or None while the sweep is incomplete, details per point).

    The best value minimises the primary metric (maximises it when higher is better); a run whose
    metric is missing or non-finite (diverged) ranks last. ``edge`` lists the keys whose chosen value
    is the smallest or largest of a grid with >= 2 values.
    """
    from trainer.metrics import higher_is_better

    metric = tuning_metric(study)
    path = out / "tuning.jsonl"
    recs = load_results(path) if path.exists() else []
    by = {_tuning_key(r): r for r in recs}
    combos = study.tuning.combos()
    details, chosen, complete = {}, {}, True
    sign = -1.0 if higher_is_better(metric) else 1.0
    for point in study.point_names():
        rows = []
        for combo in combos:
            r = by.get((point, json.dumps(combo, sort_keys=True)))
            v = float(r["final"].get(metric, float("nan"))) if r else float("nan")
            rows.append((combo, v, r is not None))
        if not all(ok for _, _, ok in rows):
            complete = False
        finite = [(c, v) for c, v, ok in rows if ok and v == v and abs(v) != float("inf")]
        if not finite:
            details[point] = {"rows": rows, "best": None, "edge": []}
            continue
        best = min(finite, key=lambda cv: sign * cv[1])[0]
        edge = [k for k, vals in study.tuning.grid.items()
                if len(vals) >= 2 and best[k] in (min(vals), max(vals))]
        details[point] = {"rows": rows, "best": best, "edge": edge}
        chosen[point] = best
    if not complete or len(chosen) < len(study.point_names()):
        return None, details
    return chosen, details


def tuning_lines(study: Study, details: dict | None) -> list[str]:
    """The report's tuning section (or the statement that the study did not tune)."""
    if study.tuning is None:
        if any("optim.learning_rate" in p for p in study.grid):
            what = "the learning rate its grid point sets"
        else:
            lr = study.overrides.get("optim.learning_rate", load_config(study.config).optim.learning_rate)
            what = f"the same learning rate, {lr:g}"
        return ["## Tuning stage", "",
                f"None: this study did not tune; every run uses {what}. A point that would do better at "
                f"another rate is handicapped by it.", ""]
    t, metric = study.tuning, tuning_metric(study)
    keys = list(t.grid)
    out = ["## Tuning stage", "",
           f"Before the main grid, every point was trained over {' x '.join(f'`{k}` in {t.grid[k]}' for k in keys)} "
           f"with seed {t.seed} on a short budget ({t.budget['mode']} = {t.budget['value']:g} per run); the value "
           f"with the best final `{metric}` was used for that point's main runs. One seed: a choice between "
           f"values within seed noise of each other is arbitrary. A choice at the edge of its grid is flagged.", "",
           "| point | " + " | ".join(f"`{_combo_name(c)}`" for c in t.combos()) + " | chosen |",
           "|---|" + "---|" * (len(t.combos()) + 1)]
    for point, d in (details or {}).items():
        cells = [("n/a" if not ok else f"{v:.4f}") for _, v, ok in d["rows"]]
        best = "incomplete" if d["best"] is None else f"`{_combo_name(d['best'])}`"
        if d["edge"]:
            best += f" **at the grid edge ({', '.join(k.rsplit('.', 1)[-1] for k in d['edge'])})**"
        out.append(f"| `{point}` | " + " | ".join(cells) + f" | {best} |")
    edges = [p for p, d in (details or {}).items() if d["edge"]]
    out.append("")
    if edges:
        out += [f"- {len(edges)} point(s) chose a value at the edge of the grid ({', '.join(f'`{p}`' for p in edges)}): "
                f"their optimum may lie outside it; extend the grid.", ""]
    return out


def run_study(study: Study, out: str | Path, *, collect_only: bool = False, report: bool = True,
              log=print, train_fn=None) -> Path:
    """Run (or collect) the tuning stage, then the main grid, then the reports.

    ``train_fn(config, workdir) -> summary`` trains one run (default:
    ``trainer.loop.train_and_evaluate``); tests pass a fake one.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if train_fn is None:
        from trainer import loop

        # Runs that differ only in seed, schedule numbers or length (a point's seeds, the tuning
        # stage's rates, a point's budgets) share compiled programs (trainer/loop.py: reuse_programs).
        with loop.reuse_programs():
            return run_study(study, out, collect_only=collect_only, report=report, log=log,
                             train_fn=loop.train_and_evaluate)
    chosen, details = None, None
    if study.tuning is not None:
        _train_all(expand_tuning(study, out), out / "tuning.jsonl", study, collect_only, train_fn, log,
                   _tuning_key, "tuning")
        chosen, details = tuning_choice(study, out)
        if chosen is None:
            log("tuning stage incomplete: the main grid waits for it")
            return out / "results.jsonl"
        for point, d in details.items():
            log(f"tuning: {point} -> {_combo_name(d['best'])}" + (" (at the grid edge)" if d["edge"] else ""))
    results = out / "results.jsonl"
    runs = expand(study, out, chosen)
    if study.references is not None and not (out / "references.json").exists():
        refs = study.references(runs[0].config)
        write_json_atomic(out / "references.json", {"study": study.name, "references": refs}, indent=2)
        log("references: " + ", ".join(f"{k} " + " ".join(f"{m}={v:.4f}" for m, v in r.items() if m != "how")
                                        for k, r in refs.items()))
    _train_all(runs, results, study, collect_only, train_fn, log, lambda r: (r["point"], r["seed"]), "run")
    if report and results.exists():
        from experiments.study.report import write_study_reports

        for path in write_study_reports(out, study, tuning_lines=tuning_lines(study, details)):
            log(f"report: {path}")
    return results


SLURM_TEMPLATE = """#!/bin/bash
# {what} of study {name}: {n} runs, one per array task. Submit from the repository root:
#   sbatch {path}
# Then gather the finished workdirs: python -m experiments.study {spec} --out {out} --collect
#SBATCH --job-name={name}
#SBATCH --array=0-{last}
#SBATCH --output={out}/slurm/%A_%a.out
set -euo pipefail
CMDS=(
{cmds}
)
eval "${{CMDS[$SLURM_ARRAY_TASK_ID]}}"
"""


def write_slurm(path: Path, commands: list[str], *, name: str, spec: str, out: str, what: str) -> Path:
    """A Slurm job-array script running one command per array task."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (Path(out) / "slurm").mkdir(parents=True, exist_ok=True)
    body = SLURM_TEMPLATE.format(what=what, name=name, n=len(commands), path=path, spec=spec, out=out,
                                 last=len(commands) - 1, cmds="\n".join(f"  {shlex.quote(c)}" for c in commands))
    path.write_text(body, encoding="utf-8")
    return path


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
            out = Path(a.out)
            runs, what = None, "main grid"
            if study.tuning is not None:
                chosen, _ = tuning_choice(study, out)
                if chosen is None:
                    runs, what = expand_tuning(study, out), "tuning stage"
                    print(f"note: the tuning stage is not complete in {out}: these are its runs; run them, "
                          f"--collect, then --print-commands again for the main grid", file=sys.stderr)
                else:
                    runs = expand(study, out, chosen)
            if runs is None:
                runs = expand(study, out)
            cmds = [command_for(study, run) for run in runs]
            for c in cmds:
                print(c)
            slurm = write_slurm(out / ("slurm_tuning.sh" if what == "tuning stage" else "slurm_array.sh"), cmds,
                                name=study.name, spec=a.study, out=str(out), what=what)
            print(f"slurm job array: {slurm}", file=sys.stderr)
            return 0
        run_study(study, a.out, collect_only=a.collect, report=not a.no_report)
    except (InputError, FileNotFoundError) as e:  # a study, config (e.g. a bad `:arg`) or data error
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
