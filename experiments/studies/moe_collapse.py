"""Router collapse: does a top-2 router without a balancing force collapse, and what prevents it?

    python -m experiments.study experiments/studies/moe_collapse.py --out experiments/results/moe_collapse
    python -m experiments.studies.moe_collapse experiments/results/moe_collapse      # collapse.md: seeds per arm
    python -m experiments.study experiments/studies/moe_collapse.py:smoke --out /tmp/moe_collapse_smoke

The claim tested (Shazeer et al. 2017; Switch Transformer, section 2.2): without a balancing
force the router collapses onto a few experts by positive feedback (chosen experts train, get
better, get chosen more); the auxiliary load-balancing loss, router noise and a hard capacity
prevent it; expert-choice routing (Zhou et al. 2022) balances by construction.

Collapse, defined before running (moe/health.py): on held-out batches, the normalised load
entropy H(f) / log E is below 0.5 (fewer than sqrt(E) = 4 effective experts of 16), or at least
half of the experts are starved (each below 1/(10E) of the token-routes). A run counts as
collapsed at an evaluation when its held-out means (8 batches of 16 x 64 tokens) meet either
condition. `collapse.md` (the second command) counts the collapsed seeds per arm at step 0,
early (steps 5-30), at the end, and ever, and the seeds that recovered.

Model: width 64, 2 layers, the top one a top-2 MoE FFN with E=16 experts of width 128, dropless
dispatch (every route is computed) unless the arm says otherwise, no router z-loss in any arm
(it is a separate force), sequences of 64 bytes of the embedded corpus, batch 16. One MoE layer
so the held-out statistics are that layer's own: the previous design averaged two MoE layers,
which can hide one collapsed layer behind a balanced one.

Arms (each trained 400 steps, 5 seeds, the same batches per seed: paired):
- `no_loss`: no balancing loss (the baseline);
- `loss_1e-3`, `loss_1e-2`, `loss_1e-1`: the Switch balancing loss pooled over the batch at three
  weights (a dose-response: `trend` over the weight);
- `loss_seq_1e-2`: the same loss computed per sequence and averaged (flaxformer, MaxText), 1e-2;
- `noise`: Gaussian noise (sigma 1) on the router logits in training, annealed to 0 over the
  run, no loss;
- `noise_loss_1e-2`: noise and the pooled loss at 1e-2;
- `capacity_1`: capacity factor 1.0 (routes over it dropped) in training and at evaluation
  (the previous design evaluated at 2.0), no loss;
- `expert_choice`: each expert takes its top C = 8 tokens of each sequence (capacity factor 1.0,
  so 2 experts per token on average), no loss. Its load is uniform by construction (entropy 1,
  nothing starved): it cannot collapse by this definition; what it trades is tokens that no
  expert takes (`eval/moe/dropped_fraction` in each run's metrics). It is not causal: an
  expert's choice of token t depends on the later tokens of the sequence (docs/moe.md).

Protocol: primary metric `eval/moe/starved_experts` (held-out, at the end, lower is better);
secondary `eval/moe/load_entropy` and `eval/bpb`. Comparisons: every arm against `no_loss`, plus
per-sequence vs pooled loss and noise+loss vs loss at 1e-2; the dose-response slope over the
loss weight; Holm over every test of every metric. Learning rate tuned per arm by the tuning
stage over {1e-3, 3e-3, 1e-2} (100 steps, seed 0) on `eval/bpb`, the objective, not on the
primary metric: tuning on balance would choose the rate that avoids collapse. (The noise arms'
annealing spans the 400 main steps, so their 100-step tuning runs end at 3/4 of the noise.)
Evaluations at steps 0, 5, 10, 20, 30, then every 50.

Exploration before the design (seed 0, no balancing loss, lr 3e-3 unless said; held-out
step:entropy/starved experts; /tmp scripts, commands in the closing note of issue 17):
- this model, 200 steps: 0:0.86/0.2, 10:0.45/11.0, 25:0.37/12.5, 50:0.52/9.0, 100:0.54/9.5,
  200:0.56/9.5; max fraction 0.22 -> 0.47-0.50 (one expert in nearly every token's top 2):
  collapsed from step 10 to the end by the starved criterion, while the entropy alone (0.56)
  would call the end state balanced enough;
- 100 steps each: lr 1e-3 collapses as well (100:0.52/10.0), lr 1e-2 harder (100:0.35/12.0);
  router_init_scale 0.1 (100:0.34/10.8) and 10 (10:0.40/12.2, then 100:0.61/6.2: recovers to
  "not collapsed"); E=8 collapses (10:0.34/6.0 of 8, 100:0.56/4.0 of 8, at the threshold);
  the scale does not change the step-0 load (top-k is invariant to scaling the logits), only
  the dynamics;
- the previous design's two MoE layers (ffn_every=1), 100 steps: layer means 100:0.66/5.2 (not
  collapsed), but per layer (training batch) the top layer has 8 of 16 experts starved and
  entropy 0.58 while the bottom one has 1 starved, 0.83: averaging layers hid a collapsed layer.
So collapse needs no special condition here: the no-loss router collapses within 10-20 steps
at every learning rate tried. Timing runs of the study's own configs (lr 3e-3, not tuned):
at 200 steps, seed 0: no_loss 9.4 starved / entropy 0.57, loss_1e-2 0.1 / 0.94, expert_choice
0 / 1.0, loss_seq_1e-2 (seeds 1-3) 0-0.1 / 0.95. At 300 steps no_loss seeds 1-3 collapse by
step 10-20 (11-14 starved) and then partly recover: 7.6, 7.8 and 4.9 starved at step 300
(entropy 0.58, 0.62, 0.72), just under the threshold for two of them; hence 400 steps, to see
where it settles. `noise` alone at 400 steps, seeds 0-1: 8.5 and 8.8 starved at the end
(entropy 0.54): still collapsed.

Cost, measured on the shared 2-core VM (AMD EPYC, load average 9-12 from other jobs: wall
times about 2.2x the process CPU time). The runner compiles once per arm (its seeds reuse the
programs, trainer/loop.py reuse_programs): a 400-step main run takes 58 s of CPU for an arm's
first seed and 29 s for each later one; a 100-step tuning run 27-31 s (each compiles: the
learning rate is part of the program). 9 x (58 + 4 x 29) + 27 x 29 s = about 39 minutes of CPU:
about 40 minutes on a quiet 2-core machine, about 90 under the load measured. Resumable:
interrupt and rerun the same command.
"""
from __future__ import annotations

