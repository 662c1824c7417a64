"""Router collapse: does an unbalanced top-2 router collapse onto a few experts, and what prevents it?

    python -m experiments.study experiments/studies/moe_collapse.py --out experiments/results/moe_collapse
    python -m experiments.study experiments/studies/moe_collapse.py:smoke --out /tmp/moe_collapse_smoke

The claim tested (Shazeer et al. 2017; Switch Transformer, section 2.2): without
a balancing force the router collapses onto a few experts by positive
feedback (chosen experts train, get better, get chosen more); the auxiliary
load-balancing loss, router noise and a hard capacity prevent it.

A small MoE LM (width 64, 2 layers, E=16 experts, k=2) on the embedded
corpus, 5 seeds, steps-matched (same batches per seed), four arms:
- `no_aux`:    dropless, no balancing loss, no z-loss;
- `aux`:       dropless, Switch balancing loss (weight 0.01) and z-loss (1e-3);
- `aux_noise`: as `aux`, plus Gaussian noise (sigma 1) on the router logits,
               annealed to 0 over the run;
- `capacity`:  capacity factor 1.0 with drops and no loss, to see whether the
               capacity limit alone (overflowing tokens get no expert) balances.
The primary metric is the held-out max-expert fraction of token-routes
(1/16 = 0.0625 when balanced; with k=2 a token's two routes go to distinct
experts, so full collapse onto one expert shows as 0.5); reports also cover
normalised load entropy and bits per byte. Curves come from the evaluations
during training (report_load_entropy.md / curves_load_entropy.png).
"""
from experiments.configs.defaults import parse_arg
from experiments.study import Study

NO_LOSS = {"model.moe.balance_weight": 0.0, "model.moe.z_loss_weight": 0.0}
ARMS = {
    "no_aux": {**NO_LOSS, "model.moe.dispatch": "dropless"},
    "aux": {"model.moe.dispatch": "dropless", "model.moe.balance_weight": 0.01, "model.moe.z_loss_weight": 1e-3},
    "aux_noise": {"model.moe.dispatch": "dropless", "model.moe.balance_weight": 0.01, "model.moe.z_loss_weight": 1e-3,
                  "model.moe.noise": "gaussian", "model.moe.noise_scale": 1.0},
    "capacity": {**NO_LOSS, "model.moe.dispatch": "capacity", "model.moe.capacity_factor": 1.0},
}
STEPS = 400


def get_study(arg=None) -> Study:
    args = parse_arg(arg, smoke=False)
    steps = 4 if args.smoke else STEPS
    grid = [dict(v) for v in ARMS.values()]
    for g in grid:
        if g.get("model.moe.noise") == "gaussian":
            g["model.moe.noise_anneal_steps"] = steps
    study = Study(
        name="moe_collapse",
        config="experiments/configs/moe_lm.py:experts=16,k=2",
        grid=grid,
        names=list(ARMS),
        seeds=[0, 1, 2, 3, 4],
        budget={"mode": "steps", "value": steps},
        metrics=("eval/moe/max_fraction", "eval/moe/load_entropy", "eval/bpb"),
        baseline="no_aux",
        primary="eval/moe/max_fraction",
        overrides={"train.tensorboard": False, "sample.num_tokens": 0, "data.eval_batches": 8,
                   "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 2, "model.n_kv_heads": 2,
                   "model.d_ff": 256, "model.moe.d_ff": 128, "data.seq_len": 64, "data.batch_size": 16},
        evals_per_run=8,
    )
    if args.smoke:
        study.config = "experiments/configs/moe_lm.py:smoke"
        study.seeds = [0, 1]
        study.overrides = {"train.tensorboard": False, "sample.num_tokens": 0}
        study.evals_per_run = 1  # one eval and one checkpoint, at the end
    return study
