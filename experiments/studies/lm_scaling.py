"""Dense LM scaling on the embedded corpus: model sizes at a matched FLOPs budget, 5 seeds.

    python -m experiments.study experiments/studies/lm_scaling.py --out results/lm_scaling
    python -m experiments.study experiments/studies/lm_scaling.py:smoke --out /tmp/lm_scaling_smoke

Every size gets the same training-FLOPs budget (steps from the analytic
FLOPs per token), so the comparison is "which size is best at this
compute". The report compares every size with the baseline (the lm_tiny
shape) with Holm-corrected paired tests (equal seeds share the data order),
fits the loss-vs-compute law on the compute-efficient frontier of the
learning curves, and the loss-vs-parameters law at the matched budget.
The full run took 52 minutes on 2 shared CPU cores (about 38 on a quiet machine); the figures it
produced are in experiments/README.md.
"""
from experiments.configs.defaults import parse_arg
from experiments.study import Study

# (d_model, n_layers, n_heads): head dim 32 throughout, d_ff = 4 * d_model.
SIZES = [(48, 2, 2), (64, 3, 2), (96, 3, 3), (128, 4, 4), (192, 4, 6)]


def size_overrides(d: int, layers: int, heads: int) -> dict:
    return {"model.d_model": d, "model.n_layers": layers, "model.n_heads": heads,
            "model.n_kv_heads": heads, "model.d_ff": 4 * d}


def get_study(arg=None) -> Study:
    args = parse_arg(arg, smoke=False)
    study = Study(
        name="lm_scaling",
        config="experiments/configs/lm_tiny.py",
        grid=[size_overrides(*s) for s in SIZES],
        names=[f"d{d}L{layers}" for d, layers, _ in SIZES],
        seeds=[0, 1, 2, 3, 4],
        budget={"mode": "flops", "value": 6e12},
        metrics=("eval/bpb", "eval/loss"),
        baseline="d128L4",
        primary="eval/bpb",
        fits={"frontier": "how fast does the best loss fall with compute along the learning curves? (upper bound: "
                          "the schedules have not decayed at the intermediate evals)",
              "params": "along this one budget, how does loss change with size? (an IsoFLOP slice)"},
        overrides={"train.tensorboard": False, "sample.num_tokens": 0, "data.eval_batches": 8},
        evals_per_run=10,
    )
    if args.smoke:
        study.grid = [size_overrides(16, 1, 1), size_overrides(32, 1, 1), size_overrides(48, 2, 2)]
        study.names = ["d16L1", "d32L1", "d48L2"]
        study.baseline = "d32L1"
        study.seeds = [0, 1]
        study.budget = {"mode": "flops", "value": 4e9}
        study.overrides.update({"data.seq_len": 32, "data.batch_size": 8, "data.eval_batches": 2})
        study.evals_per_run = 3
    return study