import sys
from pathlib import Path

from experiments.configs.defaults import parse_arg
from experiments.study import Study
from experiments.study.results import results_dir_cli, study_records
from experiments.study.runner import Tuning
from moe.health import COLLAPSE_ENTROPY, COLLAPSE_STARVED

EXPERTS = 16
STEPS = 400
LRS = [1e-3, 3e-3, 1e-2]
TUNE_STEPS = 100
EARLY_EVALS = (0, 5, 10, 20, 30)
NOISE = {"model.moe.noise": "gaussian", "model.moe.noise_scale": 1.0}
CAPACITY_1 = {"model.moe.dispatch": "capacity", "model.moe.capacity_factor": 1.0,
              "model.moe.eval_capacity_factor": 1.0}
ARMS = {
    "no_loss": {},
    "loss_1e-3": {"model.moe.balance_weight": 1e-3},
    "loss_1e-2": {"model.moe.balance_weight": 1e-2},
    "loss_1e-1": {"model.moe.balance_weight": 1e-1},
    "loss_seq_1e-2": {"model.moe.balance_weight": 1e-2, "model.moe.balance_groups": "sequence"},
    "noise": dict(NOISE),
    "noise_loss_1e-2": {**NOISE, "model.moe.balance_weight": 1e-2},
    "capacity_1": dict(CAPACITY_1),
    "expert_choice": {"model.moe.router": "expert_choice", **CAPACITY_1},
}
COMPARISONS = [(arm, "no_loss") for arm in ARMS if arm != "no_loss"] + [
    ("loss_seq_1e-2", "loss_1e-2"), ("noise_loss_1e-2", "loss_1e-2")]
