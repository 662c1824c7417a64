"""MoE vs dense at matched FLOPs and at matched parameters.

    python -m experiments.study experiments/studies/moe_vs_dense.py --out experiments/results/moe_vs_dense
    python -m experiments.study experiments/studies/moe_vs_dense.py:smoke --out /tmp/moe_vs_dense_smoke

The claim tested (Switch Transformer; Clark et al. 2022, "Unified scaling laws
for routed language models"): at matched training FLOPs a sparse MoE beats
the dense model it is built from; at matched total parameters the dense
model (which spends E/k times more compute per token) wins.

Three arms, all width 96, 3 layers, trained on the same tokens (tokens
budget: same steps and batches per seed, so comparisons are paired):
- `moe`:          E=8 experts of width 192, top-2 routing (dropless): active FFN
                  FLOPs = 2 x 192 = 384 per token, 8 x 192 = 1536 FFN parameters wide;
- `dense_flops`:  dense FFN of width 384: the same FLOPs per token (the router adds
                  2 D E FLOPs, 0.5% here), 4x fewer FFN parameters;
- `dense_params`: dense FFN of width 1536: the same total parameters (up to the
                  router's D x E), 4x the FFN FLOPs per token.
Five seeds, Holm-corrected paired comparisons against `moe`; the report lists
every arm's parameters and training FLOPs so the matching can be checked.
"""
from experiments.configs.defaults import parse_arg
from experiments.study import Study

D, E, F_EXPERT = 96, 8, 192
ARMS = {
    "moe": {"model.ffn": "moe", "model.d_ff": 2 * F_EXPERT},
    "dense_flops": {"model.ffn": "mlp", "model.d_ff": 2 * F_EXPERT},
    "dense_params": {"model.ffn": "mlp", "model.d_ff": E * F_EXPERT},
}


def get_study(arg=None) -> Study:
    args = parse_arg(arg, smoke=False)
    study = Study(
        name="moe_vs_dense",
        config=f"experiments/configs/moe_lm.py:experts={E},k=2,dispatch=dropless",
        grid=[dict(v) for v in ARMS.values()],
        names=list(ARMS),
        seeds=[0, 1, 2, 3, 4],
        budget={"mode": "tokens", "value": 400 * 16 * 128},
        metrics=("eval/bpb", "eval/loss"),
        baseline="moe",
        primary="eval/bpb",
        overrides={"train.tensorboard": False, "sample.num_tokens": 0, "data.eval_batches": 8,
                   "model.d_model": D, "model.n_layers": 3, "model.n_heads": 3, "model.n_kv_heads": 3,
                   "model.moe.d_ff": F_EXPERT, "data.seq_len": 128, "data.batch_size": 16},
        evals_per_run=8,
    )
    if args.smoke:
        study.config = "experiments/configs/moe_lm.py:smoke"
        study.seeds = [0, 1]
        study.grid = [{"model.ffn": "moe", "model.d_ff": 64}, {"model.ffn": "mlp", "model.d_ff": 64},
                      {"model.ffn": "mlp", "model.d_ff": 128}]
        study.budget = {"mode": "tokens", "value": 4 * 8 * 32}
        study.overrides = {"train.tensorboard": False, "sample.num_tokens": 0}
        study.evals_per_run = 2
    return study
