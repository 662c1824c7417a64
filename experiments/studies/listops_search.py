"""ListOps: the search for a reduced setting a small encoder can learn (issue 17), one knob at a time.

    python -m experiments.studies.listops_search --out runs/listops_search           # trains the tries not done
    python -m experiments.studies.listops_search --table                             # the table only
    python -m experiments.studies.listops_search --out runs/listops_search --only args4  # one try

The first ListOps design (lengths 100-500, depth <= 10) trained every attention type to the
root-operator shortcut (33%), below the root-over-direct-arguments rule (49.7%). This script
records the search for a setting where the dense Transformer beats the best shortcut baseline
(data/listops.py SHORTCUTS, scored on the same validation split) by a clear margin. Each try
changes one knob of the try it names as its parent; a try is one seed of the dense encoder,
trained by the study runner (`experiments/study`, one single-seed study per try: resumable, each
run's workdir under --out), then appended to `experiments/results/listops/search.jsonl` with the
shortcut accuracies of its own validation split. `--table` renders SEARCH.md's table from that
file without training. What is optimised is the gap to the best shortcut, not raw accuracy:
shallow trees make the root-over-direct-arguments rule strong (exact when no list is nested).

The accuracy is one seed on the validation split; the 95% interval beside it is the binomial
(Wilson) interval of that split's size: evaluation-set sampling error only, not seed variation
(the study measures that).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "experiments/configs/listops.py"
RECORDS = ROOT / "experiments" / "results" / "listops" / "search.jsonl"

# Every try: these overrides of the config's reduced default, then its parent's, then its own changes.
COMMON = {"train.tensorboard": False, "data.num_train": 20_000, "data.num_val": 1_000,
          "data.eval_batch_size": 100}
# (name, parent, changes, steps). The start: depth <= 3, up to 5 arguments, 16-63 tokens, 2 layers of
# width 128, batch 32, 1,000 steps; its children change one knob each.
TRIES: list[tuple[str, str | None, dict[str, Any], int]] = [
    ("start", None, {"data.max_depth": 3, "data.max_args": 5, "data.min_len": 16, "data.max_len": 63,
                     "data.seq_len": 64, "data.batch_size": 32, "model.d_model": 128, "optim.learning_rate": 1e-3},
     1000),
    ("len31", "start", {"data.max_len": 31, "data.seq_len": 32}, 1000),  # same trees mostly, half the cost
    ("w64", "len31", {"model.d_model": 64}, 1000),
    ("steps4k", "w64", {}, 4000),
    ("lr3e-3", "steps4k", {"optim.learning_rate": 3e-3}, 4000),
    ("args4", "lr3e-3", {"data.max_args": 4}, 4000),  # trees nearer their largest: more nested lists
]


def setting(name: str) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """(all overrides of a try, its steps, the knobs it changed from its parent)."""
    by = {t[0]: t for t in TRIES}
    if name not in by:
        raise KeyError(name)
    _, parent, changes, steps = by[name]
    base = setting(parent)[0] if parent is not None else dict(COMMON)
    return {**base, **changes}, steps, dict(changes)


def _study(name: str):
    from experiments.study import Study

    overrides, steps, _ = setting(name)
    return Study(name=f"listops_search_{name}", config=CONFIG, grid=[{}], names=[name], seeds=[0],
                 budget={"mode": "steps", "value": steps}, metrics=("eval/accuracy", "eval/loss"),
                 overrides=overrides, evals_per_run=4, compare=False)


def shortcuts_of(config) -> dict[str, float]:
    from data import listops

    data = listops.from_config(config.data)
    return listops.shortcut_accuracies(data.train, data.val)


def run_try(name: str, out: Path, log=print) -> dict:
    """Train one try (resumable) and return its search record."""
    from experiments.study import run_study
    from experiments.study.results import load_results
    from experiments.study.runner import expand

    study = _study(name)
    folder = out / name
    run_study(study, folder, report=False, log=log)
    rec = load_results(folder / "results.jsonl")[-1]
    cfg = expand(study, folder)[0].config
    overrides, steps, changes = setting(name)
    parent = next(t[1] for t in TRIES if t[0] == name)
    return {"try": name, "parent": parent, "changed": changes, "overrides": overrides, "steps": steps,
            "wall_time_s": rec["wall_time_s"], "params": rec["params"], "num_val": int(cfg.data.num_val),
            "val_accuracy": rec["final"]["eval/accuracy"], "val_loss": rec["final"]["eval/loss"],
            "curve": [(c["step"], c.get("eval/accuracy")) for c in rec["curve"]],
            "shortcuts": shortcuts_of(cfg)}


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return mid - half, mid + half


def _changed(r: dict, steps_of: dict) -> str:
    knobs = [f"`{k.rsplit('.', 1)[-1]}={v}`" for k, v in r["changed"].items()]
    if steps_of.get(r["parent"], r["steps"]) != r["steps"]:
        knobs.append(f"`steps={r['steps']}`")
    return ", ".join(knobs)


def table(records: list[dict]) -> str:
    """SEARCH.md's table: one row per try, in the order tried."""
    names = ("majority", "root_operator", "root_over_direct_args")
    steps_of = {r["try"]: r["steps"] for r in records}
    lines = ["| try | parent | changed | depth | args | lengths | width x layers | steps | wall s | dense val acc "
             "[95% eval CI] | majority | root op | root over args | gap to best shortcut |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        o, sc = r["overrides"], r["shortcuts"]
        best = max(sc[k] for k in names)
        lo, hi = wilson(r["val_accuracy"], r["num_val"])
        d = lambda k, dflt: o.get(k, dflt)  # noqa: E731
        lines.append(
            f"| `{r['try']}` | {('`' + r['parent'] + '`') if r['parent'] else '–'} | {_changed(r, steps_of) if r['parent'] else 'start'} "
            f"| {d('data.max_depth', 10)} | {d('data.max_args', 10)} | {d('data.min_len', 100)}-{d('data.max_len', 500)} "
            f"| {d('model.d_model', 128)} x {d('model.n_layers', 2)} | {r['steps']} | {r['wall_time_s']:.0f} "
            f"| {100 * r['val_accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] "
            + " ".join(f"| {100 * sc[k]:.1f}" for k in names)
            + f" | {100 * (r['val_accuracy'] - best):+.1f} |")
    return "\n".join(lines)


def load_records(path: Path = RECORDS) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/listops_search", help="workdirs of the tries (not committed)")
    p.add_argument("--only", action="append", default=[], help="train only this try (repeatable)")
    p.add_argument("--table", action="store_true", help="print the table from search.jsonl; train nothing")
    p.add_argument("--records", default=str(RECORDS))
    a = p.parse_args(argv)
    path = Path(a.records)
    if not a.table:
        from nn.errors import InputError

        unknown = [n for n in a.only if n not in {t[0] for t in TRIES}]
        if unknown:
            print(f"error: --only={unknown[0]!r} is not a try; tries: {[t[0] for t in TRIES]}", file=sys.stderr)
            return 2
        done = {r["try"] for r in load_records(path)}
        try:
            for name, *_ in TRIES:
                if name in done or (a.only and name not in a.only):
                    continue
                rec = run_try(name, Path(a.out))
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{name}: val accuracy {rec['val_accuracy']:.3f}, shortcuts "
                      + ", ".join(f"{k} {v:.3f}" for k, v in rec["shortcuts"].items())
                      + f", {rec['wall_time_s']:.0f} s", flush=True)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(table(load_records(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
