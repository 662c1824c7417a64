"""Long Range Arena ListOps: a bidirectional encoder classifies nested MIN/MAX/MED/SM expressions.

    python train.py --config experiments/configs/listops.py --workdir runs/listops_dense
    python train.py --config experiments/configs/listops.py:variant=performer --workdir runs/listops_performer
    python train.py --config experiments/configs/listops.py:variant=longformer --workdir runs/listops_longformer
    python train.py --config experiments/configs/listops.py:full,variant=dense --workdir runs/listops_full  # accelerator
    python train.py --config experiments/configs/listops.py:smoke --workdir /tmp/smoke   # seconds, for tests

Published numbers (LRA, Tay et al. 2021, table 1, test accuracy at 500-2000
tokens): Transformer 36.37, Longformer 35.63, Performer 18.01; chance is
about 10% (the majority class, 0 or 9, is about 17%). `:full` is that
setting (lengths 500-2000, seq_len 2048, 4 layers, width 512, 5K steps,
96K training examples) and needs an accelerator; generating its data takes
about a minute of CPU per process.

The default is a reduced CPU setting: lengths 100-500, seq_len 512, 20K
training and 2K validation examples, 2 layers of width 128 (MLP 256),
batch 16, 800 steps. Measured on 2 CPU cores shared with other jobs (load
about 7, dense attention): 1.7 s per step (4 layers, width 128, batch 32
took 6 s), so about 23 minutes of training, plus about 20 s generating the
data and an estimated 70 s per evaluation (two): under 30 minutes in all; an idle
machine is faster. 800 x 16 examples is under one epoch, far less than LRA's
5K x 32, so treat it as a check that the pipeline learns (above the
majority-class accuracy of about 17%), not as a reproduction.

Arguments (comma separated): `variant=NAME` picks model.attention, any type in
attention/registry.py (default dense); `full` the LRA setting; `smoke` shrinks everything to seconds.
`data.eval_batches` does not apply: evaluation always covers the whole
validation set. The data set depends only on `data.generator_seed` and the
data fields, so `seed` varies initialisation and batch order on fixed data.
"""
import ml_collections

from attention.registry import ATTENTION_REGISTRY
from data import listops
from experiments.configs.defaults import apply_smoke, base_config, parse_arg


def get_config(arg: str | None = None):
    # Any registered attention type; dense by default.
    args = parse_arg(arg, smoke=False, full=False, variant=("dense", *ATTENTION_REGISTRY))
    c = base_config()
    c.task = "listops"
    c.data.update(dict(
        seq_len=512, batch_size=16, eval_batch_size=64,
        eval_batches=1,      # unused by listops (the whole validation set is evaluated)
    ))
    c.data.update(ml_collections.ConfigDict(dict(
        generator_seed=0,    # the data set's seed (fixed across study seeds)
        num_train=20_000, num_val=2_000,
        min_len=100, max_len=500,   # expression tokens, inclusive (the CLS token is extra)
        max_depth=10, max_args=10,  # as in LRA
    )))
    c.model.update(
        vocab_size=listops.VOCAB_SIZE, num_classes=listops.NUM_CLASSES, causal=False, pooling="cls",
        d_model=128, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=256, activation="gelu",
        attention=args.variant,
    )
    c.model.performer.num_features = 128  # random features M
    c.model.longformer.update(
        window=128,          # W/2 each side
        num_global=1,        # the CLS token attends and is attended globally
    )
    c.optim.update(learning_rate=1e-3, warmup_steps=80, weight_decay=0.1)
    c.train.update(num_steps=800, log_every=50, eval_every=400, checkpoint_every=400)
    if args.full:
        c.data.update(seq_len=2048, batch_size=32, num_train=96_000, num_val=2_000, min_len=500, max_len=2000)
        c.model.update(d_model=512, n_layers=4, n_heads=8, n_kv_heads=8, d_ff=2048)
        c.model.performer.num_features = 256
        c.model.longformer.window = 256
        c.optim.update(learning_rate=5e-4, warmup_steps=1000)
        c.train.update(num_steps=5000, eval_every=500, checkpoint_every=1000)
    if args.smoke:
        apply_smoke(c)
        c.data.update(seq_len=32, batch_size=8, eval_batch_size=8, num_train=256, num_val=20, min_len=8, max_len=31)
        c.model.performer.num_features = 16
        c.model.longformer.window = 8
    # LM-only fields: no text samples for a classifier, no corpus file.
    del c.sample, c.data.path, c.data.val_fraction
    return c
