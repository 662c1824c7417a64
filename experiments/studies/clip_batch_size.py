"""CLIP batch size at matched examples seen: softmax (CLIP) vs sigmoid (SigLIP) loss, 3 seeds.

SUPERSEDED: its larger batches also take fewer steps (negatives and steps confounded). Replaced by
clip_negatives.py, clip_batch_steps.py and clip_temperature.py; kept only so that the committed
report in experiments/results/clip_batch_size/ regenerates until their full runs replace it.

    python -m experiments.study experiments/studies/clip_batch_size.py --out experiments/results/clip_batch_size
    python -m experiments.studies.clip_batch_size experiments/results/clip_batch_size   # accuracy / recall tables with CIs
    python -m experiments.study experiments/studies/clip_batch_size.py:smoke --out /tmp/clip_bs_smoke

The claim tested: contrastive learning improves with batch size because each
example meets more negatives (B - 1 per row of the logits). Every run sees
the same number of image-text pairs (budget mode "tokens": the CLIP task
counts a pair as its token, tasks/clip.py), so a batch of 256 takes 8x fewer optimizer
steps than a batch of 32 at the same learning rate and schedule shape
(warmup 10% of each run's steps): the comparison is "more negatives per
step vs more steps", the trade-off a fixed data budget forces. It is a
reduced CPU setting (see the committed report in experiments/results/clip_batch_size/
for what it shows): a 1-layer, width-32 version of experiments/configs/clip_shapes.py
(42K parameters, `TINY` below) on single-object scenes, 32,768 pairs per run,
one evaluation at the end on the fixed 768-pair validation set (zero-shot
over held-out colour-shape combinations, retrieval over all 768).

Points: batch in {32, 64, 128, 256} x loss in {softmax, sigmoid}; baseline
softmax at batch 32. For a given seed every point trains on exactly the same
pairs in the same order (pair k of the stream is row k of the run, however
it is cut into batches), but the toolkit treats a grid over `data.*` as
independent data, so the report's comparisons are Welch tests (conservative).
The report's primary metric is `eval/zeroshot_shape_heldout_error`
(1 - held-out shape top-1, lower is better, chance 0.833);
`python -m experiments.studies.clip_batch_size experiments/results/clip_batch_size`
adds higher-is-better tables (zero-shot top-1, retrieval R@1) with 95% CIs.
"""
from __future__ import annotations

import sys
from pathlib import Path

from experiments.configs.defaults import parse_arg
from experiments.study import Study

BATCHES = (32, 64, 128, 256)
LOSSES = ("softmax", "sigmoid")
PAIRS_PER_RUN = 32768
# A 1-layer width-32 version of the main config (patch 8, single-object scenes, 40 tokens): on this
# project's shared 2-core machine it learns more per CPU-second than the main config, which the
# study's 24 runs need.
TINY = {"model.d_model": 32, "model.n_layers": 1, "model.d_ff": 128, "vision.d_model": 32,
        "vision.n_layers": 1, "vision.d_ff": 128, "vision.patch_size": 8, "clip.image_proj_dim": 32,
        "clip.text_proj_dim": 32, "data.pair_fraction": 0.0}
TABLE_METRICS = ("eval/zeroshot_shape_heldout_top1_accuracy", "eval/zeroshot_object_heldout_top1_accuracy",
                 "eval/i2t_recall_at_1", "eval/t2i_recall_at_1", "eval/zeroshot_shape_seen_top1_accuracy")


def get_study(arg=None) -> Study:
    args = parse_arg(arg, smoke=False)
    seq_len = 40  # the longest single-object captions (51 bytes) lose their last words
    study = Study(
        name="clip_batch_size",
        config="experiments/configs/clip_shapes.py",
        grid=[{"data.batch_size": b, "clip.loss": loss} for loss in LOSSES for b in BATCHES],
        names=[f"{loss}_b{b}" for loss in LOSSES for b in BATCHES],
        seeds=[0, 1, 2],
        budget={"mode": "tokens", "value": PAIRS_PER_RUN},  # pairs: the CLIP task's unit
        metrics=("eval/zeroshot_shape_heldout_error",) + TABLE_METRICS,
        baseline="softmax_b32",
        primary="eval/zeroshot_shape_heldout_error",
        trend="data.batch_size",  # dose-response over the batch, within each loss
        overrides={"train.tensorboard": False, "data.seq_len": seq_len, **TINY},
        evals_per_run=1,
    )
    if args.smoke:
        study.config = "experiments/configs/clip_shapes.py:smoke"
        study.grid = [{"data.batch_size": 8, "clip.loss": "softmax"}, {"data.batch_size": 16, "clip.loss": "sigmoid"}]
        study.names = ["softmax_b8", "sigmoid_b16"]
        study.baseline = "softmax_b8"
        study.seeds = [0, 1]
        study.budget = {"mode": "tokens", "value": 32}
        study.overrides = {"train.tensorboard": False, "data.seq_len": 48}
    return study


def accuracy_tables(out: str | Path) -> Path:
    """tables.md beside report.md: mean ± 95% Student-t CI over seeds of each higher-is-better metric."""
    from experiments.study.results import load_results
    from experiments.study.stats import summarize

    out = Path(out)
    records = load_results(out / "results.jsonl")
    points = list(dict.fromkeys(r["point"] for r in records))
    lines = ["# clip_batch_size: zero-shot accuracy and retrieval recall (higher is better)", "",
             f"Mean ± 95% Student-t CI over seeds (n per point in brackets), final evaluation of each run; "
             f"{PAIRS_PER_RUN} training pairs per run. Chance: shape top-1 1/6 = 0.167, colour+shape top-1 "
             f"1/48 = 0.021; recall@1 over the 768-pair validation gallery is near 0.002 by chance "
             f"(higher where captions repeat).", "",
             "| point | steps | " + " | ".join(m.split("/", 1)[1] for m in TABLE_METRICS) + " |",
             "|---|---|" + "---|" * len(TABLE_METRICS)]
    for p in points:
        recs = [r for r in records if r["point"] == p]
        cells = []
        for m in TABLE_METRICS:
            vals = [r["final"][m] for r in recs if m in r["final"]]
            if len(vals) >= 2:
                s = summarize(vals)
                cells.append(f"{s['mean']:.3f} ± {(s['ci_high'] - s['ci_low']) / 2:.3f} ({s['n']})")
            else:
                cells.append(f"{vals[0]:.3f} (1)" if vals else "n/a")
        lines.append(f"| `{p}` | {recs[0]['steps']} | " + " | ".join(cells) + " |")
    path = out / "tables.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(accuracy_tables(sys.argv[1]))
