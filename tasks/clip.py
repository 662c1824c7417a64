"""Contrastive image-text pre-training (CLIP / SigLIP) as a train-loop task.

Data: the embedded captioned shapes (`data/shapes.py`, `data.path=""`) or real
(image, caption) pairs from disk (`data/image_text.py`). A training batch is a
pure function of (seed, step): with the shapes, rows step*B .. step*B + B - 1 of
an unbounded stream that never repeats, so "examples seen" is exact; with
files, rows drawn with replacement.

Evaluation (one pass over the validation set in batches of
`data.eval_batch_size`, the retrieval gallery): the contrastive loss,
image->text and text->image recall@1/5/10 and, on the shapes, zero-shot
classification by shape (6 classes) and by colour+shape (48 classes), each on
images of held-out and of seen (shape, colour) combinations
(`clip/zeroshot.py`), and by shape among the 6 prompts "a {colour} {shape}" of
the image's own colour (`shapecolour`). `eval/zeroshot_shape_heldout_error` is 1 - the held-out
shape top-1 accuracy, for reports that rank by lower-is-better.

"Tokens" for the loop's throughput and FLOPs accounting are image-text pairs:
`tokens_per_step` is the batch size and `train_flops_per_token` the training
FLOPs per pair.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from clip import loss as closs
from clip import zeroshot
from clip.gradcache import gradcache_value_and_grad
from clip.model import (IMAGE_POOLINGS, LOSSES, POS_EMBS, TEXT_POOLINGS, CLIPModel, clamp_logit_scale,
                        clip_param_count, clip_train_flops_per_example, default_logit_init)
from clip.tokenizer import get_tokenizer
from data import image_text, shapes
from nn.errors import DataError
from models.config import validate_model_config
from nn.errors import ConfigError
from sharding import axes as ax
from sharding.axes import current_rules
from tasks.base import Task, collect_aux

ZEROSHOT_HEADS = {"shape": len(shapes.SHAPES), "object": len(shapes.OBJECT_CLASSES)}
RECALL_KS = (1, 5, 10)


def validate_clip_config(config) -> None:
    """One-line errors naming the field, before any data is built or anything compiles."""
    v, t, c, d = config.vision, config.model, config.clip, config.data
    try:
        validate_model_config(v)
    except ConfigError as e:
        raise ConfigError(str(e).replace("model.", "vision.")) from None
    for field in ("image_size", "patch_size", "channels"):
        value = v.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"vision.{field}={value!r} must be a positive integer")
    if v.image_size % v.patch_size:
        raise ConfigError(f"vision.image_size={v.image_size} is not divisible by vision.patch_size={v.patch_size}")
    if v.channels != 3:
        raise ConfigError(f"vision.channels={v.channels} must be 3 (images are decoded as RGB)")
    if v.pos_emb not in POS_EMBS:
        raise ConfigError(f"vision.pos_emb={v.pos_emb!r} must be one of {list(POS_EMBS)}")
    if v.pos_emb == "sincos" and v.d_model % 4:
        raise ConfigError(f"vision.d_model={v.d_model} must be divisible by 4 for vision.pos_emb='sincos'")
    if v.pooling not in IMAGE_POOLINGS:
        raise ConfigError(f"vision.pooling={v.pooling!r} must be one of {list(IMAGE_POOLINGS)}")
    if v.causal:
        raise ConfigError("vision.causal=True: the image tower attends bidirectionally; set vision.causal=False")
    if c.image_proj_dim != c.text_proj_dim:
        raise ConfigError(f"clip.image_proj_dim={c.image_proj_dim} differs from clip.text_proj_dim={c.text_proj_dim}: "
                          f"both towers must project to the same joint width")
    if not isinstance(c.image_proj_dim, int) or c.image_proj_dim <= 0:
        raise ConfigError(f"clip.image_proj_dim={c.image_proj_dim!r} must be a positive integer")
    if c.text_pooling not in TEXT_POOLINGS:
        raise ConfigError(f"clip.text_pooling={c.text_pooling!r} must be one of {list(TEXT_POOLINGS)}")
    if c.text_pooling == "cls" and t.causal:
        raise ConfigError("clip.text_pooling='cls' with model.causal=True: the first token would see only itself; "
                          "use clip.text_pooling='eos' or model.causal=False")
    if c.loss not in LOSSES:
        raise ConfigError(f"clip.loss={c.loss!r} must be one of {list(LOSSES)}")
    if float(c.logit_scale_init) < 0:
        raise ConfigError(f"clip.logit_scale_init={c.logit_scale_init} must be > 0 (or 0 for the loss's default)")
    T = c.get("fixed_temperature", 0.0)
    if isinstance(T, bool) or not isinstance(T, (int, float)) or T < 0:
        raise ConfigError(f"clip.fixed_temperature={T!r} must be a number >= 0 (0: a learnable logit scale)")
    if T and float(c.logit_scale_init):
        raise ConfigError(f"clip.fixed_temperature={T} and clip.logit_scale_init={c.logit_scale_init} both set the "
                          f"logit scale: set one (a fixed temperature T holds it at 1/T)")
    scale, _ = default_logit_init(c)
    if float(c.logit_scale_max) < scale:
        what = f"clip.fixed_temperature={T}" if T else f"clip.logit_scale_init={c.logit_scale_init}"
        raise ConfigError(f"clip.logit_scale_max={c.logit_scale_max} is below the initial logit scale {scale:.4g} "
                          f"({what}, loss {c.loss!r}): the clamp would undo the init")
    sub = c.get("loss_sub_batch", 0)
    if isinstance(sub, bool) or not isinstance(sub, int) or sub < 0 or sub == 1:
        raise ConfigError(f"clip.loss_sub_batch={sub!r} must be 0 (the whole batch) or an integer >= 2")
    if sub and int(d.batch_size) % sub:
        raise ConfigError(f"clip.loss_sub_batch={sub} does not divide data.batch_size={d.batch_size}")
    tok = get_tokenizer(d.tokenizer, int(d.seq_len))
    if t.vocab_size < tok.vocab_size:
        raise ConfigError(f"model.vocab_size={t.vocab_size} is smaller than the {d.tokenizer!r} tokenizer's "
                          f"vocabulary ({tok.vocab_size})")
    if d.path == "":
        shapes.check_params(image_size=v.image_size, pair_fraction=float(d.pair_fraction), num_val=int(d.num_val))
    elif not 0.0 < float(d.val_fraction) < 1.0:
        raise DataError(f"data.val_fraction={d.val_fraction} must be in (0, 1)")


def _normalise(images_BIIY: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images_BIIY.astype(np.float32) * (2.0 / 255.0) - 1.0


class CLIPTask(Task):
    name = "clip"
    flops_head = "clip"

    def __init__(self, config, process_index: int = 0, process_count: int = 1):
        super().__init__(config, process_index, process_count)
        validate_clip_config(config)
        d = config.data
        self.tokenizer = get_tokenizer(d.tokenizer, int(d.seq_len))
        self.image_size = int(config.vision.image_size)
        self.embedded = d.path == ""
        self.skipped = 0
        if self.embedded:
            self.train_seed = int(d.generator_seed) * 100_003 + int(config.seed)
            val = shapes.val_examples(int(d.generator_seed), int(d.num_val), self.image_size)
            self.val_images, self.val_captions = val.images, val.canonical
            zs = {"shape_label": val.shape, "object_label": val.shape * len(shapes.COLOUR_NAMES) + val.colour,
                  "heldout_weight": (val.single & val.held_out), "seen_weight": (val.single & ~val.held_out)}
            self.val_zeroshot = {k: np.maximum(a, 0).astype(np.int32) if a.dtype != bool else a.astype(np.float32)
                                 for k, a in zs.items()}
            self.prompts = {h: self.tokenizer.encode(shapes.prompts(h)) for h in ZEROSHOT_HEADS}
        else:
            full = image_text.load_image_text(d.path, self.image_size)
            self.skipped = len(full.skipped)
            self.train_set, val = image_text.split(full, float(d.val_fraction), int(d.generator_seed))
            self.val_images, self.val_captions = val.images, val.captions
            self.train_tokens = self.tokenizer.encode(self.train_set.captions)
            self.val_zeroshot = {}
        self.val_tokens = self.tokenizer.encode(self.val_captions)
        # Retrieval ground truth: equal token rows (what the text tower sees, after any cutting).
        self.val_groups = zeroshot.caption_groups([row.tobytes() for row in self.val_tokens[0]])

    def build_model(self, rngs):
        return CLIPModel(self.config, rngs=rngs)

    # --- accounting (tasks/base.py): a "token" is an image-text pair -------------------------------
    @classmethod
    def tokens_per_step_of(cls, config) -> int:
        return int(config.data.batch_size)

    @classmethod
    def train_flops_per_token_of(cls, config) -> float:
        """Both towers per pair; the similarity matrix spans each pair's negatives: the whole batch (also
        under accumulation, which caches every micro-batch's embeddings) or its `clip.loss_sub_batch`.
        Model FLOPs: the accumulation's second forward pass of the towers (a recomputation) is not counted."""
        d = config.data
        return clip_train_flops_per_example(config, text_len=int(d.seq_len),
                                            micro_batch=int(config.clip.get("loss_sub_batch", 0) or d.batch_size))

    @classmethod
    def param_count_of(cls, config) -> int:
        return clip_param_count(config)

    # --- the clamp -------------------------------------------------------------
    def post_update(self, params):
        return clamp_logit_scale(params, float(self.config.clip.logit_scale_max))

    # --- loss ----------------------------------------------------------------
    def _batch_mesh_axes(self) -> tuple[str, ...] | None:
        """Mesh axes the batch is split over (from the loop's active rules), or None."""
        if not self.config.clip.sharded_loss:
            return None
        target = (current_rules() or {}).get(ax.BATCH)
        if not target:
            return None
        return (target,) if isinstance(target, str) else tuple(target)

    def _loss(self, model, img_BZ, txt_BZ, batch_axes=None):
        bias = model.logit_bias[...] if self.config.clip.loss == "sigmoid" else None
        return closs.contrastive_loss(self.config.clip.loss, img_BZ, txt_BZ, model.scale(), bias,
                                      batch_axes=batch_axes, sub_batch=int(self.config.clip.get("loss_sub_batch", 0)))

    def _metrics(self, model, loss, metrics, extra, aux_metrics):
        metrics = {"loss": loss + extra, "clip/contrastive_loss": loss, **metrics, **aux_metrics,
                   "clip/logit_scale": jnp.exp(model.logit_scale[...])}
        if self.config.clip.loss == "sigmoid":
            metrics["clip/logit_bias"] = model.logit_bias[...]
        return loss + extra, metrics

    def loss(self, model, batch, ctx):
        img_BZ, txt_BZ, aux = model(batch["images"], batch["tokens"], batch["segment_ids"], ctx=ctx)
        loss, metrics = self._loss(model, img_BZ, txt_BZ, self._batch_mesh_axes())
        extra, aux_metrics = collect_aux(aux)
        return self._metrics(model, loss, metrics, extra, aux_metrics)

    def accumulate(self, merge, params, micro_batches, make_ctx):
        """Accumulation that keeps every negative: GradCache (clip/gradcache.py). The whole batch's
        loss over the cached embeddings of every micro-batch, its embedding gradients pulled back
        through the towers one micro-batch at a time; equal to the unaccumulated loss and gradient
        (tests/test_clip_accumulation.py). Per-layer auxiliary losses of the towers are averaged over
        micro-batches, as the loop's default accumulation does."""
        def towers(p, micro, i):
            img_bZ, txt_bZ, aux = merge(p)(micro["images"], micro["tokens"], micro["segment_ids"], ctx=make_ctx(i))
            extra, aux_metrics = collect_aux(aux)
            return (img_bZ, txt_bZ, extra), aux_metrics

        def loss(p, img_BZ, txt_BZ):
            return self._loss(merge(p), img_BZ, txt_BZ, self._batch_mesh_axes())

        (value, metrics), grads, extras = gradcache_value_and_grad(towers, loss, params, micro_batches)
        extra = extras.pop("extra")
        return self._metrics(merge(params), value, metrics, extra, extras), grads

    # --- data ----------------------------------------------------------------
    def batch_axes(self):
        axes = {"images": (ax.BATCH, None, None, None), "tokens": (ax.BATCH, ax.LENGTH),
                "segment_ids": (ax.BATCH, ax.LENGTH), "group": (ax.BATCH,), "weights": (ax.BATCH,)}
        axes.update({k: (ax.BATCH,) for k in self.val_zeroshot})
        return axes

    def _my_rows(self, n: int) -> slice:
        per = n // self.process_count
        return slice(self.process_index * per, (self.process_index + 1) * per)

    def train_batch(self, step):
        B = int(self.config.data.batch_size)
        rows = np.arange(step * B, (step + 1) * B)[self._my_rows(B)]
        if self.embedded:
            ex = shapes.train_examples(self.train_seed, rows, self.image_size, float(self.config.data.pair_fraction))
            tokens_BL, seg_BL = self.tokenizer.encode(ex.captions)
            images = ex.images
        else:
            rng = np.random.default_rng([int(self.config.seed), step])
            idx_B = rng.integers(0, len(self.train_set.captions), size=B)[self._my_rows(B)]
            images = self.train_set.images[idx_B]
            tokens_BL, seg_BL = self.train_tokens[0][idx_B], self.train_tokens[1][idx_B]
        return {"images": _normalise(images), "tokens": tokens_BL, "segment_ids": seg_BL}

    def eval_batches(self):
        """The whole validation set once; the last batch padded with zero-weight rows."""
        d = self.config.data
        B = int(d.get("eval_batch_size") or d.batch_size)
        n = len(self.val_captions)
        mine = self._my_rows(B)
        for start in range(0, n, B):
            idx_B = np.arange(start, start + B)
            weights_B = (idx_B < n).astype(np.float32)
            idx_B = np.minimum(idx_B, n - 1)
            batch = {"images": _normalise(self.val_images[idx_B]), "tokens": self.val_tokens[0][idx_B],
                     "segment_ids": self.val_tokens[1][idx_B], "group": self.val_groups[idx_B], "weights": weights_B}
            # Padded rows must not count for zero-shot either.
            batch.update({k: (a[idx_B] * weights_B if a.dtype == np.float32 else a[idx_B])
                          for k, a in self.val_zeroshot.items()})
            yield {k: v[mine] for k, v in batch.items()}

    # --- evaluation ----------------------------------------------------------
    def eval_sums(self, model, batch):
        img_BZ, txt_BZ, _ = model(batch["images"], batch["tokens"], batch["segment_ids"])
        w_B = batch["weights"]
        # Padded rows are removed from the queries and from the negatives.
        bias = model.logit_bias[...] if self.config.clip.loss == "sigmoid" else None
        loss_sum = closs.masked_loss(self.config.clip.loss, img_BZ, txt_BZ, model.logit_scale[...], bias, w_B)
        sums = {"loss": loss_sum}
        for k, v in zeroshot.retrieval_hits(img_BZ, txt_BZ, batch["group"], w_B, RECALL_KS).items():
            sums[f"retrieval/{k}"] = v
        if self.embedded:
            encode = lambda tok, seg: model.encode_text(tok, seg)[0]  # noqa: E731
            classes = {}
            for head, C in ZEROSHOT_HEADS.items():
                tokens_XL, seg_XL = self.prompts[head]
                classes[head] = zeroshot.class_embeddings(encode, jnp.asarray(tokens_XL), jnp.asarray(seg_XL), C)
            # "shapecolour": the shape among the 6 prompts "a {colour} {shape}" of the image's own colour
            # (object class id = shape * 8 + colour); for a held-out image the true prompt is itself a
            # combination never trained on. Chance 1/6, like "shape", without colour cues to exploit.
            n_col = len(shapes.COLOUR_NAMES)
            obj_BC = jnp.einsum("BZ,CZ->BC", img_BZ, classes["object"]).reshape(-1, len(shapes.SHAPES), n_col)
            colour_B = batch["object_label"] % n_col
            own_colour_BS = jnp.take_along_axis(obj_BC, colour_B[:, None, None], axis=2)[:, :, 0]
            for split in ("heldout", "seen"):
                w_B = batch[f"{split}_weight"]
                for head in ZEROSHOT_HEADS:
                    hits = zeroshot.zeroshot_hits(img_BZ, classes[head], batch[f"{head}_label"], w_B, ks=(1, 5))
                    for k, v in hits.items():
                        sums[f"zeroshot/{head}_{split}_{k}"] = v
                hits = zeroshot.hits_from_scores(own_colour_BS, batch["shape_label"], w_B, ks=(1,))
                for k, v in hits.items():
                    sums[f"zeroshot/shapecolour_{split}_{k}"] = v
        return sums

    def eval_metrics(self, sums):
        n = max(sums["retrieval/count"], 1.0)
        out = {"loss": sums["loss"] / n}
        for k in RECALL_KS:
            for d in ("i2t", "t2i"):
                out[f"{d}_recall_at_{k}"] = sums[f"retrieval/{d}_recall_at_{k}"] / n
        if self.embedded:
            for head in (*ZEROSHOT_HEADS, "shapecolour"):
                for split in ("heldout", "seen"):
                    c = max(sums[f"zeroshot/{head}_{split}_count"], 1.0)
                    ks = (1, 5) if head == "object" else (1,)  # top-5 of 6 shapes says little
                    for k in ks:
                        out[f"zeroshot_{head}_{split}_top{k}_accuracy"] = sums[f"zeroshot/{head}_{split}_top{k}"] / c
            out["zeroshot_shape_heldout_error"] = 1.0 - out["zeroshot_shape_heldout_top1_accuracy"]
        return out

    def eval_extras(self, model, step: int) -> dict[str, Any]:
        return {} if self.embedded else {"data_skipped_images": float(self.skipped)}


def chance_levels() -> dict[str, float]:
    """Zero-shot chance accuracies on the shapes (uniform guessing)."""
    return {"shape_top1": 1 / len(shapes.SHAPES), "object_top1": 1 / len(shapes.OBJECT_CLASSES),
            "object_top5": 5 / len(shapes.OBJECT_CLASSES)}


__all__ = ["CLIPTask", "validate_clip_config", "chance_levels"]
