"""Contrastive image-text losses on unit embeddings: softmax (CLIP) and sigmoid (SigLIP),
each in a single-device form and a sharded form that gives the same value and gradient.

Softmax / symmetric InfoNCE (van den Oord et al. 2018, eq. 4; CLIP, Radford et al.
2021, Fig. 3): with s = exp(t) and logits L = s I T^T, row i of L scores image i
against every caption of the batch and its positive is caption i, so
    loss = ( CE(L, diag) + CE(L^T, diag) ) / 2,
the mean over rows of logsumexp_j L_ij - L_ii (image -> text) and the same over
columns (text -> image). Minimising it maximises a lower bound on the mutual
information between the paired views, tighter with more negatives (B - 1 per
row), which is the claim the batch-size study tests.

Sigmoid (SigLIP, Zhai et al. 2023, eq. 1 / Algorithm 1): every pair is an
independent binary problem, z_ij = +1 on the diagonal and -1 elsewhere,
    loss = -(1/B) sum_ij log sigmoid(z_ij (s x_i . y_j + b)),
with s = exp(t), t initialised to ln 10 and b to -10 (the prior that almost all
pairs are negatives).

Over sub-batches (`clip.loss_sub_batch` = b', `sub_batch_loss`): the same loss within each run of
b' consecutive rows, averaged, so each positive meets b' - 1 negatives while the batch, the data and
the steps stay fixed: the negatives alone vary (experiments/studies/clip_negatives.py).

Sharded forms ("local loss + all-gather with gradient", as open_clip's
`local_loss=True, gather_with_grad=True`): the batch is split over the mesh
axes that carry it; inside `jax.shard_map` each device holds b = B/n rows,
all-gathers the text embeddings ([B, Z], small) and computes only its own b
rows of the logits ([b, B] instead of [B, B]). Image->text uses those rows;
text->image needs columns, whose logsumexp is combined across devices from
per-device partial sums of exp ([B] vectors), so one [b, B] matmul serves
both directions (open_clip gathers both modalities and computes two).
The per-device sums are `psum`med and divided by the global B. `all_gather`
is differentiable (its transpose is a reduce-scatter), so the gradients that
other devices' rows send to this device's embeddings arrive; the result is
the single-device loss exactly, in value and gradient (tests/test_clip_loss.py,
8 fake CPU devices). SigLIP needs only one direction: each pair (i, j) appears
once, in the row of image i.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def _xent_rows(logits_bB: jax.Array, labels_b: jax.Array) -> jax.Array:
    """Sum over rows of logsumexp(row) - row[label], in float32."""
    logits_bB = logits_bB.astype(jnp.float32)
    pos_b = jnp.take_along_axis(logits_bB, labels_b[:, None], axis=1)[:, 0]
    return jnp.sum(jax.nn.logsumexp(logits_bB, axis=1) - pos_b)


def softmax_loss(img_BZ: jax.Array, txt_BZ: jax.Array, logit_scale: jax.Array) -> tuple[jax.Array, dict]:
    """Symmetric InfoNCE over the whole batch (the oracle). `logit_scale` is t; s = exp(t)."""
    B = img_BZ.shape[0]
    logits_BB = jnp.exp(logit_scale) * jnp.einsum("BZ,CZ->BC", img_BZ, txt_BZ)  # C: a second batch index
    labels_B = jnp.arange(B)
    i2t = _xent_rows(logits_BB, labels_B) / B
    t2i = _xent_rows(logits_BB.T, labels_B) / B
    acc = jnp.mean((jnp.argmax(logits_BB, axis=1) == labels_B).astype(jnp.float32))
    return (i2t + t2i) / 2, {"clip/i2t_loss": i2t, "clip/t2i_loss": t2i, "clip/batch_i2t_accuracy": acc}


def sigmoid_loss(img_BZ: jax.Array, txt_BZ: jax.Array, logit_scale: jax.Array,
                 logit_bias: jax.Array) -> tuple[jax.Array, dict]:
    """SigLIP loss over the whole batch (the oracle)."""
    B = img_BZ.shape[0]
    logits_BB = jnp.exp(logit_scale) * jnp.einsum("BZ,CZ->BC", img_BZ, txt_BZ) + logit_bias
    z_BB = 2.0 * jnp.eye(B, dtype=jnp.float32) - 1.0
    loss = -jnp.sum(jax.nn.log_sigmoid(z_BB * logits_BB.astype(jnp.float32))) / B
    acc = jnp.mean((jnp.argmax(logits_BB, axis=1) == jnp.arange(B)).astype(jnp.float32))
    return loss, {"clip/batch_i2t_accuracy": acc}


def _local_labels(b: int, axes: tuple[str, ...]) -> jax.Array:
    # Device k of the flattened batch axes holds global rows k*b .. (k+1)*b - 1,
    # the order of a tiled all_gather over the same axes.
    return jax.lax.axis_index(axes) * b + jnp.arange(b)


def sharded_softmax_loss(img_BZ, txt_BZ, logit_scale, *, batch_axes: Sequence[str]) -> tuple[jax.Array, dict]:
    """`softmax_loss` with the batch sharded over `batch_axes` of the current mesh (`jax.set_mesh`)."""
    axes = tuple(batch_axes)

    def local(img_bZ, txt_bZ, t):
        b = img_bZ.shape[0]
        B = b * jax.lax.axis_size(axes)
        txt_all_BZ = jax.lax.all_gather(txt_bZ, axes, axis=0, tiled=True)
        labels_b = _local_labels(b, axes)
        logits_bB = (jnp.exp(t) * jnp.einsum("bZ,BZ->bB", img_bZ, txt_all_BZ)).astype(jnp.float32)
        i2t = jax.lax.psum(_xent_rows(logits_bB, labels_b), axes) / B   # my images vs all captions
        # Caption j's text->image logsumexp runs down column j, whose rows live on every device:
        # combine per-device partial sums of exp (stabilised by the global column max, a constant
        # for the gradient since logsumexp does not depend on it). One [b, B] matmul serves both
        # directions, where gathering the images too would need a second one.
        max_B = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits_bB, axis=0)), axes)
        sumexp_B = jax.lax.psum(jnp.sum(jnp.exp(logits_bB - max_B), axis=0), axes)
        pos_b = jnp.take_along_axis(logits_bB, labels_b[:, None], axis=1)[:, 0]
        t2i = (jnp.sum(jnp.log(sumexp_B) + max_B) - jax.lax.psum(jnp.sum(pos_b), axes)) / B
        hits = jnp.sum((jnp.argmax(logits_bB, axis=1) == labels_b).astype(jnp.float32))
        acc = jax.lax.psum(hits, axes) / B
        return (i2t + t2i) / 2, {"clip/i2t_loss": i2t, "clip/t2i_loss": t2i, "clip/batch_i2t_accuracy": acc}

    spec = P(axes)
    return jax.shard_map(local, in_specs=(spec, spec, P()), out_specs=P(), check_vma=True)(
        img_BZ, txt_BZ, logit_scale)


def sharded_sigmoid_loss(img_BZ, txt_BZ, logit_scale, logit_bias, *,
                         batch_axes: Sequence[str]) -> tuple[jax.Array, dict]:
    """`sigmoid_loss` with the batch sharded over `batch_axes` of the current mesh."""
    axes = tuple(batch_axes)

    def local(img_bZ, txt_bZ, t, bias):
        b = img_bZ.shape[0]
        B = b * jax.lax.axis_size(axes)
        txt_all_BZ = jax.lax.all_gather(txt_bZ, axes, axis=0, tiled=True)
        logits_bB = jnp.exp(t) * jnp.einsum("bZ,BZ->bB", img_bZ, txt_all_BZ) + bias
        labels_b = _local_labels(b, axes)
        z_bB = jnp.where(jnp.arange(B)[None, :] == labels_b[:, None], 1.0, -1.0)
        loss = jax.lax.psum(-jnp.sum(jax.nn.log_sigmoid(z_bB * logits_bB.astype(jnp.float32))), axes) / B
        hits = jnp.sum((jnp.argmax(logits_bB, axis=1) == labels_b).astype(jnp.float32))
        return loss, {"clip/batch_i2t_accuracy": jax.lax.psum(hits, axes) / B}

    spec = P(axes)
    return jax.shard_map(local, in_specs=(spec, spec, P(), P()), out_specs=P(), check_vma=True)(
        img_BZ, txt_BZ, logit_scale, logit_bias)


def contrastive_loss(kind: str, img_BZ, txt_BZ, logit_scale, logit_bias=None, *,
                     batch_axes: Sequence[str] | None = None, sub_batch: int = 0) -> tuple[jax.Array, dict]:
    """Dispatch by `clip.loss`; sharded when `batch_axes` names mesh axes the batch is split over;
    within sub-batches of `sub_batch` rows when that is > 0 and smaller than the batch."""
    if sub_batch and sub_batch < img_BZ.shape[0]:
        return sub_batch_loss(kind, img_BZ, txt_BZ, logit_scale, logit_bias, sub_batch=sub_batch)
    if kind == "softmax":
        if batch_axes:
            return sharded_softmax_loss(img_BZ, txt_BZ, logit_scale, batch_axes=batch_axes)
        return softmax_loss(img_BZ, txt_BZ, logit_scale)
    if kind == "sigmoid":
        if batch_axes:
            return sharded_sigmoid_loss(img_BZ, txt_BZ, logit_scale, logit_bias, batch_axes=batch_axes)
        return sigmoid_loss(img_BZ, txt_BZ, logit_scale, logit_bias)
    raise ValueError(f"clip.loss={kind!r} must be 'softmax' or 'sigmoid'")


def sub_batch_loss(kind: str, img_BZ, txt_BZ, logit_scale, logit_bias=None, *, sub_batch: int) -> tuple[jax.Array, dict]:
    """The contrastive loss within each of the B / b' consecutive sub-batches of `sub_batch` = b' rows,
    averaged: row i's negatives are the other b' - 1 rows of its own sub-batch only.

    Every embedding still comes from (and every gradient still goes to) the same batch of B pairs, so
    at a fixed batch and number of steps `sub_batch` varies only the negatives each positive meets
    (the number the InfoNCE bound depends on), not the data, the steps or the gradient noise of the
    towers. Sub-batch g is rows g*b' .. (g+1)*b' - 1. With b' = B it is the whole-batch loss.
    Each sub-batch's loss is the oracle's (`softmax_loss` / `sigmoid_loss`); the mean of equal-sized
    sub-batch means is the mean over all rows. (Sharding: plain jnp; XLA partitions the [G, b', b']
    logits over the sub-batch axis, so no shard_map.)
    """
    B, Z = img_BZ.shape
    if sub_batch <= 0 or B % sub_batch:
        raise ValueError(f"clip.loss_sub_batch={sub_batch} must be a positive divisor of the batch {B}")
    img_GbZ = img_BZ.reshape(B // sub_batch, sub_batch, Z)   # [G, b', Z]: sub-batch g holds rows g*b'..
    txt_GbZ = txt_BZ.reshape(B // sub_batch, sub_batch, Z)
    if kind == "softmax":
        per_group = jax.vmap(lambda i, t: softmax_loss(i, t, logit_scale))(img_GbZ, txt_GbZ)
    elif kind == "sigmoid":
        per_group = jax.vmap(lambda i, t: sigmoid_loss(i, t, logit_scale, logit_bias))(img_GbZ, txt_GbZ)
    else:
        raise ValueError(f"clip.loss={kind!r} must be 'softmax' or 'sigmoid'")
    loss_G, metrics_G = per_group
    return jnp.mean(loss_G), {k: jnp.mean(v) for k, v in metrics_G.items()}


def masked_loss(kind: str, img_BZ, txt_BZ, logit_scale, logit_bias, weights_B) -> jax.Array:
    """Sum over the real rows (weight 1) of their loss terms, padded rows (weight 0) removed from
    both the queries and the negatives: for evaluation batches padded at the end. With all
    weights 1 it is B times `softmax_loss` / `sigmoid_loss`."""
    w_B = weights_B.astype(jnp.float32)
    sim_BB = jnp.exp(logit_scale) * jnp.einsum("BZ,CZ->BC", img_BZ, txt_BZ).astype(jnp.float32)
    if kind == "sigmoid":
        logits_BB = sim_BB + logit_bias
        z_BB = 2.0 * jnp.eye(w_B.shape[0], dtype=jnp.float32) - 1.0
        return -jnp.sum(jax.nn.log_sigmoid(z_BB * logits_BB) * w_B[:, None] * w_B[None, :])
    keep_BB = (w_B[:, None] * w_B[None, :]) > 0
    neg_inf = jnp.finfo(jnp.float32).min
    masked_BB = jnp.where(keep_BB, sim_BB, neg_inf)
    pos_B = jnp.diagonal(sim_BB)
    i2t_B = jax.nn.logsumexp(masked_BB, axis=1) - pos_B
    t2i_B = jax.nn.logsumexp(masked_BB, axis=0) - pos_B
    # where, not a product: a padded row's logsumexp over nothing is not finite.
    return jnp.sum(jnp.where(w_B > 0, 0.5 * (i2t_B + t2i_B), 0.0))
