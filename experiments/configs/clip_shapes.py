"""CLIP on the embedded captioned shapes (CPU, minutes): zero-shot shape classification of held-out combinations.

    python train.py --config experiments/configs/clip_shapes.py --workdir runs/clip_shapes
    python train.py --config experiments/configs/clip_shapes.py:loss=sigmoid --workdir runs/clip_siglip
    python train.py --config experiments/configs/clip_shapes.py:smoke --workdir /tmp/smoke   # seconds, for tests

Reaches (seed 0, measured with the first command on this project's shared
2-core CPU under load ~14 from other jobs, 1000 steps in 132 s of loop
time, 3 minutes with start-up and compilation): held-out shape top-1
**61.8%** (chance 16.7%; 81.6% on seen combinations), held-out colour+shape
top-1 42.0% (chance 2.1%), retrieval R@1 9.6% image->text and 12.0%
text->image over the 768-pair validation set.

Data (data/shapes.py): 32x32 renders of 6 shapes x 8 colours x 2 sizes x 9
positions; 12 of the 48 (shape, colour) combinations never appear in
training. The headline metric, `eval/zeroshot_shape_heldout_top1_accuracy`,
classifies single-object images of held-out combinations among the 6 shape
names with 4 prompt templates averaged; `eval/zeroshot_object_heldout_*`
picks the colour+shape among 48 classes, where the true class is a
combination the model never saw paired; `shapecolour` picks the shape
among the 6 "a {colour} {shape}" prompts of the image's colour.
Training uses single-object scenes (`data.pair_fraction=0`): with 30%
two-object scenes (and 64-token captions) the same model and budget ended
at 10.8% held-out shape top-1 (below chance) against 43.4% without, at 600
steps of 64 (measured; the validation set keeps its two-object scenes for
retrieval).

Model (41,857 parameters): ViT image tower (patch 8 -> 16 patches + CLS,
learned positions, width 32, 1 layer) and a causal byte-level text tower
(width 32, 1 layer, 40 tokens, EOS pooling), both projected to 32 and
L2-normalised; softmax loss with t = ln(1/0.07) clamped to ln 100. Batch
64, AdamW 2e-3, 1000 steps (64K pairs, none repeated). A larger setting
(width 64, 2 layers, patch 4, 64 tokens, 30% two-object scenes) was at
2.4% held-out shape top-1 (28.5% seen) after 400 steps of 128.

Arguments (comma separated): `loss=softmax|sigmoid`; `batch=N`;
`image_size=64` (patch 16 keeps 16 patches); `smoke` shrinks everything.
"""
import ml_collections

from clip.model import LOSSES
from clip.tokenizer import VOCAB_SIZE
from experiments.configs.defaults import apply_smoke, base_config, parse_arg
from models.config import default_model_config


def get_config(arg: str | None = None):
    args = parse_arg(arg, smoke=False, loss=LOSSES, batch=64, image_size=32)
    c = base_config()
    c.task = "clip"
    # Text tower: the shared Transformer over byte tokens (causal, EOS pooling as in CLIP).
    c.model.update(vocab_size=VOCAB_SIZE, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=128,
                   causal=True, rope=True, tie_embeddings=False)
    # Image tower: a ViT from the same blocks.
    c.vision = default_model_config()
    c.vision.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=128, causal=False, rope=False,
                    tie_embeddings=False)
    c.vision.update(ml_collections.ConfigDict(dict(
        image_size=args.image_size, patch_size=args.image_size // 4, channels=3,   # 16 patches
        pos_emb="learned",   # learned | sincos (fixed 2-D)
        pooling="cls",       # cls | mean
    )))
    c.clip = ml_collections.ConfigDict(dict(
        image_proj_dim=32, text_proj_dim=32,
        text_pooling="eos",      # eos (causal text tower) | cls (bidirectional)
        loss=args.loss,          # softmax (CLIP) | sigmoid (SigLIP)
        logit_scale_init=0.0,    # 0: 1/0.07 for softmax, 10 for sigmoid
        logit_scale_max=100.0,   # clamp after every update (open_clip)
        logit_bias_init=-10.0,   # sigmoid only
        fixed_temperature=0.0,   # 0: learn the logit scale; T > 0: hold it at 1/T (never trained)
        loss_sub_batch=0,        # 0: every row's negatives are the whole batch; b': its sub-batch of b' rows
        sharded_loss=True,       # local loss + all-gather when the batch is split over devices
    ))
    c.data = ml_collections.ConfigDict(dict(
        path="",                 # "": embedded shapes; else a folder / .jsonl / .csv of (image, caption)
        tokenizer="bytes",
        seq_len=40,              # single-object captions; the longest (51 bytes) lose their last words
        batch_size=args.batch,
        eval_batch_size=768,     # the retrieval gallery: the whole validation set in one batch
        eval_batches=1,          # unused: evaluation covers the whole validation set
        generator_seed=0,        # the data set's seed (fixed across study seeds)
        num_val=768,
        pair_fraction=0.0,       # share of two-object scenes in training (see the docstring)
        val_fraction=0.1,        # files only
    ))
    c.optim.update(learning_rate=2e-3, warmup_steps=30, weight_decay=0.1)
    c.train.update(num_steps=1000, log_every=50, eval_every=250, checkpoint_every=500)
    if args.smoke:
        apply_smoke(c)
        c.vision.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64, patch_size=8)
        c.model.update(n_layers=1)
        c.clip.update(image_proj_dim=16, text_proj_dim=16)
        c.data.update(seq_len=48, batch_size=16, eval_batch_size=24, num_val=24)
    del c.sample  # LM-only
    return c
