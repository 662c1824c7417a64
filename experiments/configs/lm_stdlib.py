"""BPE language model on the Python standard library, packed documents: the config a study starts from.

    python train.py --config experiments/configs/lm_stdlib.py --workdir runs/lm_stdlib
    python train.py --config experiments/configs/lm_stdlib.py:smoke --workdir /tmp/smoke   # seconds, for tests

The first launch trains an 8,192-id byte-level BPE on the stdlib's training
split and prepares the corpus into the data cache (about half a minute on
2 cores, once; docs/data.md); every later launch reads the cached shards.
Documents are packed into 256-token rows with segment ids, so attention never
crosses files. Measured validation bits per byte: docs/data.md.
`:smoke` shrinks the model and uses a 512-id BPE on the pydoc corpus, so it
needs no stdlib preparation.
"""
from experiments.configs.defaults import apply_smoke, base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, smoke=False, vocab=8192)
    c = base_config()
    c.model.update(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=512, activation="gelu",
                   vocab_size=args.vocab)  # must equal the tokenizer's id count (checked at start)
    c.data.update(corpus="stdlib", tokenizer=f"bpe:{args.vocab}", packed=True, seq_len=256, batch_size=16,
                  eval_batches=16)
    c.optim.update(learning_rate=3e-3, warmup_steps=100)
    c.train.update(num_steps=1000, log_every=50, eval_every=100, checkpoint_every=100)
    c.sample.update(prompt="def ", num_tokens=48)
    if args.smoke:
        apply_smoke(c)
        c.model.vocab_size = 512
        c.data.update(corpus="pydoc", tokenizer="bpe:512")
    return c
