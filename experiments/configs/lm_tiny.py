"""Tiny byte-level LM on the embedded pydoc corpus: the README's main job.

    python train.py --config experiments/configs/lm_tiny.py --workdir runs/lm_tiny
    python train.py --config experiments/configs/lm_tiny.py:smoke --workdir /tmp/smoke   # seconds, for tests

Trains on 2 CPU cores in under 5 minutes and should reach validation
bits-per-byte below 2.5 (the corpus's unigram entropy is 4.7 bits).
"""
from experiments.configs.defaults import apply_smoke, base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, smoke=False)
    c = base_config()
    c.model.update(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=512, activation="gelu")
    c.data.update(seq_len=128, batch_size=32)
    c.optim.update(learning_rate=3e-3, warmup_steps=100)
    c.train.update(num_steps=600, log_every=50, eval_every=100, checkpoint_every=200)
    if args.smoke:
        apply_smoke(c)
    return c
