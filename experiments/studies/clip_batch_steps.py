"""CLIP batch size at matched steps, with the learning rate tuned per batch.

    JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache_clip \
      python -m experiments.study experiments/studies/clip_batch_steps.py --out experiments/results/clip_batch_steps
    python -m experiments.studies.clip_batch_steps experiments/results/clip_batch_steps   # tables.md (accuracy, CIs)

The question the batch-size study this replaces (clip_batch_size, in git history at 369b9d2) could not
answer: at a fixed number of optimizer steps, does a larger batch (more negatives per positive
*and* more pairs per step) train a better CLIP, once each batch gets its own learning rate? Every
run takes the same `STEPS` steps; batch B in {32, 64, 128, 256}; the learning rate is chosen per
batch by the tuning stage over a grid wide enough to hold the square-root scaling from the main
config's 2e-3 at batch 64 (1.4e-3 at 32 ... 4e-3 at 256) and the linear one (1e-3 ... 8e-3), so the
scaling is measured rather than assumed (seed 0, at half the main horizon: `TUNE_STEPS`). Larger batches also see
more pairs (B x STEPS): this is the "matched steps" design, the one large-batch CLIP training
argues from; clip_negatives.py holds the data fixed and varies the negatives alone.

Declared protocol: primary metric `eval/zeroshot_shape_heldout_top1_accuracy` (chance 1/6); the
primary test is the dose-response slope on log2(B) (+ Jonckheere-Terpstra); each batch is also
compared with batch 32 (Welch: the batches differ, so seeds do not pair). Secondary: seen-shape
top-1 and image->text R@1. Holm over every test of every metric. Softmax loss, learnable
temperature from 0.07, 5 seeds, one evaluation at the end. Setting as clip_negatives.py (`TINY`).

Cost (20 main + 16 tuning runs), measured as in clip_negatives.py (CPU seconds on the loaded
2-core VM): a step costs ~0.32 s at batch 256 and ~0.033 s at batch 32 (300 steps of 32: 38.0 s
whole run), about linear in the batch: ~0.59 s for one step of each of the four batches. Tuning
16 x 24 + 4 x 250 x 0.59 ~ 980 s, main runs 4 x (24 + 4 x 5) + 5 x 500 x 0.59 ~ 1,650 s: about
45 minutes. Pilots (seed 0, untuned): batch 32, rate 2e-3, 500 steps:
held-out shape top-1 0.361 (seen 0.691), 40.2 CPU s; batch 256, rate 4e-3, 200 steps (as
clip_negatives.py): 0.365. On a 300-step schedule batch 32 was at 0.198 at step 200 and 0.281 at
300: the 500 steps are what gets the smallest batch clearly above chance (0.167).
Resumable: rerun the same command.
"""
from __future__ import annotations

import sys
from pathlib import Path

from experiments.configs.defaults import parse_arg
from experiments.studies.clip_negatives import PRIMARY, SECONDARY, SEEDS, TINY, accuracy_tables
from experiments.study import Study
from experiments.study.runner import Tuning

BATCHES = (32, 64, 128, 256)
STEPS = 500  # batch 32 needs them to get clearly above chance (pilot below)
TUNE_STEPS = 250
LRS = [1e-3, 2e-3, 4e-3, 8e-3]


def get_study(arg=None) -> Study:
    args = parse_arg(arg, smoke=False)
    study = Study(
        name="clip_batch_steps",
        config="experiments/configs/clip_shapes.py",
        grid=[{"data.batch_size": b} for b in BATCHES],
        names=[f"b{b}" for b in BATCHES],
        seeds=list(SEEDS),
        budget={"mode": "steps", "value": STEPS},
        metrics=(PRIMARY, *SECONDARY),
        primary=PRIMARY,
        baseline=f"b{BATCHES[0]}",
        trend="data.batch_size",
        overrides={**TINY, "clip.loss": "softmax"},
        evals_per_run=1,
        tuning=Tuning(grid={"optim.learning_rate": list(LRS)}, budget={"mode": "steps", "value": TUNE_STEPS}),
    )
    if args.smoke:
        study.config = "experiments/configs/clip_shapes.py:smoke"
        study.grid = [{"data.batch_size": b} for b in (8, 16)]
        study.names = ["b8", "b16"]
        study.baseline = "b8"
        study.seeds = [0, 1]
        study.budget = {"mode": "steps", "value": 2}
        study.overrides = {"train.tensorboard": False}
        study.tuning = Tuning(grid={"optim.learning_rate": [3e-3]}, budget={"mode": "steps", "value": 2})
    return study


if __name__ == "__main__":
    print(accuracy_tables(sys.argv[1], title="clip_batch_steps"))
