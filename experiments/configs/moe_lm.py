"""Byte-level Mixture-of-Experts LM on the embedded pydoc corpus.

    python train.py --config experiments/configs/moe_lm.py --workdir runs/moe_lm
    python train.py --config experiments/configs/moe_lm.py:experts=16,k=1,dispatch=capacity --workdir runs/moe_e16
    python train.py --config experiments/configs/moe_lm.py:smoke --workdir /tmp/moe_smoke   # seconds, for tests

The lm_tiny shape (width 128, 4 layers) with every FFN a top-k MoE layer:
E experts of hidden width 256 each, so with k=2 the active FFN FLOPs per
token equal lm_tiny's dense FFN (width 512) and the FFN parameters are E/2
times larger. Arguments: `experts=E`, `k=K`, `dispatch=capacity|dropless`,
`router=token_choice|expert_choice`, `every=2` (MoE on every other layer).
Health metrics (`train/moe/...`, per layer and averaged) are in
metrics.jsonl and TensorBoard; evaluation reports the layer means on
held-out text (`eval/moe/load_entropy`, `eval/moe/max_fraction`, ...).
"""
from experiments.configs.defaults import apply_smoke, base_config, parse_arg
from moe.layer import DISPATCH_MODES, ROUTERS


def get_config(arg: str | None = None):
    args = parse_arg(arg, smoke=False, experts=8, k=2, every=1, dispatch=("dropless", *DISPATCH_MODES),
                     router=ROUTERS)
    c = base_config()
    c.model.update(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=512, activation="gelu",
                   ffn="moe", ffn_every=args.every)
    c.model.moe.update(num_experts=args.experts, top_k=args.k, d_ff=256, dispatch=args.dispatch, router=args.router)
    c.data.update(seq_len=128, batch_size=32)
    c.optim.update(learning_rate=3e-3, warmup_steps=100)
    c.train.update(num_steps=600, log_every=50, eval_every=100, checkpoint_every=200)
    if args.smoke:
        apply_smoke(c)
        c.model.moe.update(num_experts=4, d_ff=32)
    return c
