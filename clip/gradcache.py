"""Gradient accumulation for a contrastive loss that keeps every negative (GradCache).

The contrastive loss couples all rows of a batch, so accumulating the mean of micro-batch losses
silently changes the objective: each row meets only its micro-batch's negatives. GradCache
(Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup",
sec. 3.2; open_clip's `accum_freq` does the same) splits the step into three passes:

1. embed every micro-batch with the towers, keeping no activations for a backward pass;
2. compute the whole batch's loss over the cached embeddings [B, Z] and its gradient with respect
   to the embeddings (and to the parameters the loss reads directly: the logit scale and bias);
3. for each micro-batch, run the towers again and pull its rows of the embedding gradient back
   through them (a VJP), summing the parameter gradients.

By the chain rule, dL/dθ = Σ_a (∂e_a/∂θ)^T dL/de_a + ∂L/∂θ|_e, which is what the passes compute,
so the loss and gradient are the unaccumulated ones up to float reassociation
(tests/test_clip_accumulation.py). Memory: one micro-batch's activations plus [B, Z] embeddings;
cost: one extra forward pass of the towers.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

# towers(params, micro_batch, i) -> ((img_bZ, txt_bZ, extra_loss), aux_metrics)
Towers = Callable[[Any, Any, jax.Array], tuple[tuple[jax.Array, jax.Array, jax.Array], dict]]
# loss(params, img_BZ, txt_BZ) -> (loss, metrics)
Loss = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, dict]]


def gradcache_value_and_grad(towers: Towers, loss: Loss, params, micro_batches) -> tuple[tuple, Any, dict]:
    """((contrastive loss, its metrics), grads, {"extra": mean extra loss, **mean aux metrics}).

    `micro_batches`: arrays [A, b, ...]; micro-batch a holds rows a*b .. (a+1)*b - 1 of the batch, so
    the cached [B, Z] embeddings are in the batch's own row order (and a loss over sub-batches groups
    the same rows as without accumulation). `extra` is a per-micro-batch additive loss (e.g. the
    towers' auxiliary losses): its gradient is that of its mean over micro-batches, like the loop's
    default accumulation. The grads are of contrastive loss + mean extra.
    """
    A = jax.tree.leaves(micro_batches)[0].shape[0]
    idx_A = jnp.arange(A)

    def embed(_, xs):  # 1. forward only: nothing here is differentiated
        micro, i = xs
        return None, towers(jax.lax.stop_gradient(params), micro, i)

    _, ((img_AbZ, txt_AbZ, extra_A), aux_A) = jax.lax.scan(embed, None, (micro_batches, idx_A))
    img_BZ = img_AbZ.reshape(-1, img_AbZ.shape[-1])  # [A, b, Z] -> [B, Z]: row a*b + j = micro a's row j
    txt_BZ = txt_AbZ.reshape(-1, txt_AbZ.shape[-1])

    # 2. the whole batch's loss; `params` carries what the loss reads directly (logit scale, bias)
    (value, metrics), (grads, g_img_BZ, g_txt_BZ) = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
        params, img_BZ, txt_BZ)

    def backprop(acc, xs):  # 3. the cached embedding gradients through the towers, one micro-batch at a time
        micro, i, g_img_bZ, g_txt_bZ = xs
        _, vjp, _ = jax.vjp(lambda p: towers(p, micro, i), params, has_aux=True)
        (g,) = vjp((g_img_bZ, g_txt_bZ, jnp.ones((), extra_A.dtype) / A))
        return jax.tree.map(jnp.add, acc, g), None

    grads, _ = jax.lax.scan(backprop, grads, (micro_batches, idx_A, g_img_BZ.reshape(img_AbZ.shape),
                                              g_txt_BZ.reshape(txt_AbZ.shape)))
    extras = {"extra": jnp.mean(extra_A), **jax.tree.map(lambda x: jnp.mean(x, axis=0), aux_A)}
    return (value, metrics), grads, extras