METRICS = ("eval/moe/starved_experts", "eval/moe/load_entropy", "eval/bpb")


def grid(steps: int) -> list[dict]:
    out = [dict(v) for v in ARMS.values()]
    for g in out:
        if g.get("model.moe.noise") == "gaussian":
            g["model.moe.noise_anneal_steps"] = steps
    return out


def get_study(arg=None) -> Study:
    args = parse_arg(arg, smoke=False)
    study = Study(
        name="moe_collapse",
        config=f"experiments/configs/moe_lm.py:experts={EXPERTS},k=2,every=2",
        grid=grid(STEPS),
        names=list(ARMS),
        seeds=[0, 1, 2, 3, 4],
        budget={"mode": "steps", "value": STEPS},
        metrics=METRICS,
        baseline="no_loss",
        primary="eval/moe/starved_experts",
        comparisons=list(COMPARISONS),
        trend="model.moe.balance_weight",
        overrides={"train.tensorboard": False, "sample.num_tokens": 0, "data.eval_batches": 8,
                   "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 2, "model.n_kv_heads": 2,
                   "model.d_ff": 256, "model.moe.d_ff": 128, "data.seq_len": 64, "data.batch_size": 16,
                   "model.moe.dispatch": "dropless", "model.moe.balance_weight": 0.0,
                   "model.moe.z_loss_weight": 0.0, "train.eval_steps": EARLY_EVALS},
        evals_per_run=STEPS // 50,
        tuning=Tuning(grid={"optim.learning_rate": list(LRS)}, budget={"mode": "steps", "value": TUNE_STEPS},
                      metric="eval/bpb"),
    )
    if args.smoke:
        # Two arms run (the baseline and the per-sequence loss); tests expand the full study to check the rest.
        study.config = "experiments/configs/moe_lm.py:smoke,every=2"
        keep = ["no_loss", "loss_seq_1e-2"]
        study.grid = [dict(ARMS[a]) for a in keep]
        study.names = keep
        study.comparisons = None
        study.trend = None
        study.seeds = [0, 1]
        study.budget = {"mode": "steps", "value": 3}
        study.overrides = {"train.tensorboard": False, "sample.num_tokens": 0, "model.moe.dispatch": "dropless",
                           "model.moe.balance_weight": 0.0, "model.moe.z_loss_weight": 0.0,
                           "train.eval_steps": (0,)}
        study.evals_per_run = 1  # one eval and one checkpoint at the end, plus the one at step 0
        study.tuning = None  # the tuning stage's choice on bpb is tested with a fake train function (test_study.py)
    return study


# ----------------------------------------------------------------------------------------------
# collapse.md: how many seeds collapse per arm, and when
# ----------------------------------------------------------------------------------------------

def is_collapsed(ev: dict, num_experts: int) -> bool | None:
    """The study's definition on one evaluation's held-out means (None when a metric is missing)."""
    h, starved = ev.get("eval/moe/load_entropy"), ev.get("eval/moe/starved_experts")
    if h is None or starved is None:
        return None
    return h < COLLAPSE_ENTROPY or starved >= COLLAPSE_STARVED * num_experts


