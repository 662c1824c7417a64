"""Zero-shot classification and image-text retrieval on unit embeddings (pure functions).

Zero-shot (CLIP paper, sec. 3.1.4): each class name goes through several prompt
templates ("a {}.", "a picture of a {}", ...); the text embeddings of one
class are averaged over templates and renormalised, and an image is assigned
the class whose embedding is nearest in cosine. Averaging templates is the
paper's "prompt ensembling" (+3.5% on ImageNet there).

Retrieval: recall@K in both directions, image -> text and text -> image, over
the gallery of one evaluation batch. Captions can repeat (two renders of "a
small red circle at the top" are different images with one caption), so a
retrieved item counts as correct when its caption group equals the query's,
as for data sets with several correct captions per image (COCO, Flickr30k).

All functions return sums (hits, counts) so evaluation batches add up.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clip.model import l2_normalize


def prompt_texts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Class-major list: class c, template k at index c * len(templates) + k."""
    return [t.format(c) for c in class_names for t in templates]


def class_embeddings(encode_text: Callable, tokens_XL: jax.Array, segment_ids_XL: jax.Array,
                     num_classes: int) -> jax.Array:
    """[C, Z] unit class embeddings: the template-averaged prompt embeddings, renormalised.

    `tokens_XL` holds the prompts of `prompt_texts` (X = classes * templates);
    `encode_text(tokens, segment_ids)` returns unit embeddings [X, Z].
    """
    emb_XZ = encode_text(tokens_XL, segment_ids_XL)
    emb_CKZ = emb_XZ.reshape(num_classes, -1, emb_XZ.shape[-1])  # K: templates
    return l2_normalize(jnp.mean(emb_CKZ, axis=1))


def zeroshot_hits(img_BZ: jax.Array, classes_CZ: jax.Array, labels_B: jax.Array, weights_B: jax.Array,
                  ks: Sequence[int] = (1, 5)) -> dict[str, jax.Array]:
    """{'top1': weighted hits, 'top5': ..., 'count': sum of weights}; k is capped at the class count."""
    return hits_from_scores(jnp.einsum("BZ,CZ->BC", img_BZ, classes_CZ), labels_B, weights_B, ks)


def hits_from_scores(scores_BC: jax.Array, labels_B: jax.Array, weights_B: jax.Array,
                     ks: Sequence[int] = (1, 5)) -> dict[str, jax.Array]:
    """Top-k hits of class scores (e.g. a subset of a classifier's columns per image)."""
    C = scores_BC.shape[1]
    # Rank of the true class = number of classes scoring strictly higher (ties favour the truth
    # only when exactly tied, which random float scores almost never are).
    true_B = jnp.take_along_axis(scores_BC, labels_B[:, None], axis=1)
    rank_B = jnp.sum(scores_BC > true_B, axis=1)
    w_B = weights_B.astype(jnp.float32)
    out = {f"top{k}": jnp.sum((rank_B < min(k, C)).astype(jnp.float32) * w_B) for k in ks}
    out["count"] = jnp.sum(w_B)
    return out


def _recall_one_way(sim_QG: jax.Array, q_group_Q, g_group_G, q_weights_Q, g_weights_G, ks) -> dict:
    # Padded gallery rows can never be retrieved.
    sim_QG = jnp.where(g_weights_G[None, :] > 0, sim_QG, -jnp.inf)
    k_max = min(max(ks), sim_QG.shape[1])
    _, top_QK = jax.lax.top_k(sim_QG, k_max)
    match_QK = (g_group_G[top_QK] == q_group_Q[:, None]).astype(jnp.float32)
    first_hit_Q = jnp.cumsum(match_QK, axis=1)  # > 0 from the first correct item on
    w_Q = q_weights_Q.astype(jnp.float32)
    return {k: jnp.sum((first_hit_Q[:, min(k, k_max) - 1] > 0).astype(jnp.float32) * w_Q) for k in ks}


def retrieval_hits(img_BZ: jax.Array, txt_BZ: jax.Array, group_B: jax.Array, weights_B: jax.Array,
                   ks: Sequence[int] = (1, 5, 10)) -> dict[str, jax.Array]:
    """Recall@k hit sums, image->text (`i2t_recall_at_k`) and text->image (`t2i_recall_at_k`), and `count`."""
    sim_BB = jnp.einsum("BZ,CZ->BC", img_BZ, txt_BZ)
    i2t = _recall_one_way(sim_BB, group_B, group_B, weights_B, weights_B, ks)
    t2i = _recall_one_way(sim_BB.T, group_B, group_B, weights_B, weights_B, ks)
    out = {f"i2t_recall_at_{k}": v for k, v in i2t.items()}
    out.update({f"t2i_recall_at_{k}": v for k, v in t2i.items()})
    out["count"] = jnp.sum(weights_B.astype(jnp.float32))
    return out


def caption_groups(captions: Sequence[str]) -> np.ndarray:
    """int32 id per caption, equal ids for equal captions (the retrieval ground truth)."""
    ids: dict[str, int] = {}
    return np.asarray([ids.setdefault(c, len(ids)) for c in captions], np.int32)
