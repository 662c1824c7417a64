"""ListOps (reduced CPU setting): dense vs Performer vs Longformer encoders, 3 seeds each.

    python -m experiments.study experiments/studies/listops.py --out results/listops
    python -m experiments.study experiments/studies/listops.py:smoke --out /tmp/listops_smoke

Steps-matched (500 steps of 16 examples, lengths 100-500; see
experiments/configs/listops.py), so the attention types see the same examples in
the same order for a given seed and the comparisons are paired. The
report's metric is validation loss; accuracies with CIs are in
experiments/README.md. Published LRA test accuracies (full setting,
lengths 500-2000, far longer training): Transformer 36.37, Longformer
35.63, Performer 18.01. About 35 minutes for the 9 runs on 2 CPU cores.
"""
from experiments.configs.defaults import parse_arg
from experiments.study import Study

VARIANTS = ("dense", "performer", "longformer")


def shortcuts(config) -> dict:
    """The shortcut baselines (data/listops.py SHORTCUTS) on the validation split the models are scored on."""
    from data import listops

    data = listops.from_config(config.data)
    acc = listops.shortcut_accuracies(data.train, data.val)
    return {name: {"how": how, "eval/accuracy": acc[name]} for name, how in listops.SHORTCUTS.items()}


def get_study(arg=None) -> Study:
    args = parse_arg(arg, smoke=False)
    study = Study(
        name="listops",
        config="experiments/configs/listops.py",
        grid=[{"model.attention": v} for v in VARIANTS],
        names=list(VARIANTS),
        seeds=[0, 1, 2],
        budget={"mode": "steps", "value": 500},
        metrics=("eval/loss", "eval/accuracy"),
        baseline="dense",
        primary="eval/loss",
        overrides={"train.tensorboard": False},
        evals_per_run=2,
        references=shortcuts,
    )
    if args.smoke:
        study.config = "experiments/configs/listops.py:smoke"
        study.seeds = [0, 1]
        study.budget = {"mode": "steps", "value": 4}
        study.overrides.update({"model.longformer.window": 8, "model.performer.num_features": 16})
        study.evals_per_run = 1  # one eval and one checkpoint, at the end
    return study