def collapse_table(records: list[dict], num_experts: int = EXPERTS, early=EARLY_EVALS[1:]) -> dict:
    """{arm: counts} from the results records' eval curves."""
    out: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: (r["point"], r["seed"])):
        curve = sorted(r.get("curve", []), key=lambda c: c["step"])
        flags = [(c["step"], is_collapsed(c, num_experts)) for c in curve]
        flags = [(s, f) for s, f in flags if f is not None]
        a = out.setdefault(r["point"], {"seeds": 0, "at_0": 0, "early": 0, "final": 0, "ever": 0, "recovered": 0,
                                        "first": [], "final_starved": [], "final_entropy": [], "lr": set(),
                                        "starved_by_step": {}})
        a["seeds"] += 1
        if r.get("tuned", {}).get("optim.learning_rate") is not None:
            a["lr"].add(r["tuned"]["optim.learning_rate"])
        for c in curve:
            if c.get("eval/moe/starved_experts") is not None:
                a["starved_by_step"].setdefault(c["step"], []).append(c["eval/moe/starved_experts"])
        if not flags:
            continue
        at = dict(flags)
        ever = [s for s, f in flags if f]
        a["at_0"] += bool(at.get(0))
        a["early"] += any(at.get(s) for s in early)
        a["final"] += bool(flags[-1][1])
        a["ever"] += bool(ever)
        a["recovered"] += bool(ever) and not flags[-1][1]
        if ever:
            a["first"].append(ever[0])
        a["final_starved"].append(curve[-1].get("eval/moe/starved_experts"))
        a["final_entropy"].append(curve[-1].get("eval/moe/load_entropy"))
    return out


def collapse_markdown(records: list[dict], num_experts: int = EXPERTS, order=None) -> str:
    table = collapse_table(records, num_experts)
    arms = [a for a in (order or ARMS) if a in table] + sorted(set(table) - set(order or ARMS))
    lines = ["# moe_collapse: collapsed seeds per arm", "",
             f"Collapsed (defined before running, moe/health.py): held-out normalised load entropy < "
             f"{COLLAPSE_ENTROPY} or at least {COLLAPSE_STARVED:.0%} of the {num_experts} experts starved "
             f"(< 1/(10E) of the routes), on the mean of the evaluation batches. Early: any evaluation at "
             f"steps {', '.join(map(str, EARLY_EVALS[1:]))}. Recovered: collapsed at some evaluation, not at the "
             f"last. Counts are seeds; no test is run on them (the tests are on the primary metric, report.md).", "",
             "| arm | seeds | collapsed at step 0 | early | at the end | ever | recovered | first collapsed at "
             "(steps) | starved at the end (per seed) | entropy at the end (per seed) | learning rate |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda vs, f: " ".join(f.format(v) for v in vs if v is not None) or "n/a"  # noqa: E731
    for arm in arms:
        a = table[arm]
        lines.append(f"| `{arm}` | {a['seeds']} | {a['at_0']} | {a['early']} | {a['final']} | {a['ever']} | "
                     f"{a['recovered']} | {fmt(a['first'], '{}')} | {fmt(a['final_starved'], '{:.1f}')} | "
                     f"{fmt(a['final_entropy'], '{:.2f}')} | {fmt(sorted(a['lr']), '{:g}')} |")
    steps = sorted({st for arm in arms for st in table[arm]["starved_by_step"]})
    lines += ["", "Held-out starved experts (of " + str(num_experts) + "), mean over seeds, at each evaluation: "
              "does collapse grow, settle or recover?", "",
              "| arm | " + " | ".join(f"step {st}" for st in steps) + " |", "|---|" + "---|" * len(steps)]
    for arm in arms:
        by = table[arm]["starved_by_step"]
        lines.append(f"| `{arm}` | " + " | ".join(f"{sum(by[st]) / len(by[st]):.1f}" if by.get(st) else "n/a"
                                                  for st in steps) + " |")
    return "\n".join(lines) + "\n"


def write_collapse_report(results_dir) -> Path:
    _, records = study_records(results_dir)
    out = Path(results_dir) / "collapse.md"
    out.write_text(collapse_markdown(records), encoding="utf-8")
    return out


def main(argv=None) -> int:
    return results_dir_cli(argv, "experiments.studies.moe_collapse", write_collapse_report)


if __name__ == "__main__":
    sys.exit(main())
