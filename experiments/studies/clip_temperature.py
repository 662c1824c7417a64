"""CLIP temperature: learnable from 0.07 against fixed 0.07, 0.01 and 0.2.

    JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache_clip \
      python -m experiments.study experiments/studies/clip_temperature.py --out experiments/results/clip_temperature
    python -m experiments.studies.clip_temperature experiments/results/clip_temperature   # tables.md (accuracy, CIs)

The claim tested (the seed's, after CLIP: "the temperature parameter ... initialized to the
equivalent of 0.07"): a learnable temperature starting at 0.07 trains CLIP at least as well as
a fixed one, and 0.07 is a good value. Arms (`clip.fixed_temperature`, clip/model.py): learnable
from 0.07 (the default, the baseline), fixed 0.07 (logit scale 14.3), fixed 0.01 (100, the clamp's
ceiling, where a learnable scale often ends in CLIP) and fixed 0.2 (5). A fixed temperature gets no
gradient (`CLIPModel.scale` stops it), so the optimizer never moves it.

Declared protocol: primary metric `eval/zeroshot_shape_heldout_top1_accuracy` (chance 1/6); each
fixed arm compared with the learnable one (paired t on seeds: every arm sees the same batches);
secondary: seen-shape top-1 and image->text R@1. Holm over every test of every metric. Batch 64
(the main config's) for 800 steps (51,200 pairs, as many as clip_negatives.py's runs): at batch
256 for 200 steps the fixed-0.2 arm was barely above chance (pilot below), and at this scale steps
count for more than the batch. Softmax loss, 5 seeds, learning rate tuned per arm over
{1e-3, 2e-3, 4e-3} (centred on the main config's 2e-3; seed 0, 400 steps), one evaluation at the
end. Model as clip_negatives.py (`TINY`).

Cost (20 main + 12 tuning runs), measured as in clip_negatives.py (CPU seconds on the loaded 2-core
VM): a batch-64 step ~0.065 s (800 steps with two evaluations: 82.5 s whole run), ~24 s per run
that compiles a new train step, ~5 s per later seed of an arm: tuning 12 x (24 + 26) ~ 600 s, main
runs 4 x (24 + 52 + 4 x 57) ~ 1,220 s: about 30 minutes. Pilots (seed 0, untuned, rate 4e-3, batch
256, 200 steps): fixed 0.01 held-out shape top-1 0.319 (seen 0.427), 95.9 CPU s; fixed 0.2 0.191
(seen 0.566), 84.4 s; learnable 0.365. Fixed 0.2 at this study's batch 64 x 800 steps, rate 2e-3:
0.337 at step 400, 0.368 at 800 (seen 0.601): clearly above chance (0.167).
Resumable: rerun the same command.
"""
from __future__ import annotations

import sys

from experiments.configs.defaults import parse_arg
from experiments.studies.clip_negatives import PRIMARY, SECONDARY, SEEDS, TINY, accuracy_tables
from experiments.study import Study
from experiments.study.runner import Tuning

TEMPERATURES = (0.0, 0.07, 0.01, 0.2)  # 0: learnable from 0.07
BATCH = 64
STEPS = 800
TUNE_STEPS = 400
LRS = [1e-3, 2e-3, 4e-3]


def arm(T: float) -> str:
    return "learned" if not T else f"fixed{T:g}"


def get_study(arg=None) -> Study:
    args = parse_arg(arg, smoke=False)
    study = Study(
        name="clip_temperature",
        config="experiments/configs/clip_shapes.py",
        grid=[{"clip.fixed_temperature": T} for T in TEMPERATURES],
        names=[arm(T) for T in TEMPERATURES],
        seeds=list(SEEDS),
        budget={"mode": "steps", "value": STEPS},
        metrics=(PRIMARY, *SECONDARY),
        primary=PRIMARY,
        baseline=arm(0.0),
        overrides={**TINY, "data.batch_size": BATCH, "clip.loss": "softmax"},
        evals_per_run=1,
        tuning=Tuning(grid={"optim.learning_rate": list(LRS)}, budget={"mode": "steps", "value": TUNE_STEPS}),
    )
    if args.smoke:
        study.config = "experiments/configs/clip_shapes.py:smoke"
        study.grid = [{"clip.fixed_temperature": T} for T in (0.0, 0.2)]
        study.names = [arm(T) for T in (0.0, 0.2)]
        study.seeds = [0, 1]
        study.budget = {"mode": "steps", "value": 2}
        study.overrides = {"train.tensorboard": False}
        study.tuning = Tuning(grid={"optim.learning_rate": [3e-3]}, budget={"mode": "steps", "value": 2})
    return study


if __name__ == "__main__":
    print(accuracy_tables(sys.argv[1], title="clip_temperature"))
