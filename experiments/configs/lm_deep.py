"""A deeper byte-level LM with the options scaling runs use: layers under scan with remat, QK-norm, z-loss, WSD.

    python train.py --config experiments/configs/lm_deep.py --workdir runs/lm_deep
    python train.py --config experiments/configs/lm_deep.py:smoke --workdir /tmp/deep_smoke   # seconds, for tests
    python train.py --config experiments/configs/lm_deep.py:layers=32 --workdir runs/lm_deep32

Twice lm_tiny's depth at the same width (8 blocks of d_model=128 on the
embedded pydoc corpus). The blocks run under one scan over stacked
parameters (`model.scan_layers`: compile time does not grow with
`layers`), each rematerialised keeping only the attention output
(`model.remat="save_attention_out"`); queries and keys are RMS-normalised
per head (`model.qk_norm`); the objective adds PaLM's output-logit z-loss
(`optim.z_loss=1e-4`); the learning rate is warmup-stable-decay with the
last 20% of steps decaying as 1 - sqrt (`optim.schedule="wsd"`).
docs/training.md describes each option.

Measured on this project's 2-core CPU VM under load 10 (other jobs): 660 tokens/s
(~6 s a step of 4,096 tokens) over steps 20-60, eval bits-per-byte 3.38 at step 60; the
600 steps take about an hour there (`train.stop_at=N` ends a launch early; rerunning
resumes). `:layers=4` halves the per-step work.
"""
from experiments.configs.defaults import apply_smoke, base_config, parse_arg
from models.stack import REMAT_POLICIES


def get_config(arg: str | None = None):
    args = parse_arg(arg, smoke=False, layers=8, remat=("save_attention_out", *REMAT_POLICIES))
    c = base_config()
    c.model.update(d_model=128, n_layers=args.layers, n_heads=4, n_kv_heads=4, d_ff=512, activation="swiglu",
                   scan_layers=True, remat=args.remat, qk_norm=True)
    c.data.update(seq_len=128, batch_size=32)
    c.optim.update(learning_rate=3e-3, warmup_steps=100, schedule="wsd", decay_fraction=0.2, decay_shape="1-sqrt",
                   z_loss=1e-4)
    c.train.update(num_steps=600, log_every=50, eval_every=100, checkpoint_every=200)
    if args.smoke:
        apply_smoke(c)
    return c
