"""Compute-optimal dense LMs on the stdlib corpus: IsoFLOP profiles and the parametric law.

    python -m experiments.study experiments/studies/lm_isoflop.py --out experiments/results/lm_isoflop
    python -m experiments.study experiments/studies/lm_isoflop.py --out experiments/results/lm_isoflop --print-commands
    python -m experiments.study experiments/studies/lm_isoflop.py:smoke --out /tmp/lm_isoflop_smoke

The question (Hoffmann et al. 2022): at a fixed training compute C, which model size N gives the
lowest loss, and how do that N_opt and its loss L_opt grow with C? A dense decoder LM
(experiments/configs/lm_stdlib.py: the Python standard library, packed documents, a 1,024-id
byte-level BPE trained on its training split) at three budgets two decades apart (2e10, 2e11,
2e12 training FLOPs, counted analytically by the task: embedding/unembedding and attention
included), five sizes per budget, three seeds per (size, budget), batches of 4 x 128 tokens.

Design choices:
- One run per (size, budget), each with its own cosine schedule ending at its own last step
  (warmup 10% of its steps): a loss at C is that of a run annealed at C (docs/studies.md).
- Sizes: a ladder of nine shapes (width 16-128, 1-3 layers, 13K-720K parameters with the tied
  1,024 x d embedding, head dim 16, d_ff = 4 d); each budget
  takes five consecutive shapes, shifted two rungs per decade of compute (N_opt ∝ C^~0.5 if
  Chinchilla holds here), so that the lowest loss is expected inside each budget's grid. The
  report flags a budget whose minimum is at an edge; if one is, add a rung on that side.
- Learning rate tuned per shape by the tuning stage: {3e-4, 1e-3, 3e-3, 1e-2, 3e-2} at 51,200 training tokens
  (100 steps), seed 0; the choice is used at every budget (a short-horizon choice: it may favour
  larger rates than the long runs want). Edge choices are flagged in the report.
- Data: about 2.5M training tokens at most (d64L1 at the largest budget), under one epoch of the
  stdlib training split: no model sees its data more than once (the issue's bound is 4).
- Steps: from 50 (d64L1 at 2e10, the large edge of the smallest budget) to 4,900 (d64L1 at 2e12).
- Evaluation: once at the end of each run, 128 batches of 4 x 128 tokens of the validation split;
  the report bootstraps over those batches against the seed spread.
- Fits (declared): IsoFLOP parabolas with N_opt(C), L_opt(C); the parametric law with a held-out
  budget and the sensitivity table. No pairwise comparisons (the question is the optimum, not
  whether size A beats size B).

Cost: 45 main runs (3.3e13 training FLOPs, 24M training tokens) + 45 tuning runs (100 steps
each). Small models are overhead-bound on CPU, so tokens, not FLOPs, set the time. Measured on
the shared 2-core VM while other jobs ran (a pilot of the smallest budget, seed 0, LR 3e-3, no
tuning): 12-14K tokens/s for d16-d32, 3.3K for d96L2 (batch 8); about 36 s per run at 2e10 all
included. Extrapolated: ~7 min for 2e11, ~65 min for 2e12 (mostly d64L1/d64L2 at 1.7-2.5M tokens),
~10 min of per-run start-up and ~20 min of tuning (the first 27 tuning runs took 22 min, niced, while
the test suite ran): about 105 minutes on that machine, more than the issue's 90. Scaling every budget down by 1.5x is the lever if it must fit 90 minutes (the 2e10
pilot's minimum was at d24L1, the second rung: a lower budget risks an edge at d16L1). The pilot's
eval/loss at 2e10: d16L1 5.843, d24L1 5.780, d32L1 5.822, d48L1 5.904, d64L1 5.913 (one seed,
untuned: differences of a few hundredths, so 3 seeds and the tuned rates matter). Resumable:
interrupt and rerun the same command.
"""
from experiments.configs.defaults import parse_arg
from experiments.study import Study
from experiments.study.runner import Tuning

VOCAB = 1024
# (d_model, n_layers): head dim 16, d_ff = 4 d. Train FLOPs/token at seq 128 grow ~1.5-2x per rung.
LADDER = [(16, 1), (24, 1), (32, 1), (48, 1), (64, 1), (64, 2), (96, 2), (128, 2), (128, 3)]
BUDGETS = [2e10, 2e11, 2e12]
SIZES_PER_BUDGET = 5
SHIFT_PER_DECADE = 2
# A first tuning pass over {1e-3, 3e-3, 1e-2} put 5 of the 9 shapes at an edge (four at 1e-2, d96L2 at 1e-3),
# so the grid spans 3e-4 .. 3e-2.
LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
TUNE_TOKENS = 100 * 512


def shape(d: int, layers: int) -> dict:
    return {"model.d_model": d, "model.n_layers": layers, "model.n_heads": d // 16, "model.n_kv_heads": d // 16,
            "model.d_ff": 4 * d}


def name(d: int, layers: int) -> str:
    return f"d{d}L{layers}"


def window(j: int) -> list[tuple[int, int]]:
    """The shapes trained at budget j."""
    return LADDER[SHIFT_PER_DECADE * j: SHIFT_PER_DECADE * j + SIZES_PER_BUDGET]


def get_study(arg=None) -> Study:
    args = parse_arg(arg, smoke=False)
    study = Study(
        name="lm_isoflop",
        config=f"experiments/configs/lm_stdlib.py:vocab={VOCAB}",
        grid=[shape(*s) for s in LADDER],
        names=[name(*s) for s in LADDER],
        seeds=[0, 1, 2],
        budget={"mode": "flops", "value": BUDGETS[0]},
        budgets=list(BUDGETS),
        metrics=("eval/loss", "eval/bpb"),
        primary="eval/loss",
        compare=False,
        fits={"isoflop": "how do the compute-optimal size N_opt and its loss L_opt grow with compute?",
              "parametric": "does L(N, D) = E + A/N^alpha + B/D^beta describe these runs, and does it "
                            "predict the largest budget from the smaller two?"},
        overrides={"train.tensorboard": False, "sample.num_tokens": 0, "data.seq_len": 128, "data.batch_size": 4,
                   "data.eval_batches": 128},
        evals_per_run=1,
        tuning=Tuning(grid={"optim.learning_rate": list(LRS)}, budget={"mode": "tokens", "value": TUNE_TOKENS}),
        cells={(name(*s), b) for j, b in enumerate(BUDGETS) for s in window(j)},
    )
    if args.smoke:
        study.config = "experiments/configs/lm_stdlib.py:smoke"
        study.grid = [shape(16, 1), shape(32, 1)]
        study.names = ["d16L1", "d32L1"]
        study.seeds = [0]
        study.budget = {"mode": "flops", "value": 2e8}
        study.budgets = [2e8, 4e8]
        study.overrides = {"train.tensorboard": False, "sample.num_tokens": 0, "data.seq_len": 32,
                           "data.batch_size": 8, "data.eval_batches": 2}
        study.tuning = Tuning(grid={"optim.learning_rate": [1e-3, 1e-2]}, budget={"mode": "steps", "value": 2})
        study.cells = None
    return study
