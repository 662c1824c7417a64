"""CLIP gradient accumulation keeps every negative (GradCache: clip/gradcache.py, used by
`CLIPTask.accumulate`): over 4 micro-batches the loss and gradient equal the unaccumulated ones, for
the softmax and sigmoid losses, a fixed temperature and the loss over sub-batches (small towers, the
math alone), and the train step with the real towers reports the whole batch's loss."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip import loss as closs
from clip.gradcache import gradcache_value_and_grad
from clip.model import l2_normalize
from experiments.configs import clip_shapes
from trainer import loop

A, B, X, Z = 4, 16, 6, 8  # micro-batches, batch, input width, joint width


def _params(kind):
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"img_XZ": jax.random.normal(k1, (X, Z)), "txt_XZ": jax.random.normal(k2, (X, Z)),
            "w_X": jnp.linspace(-1.0, 1.0, X),  # an auxiliary-loss weight, to check that path too
            "t": jnp.float32(math.log(1 / 0.07) if kind == "softmax" else math.log(10.0)), "b": jnp.float32(-2.0)}


def _batch():
    k1, k2 = jax.random.split(jax.random.key(1))
    x = jax.random.normal(k1, (B, X))
    return {"x": x, "y": x + 0.7 * jax.random.normal(k2, (B, X))}  # paired views: correlated


def _towers(p, micro):
    """Two nonlinear towers to unit embeddings, and a per-micro-batch auxiliary loss."""
    img = l2_normalize(jnp.tanh(micro["x"]) @ p["img_XZ"])
    txt = l2_normalize(jnp.tanh(micro["y"]) @ p["txt_XZ"])
    extra = 0.1 * jnp.mean(jnp.square(micro["x"] @ p["w_X"]))
    return img, txt, extra


def _loss(kind, fixed_t, sub_batch):
    def loss(p, img, txt):
        t = jax.lax.stop_gradient(p["t"]) if fixed_t else p["t"]
        return closs.contrastive_loss(kind, img, txt, t, p["b"] if kind == "sigmoid" else None, sub_batch=sub_batch)
    return loss


@pytest.mark.parametrize("kind,fixed_t,sub_batch", [("softmax", False, 0), ("sigmoid", False, 0), ("softmax", True, 8)])
def test_gradcache_equals_the_whole_batch_in_loss_and_gradient(kind, fixed_t, sub_batch):
    params, batch, loss = _params(kind), _batch(), _loss(kind, fixed_t, sub_batch)

    def whole(p):
        img, txt, extra = _towers(p, batch)
        value, metrics = loss(p, img, txt)
        return value + extra, (value, metrics)

    def accumulated(p):
        micro = jax.tree.map(lambda x: x.reshape(A, -1, *x.shape[1:]), batch)
        towers = lambda q, m, i: (_towers(q, m), {"i": jnp.float32(i)})  # noqa: E731
        (value, metrics), grads, extras = gradcache_value_and_grad(towers, loss, p, micro)
        # What the loop's default would optimise: the mean of the micro-batches' own losses.
        naive = jnp.mean(jax.vmap(lambda m: loss(p, *_towers(p, m)[:2])[0])(micro))
        return value, metrics, grads, extras, naive

    (total, (value, metrics)), grads = jax.jit(jax.value_and_grad(whole, has_aux=True))(params)
    a_value, a_metrics, a_grads, extras, naive = jax.jit(accumulated)(params)
    # float32; only the order of the sums differs.
    np.testing.assert_allclose(float(a_value), float(value), rtol=1e-6)
    np.testing.assert_allclose(float(a_value + extras["extra"]), float(total), rtol=1e-6)
    np.testing.assert_allclose(float(extras["i"]), (A - 1) / 2)  # aux metrics: the mean over micro-batches
    for k in metrics:
        np.testing.assert_allclose(float(a_metrics[k]), float(metrics[k]), rtol=1e-6, err_msg=k)
    for k in params:
        np.testing.assert_allclose(np.asarray(a_grads[k]), np.asarray(grads[k]), rtol=1e-5,
                                   atol=1e-6 * float(np.max(np.abs(grads[k]))), err_msg=k)
        assert np.any(np.asarray(grads[k]) != 0) or (k == "t" and fixed_t) or (k == "b" and kind == "softmax"), k
    if fixed_t:
        assert float(a_grads["t"]) == 0.0  # a fixed temperature gets no update
    # The check could fail: each micro-batch's own loss (3 negatives per row) is another objective.
    assert abs(float(naive) - float(value)) > 0.02 * abs(float(value))


@pytest.mark.slow
def test_train_step_accumulation_reports_the_whole_batch_loss_and_gradient_norm(devices):
    """The real towers through the loop's train step, with a fixed temperature and sub-batches of 8 (so
    micro-batches of 4 must not be the groups): A = 4 equals A = 1, and the fixed scale never moves."""
    got = {}
    for accum in (1, A):
        c = clip_shapes.get_config("smoke")  # batch 16
        c.optim.accum_steps = accum
        c.clip.fixed_temperature, c.clip.loss_sub_batch = 0.2, 8
        s = loop.setup(c, devices[:1])
        with jax.set_mesh(s.mesh):
            state = loop.init_state(s)
            b = s.task.train_batch(0)
            state, metrics = loop.jit_train_step(s, b)(state, loop.to_global(b, s.batch_shardings))
        got[accum] = [float(metrics[k]) for k in ("train/loss", "train/clip/batch_i2t_accuracy", "train/grad_norm")]
        assert float(state["params"]["logit_scale"]) == np.float32(math.log(5.0))
    np.testing.assert_allclose(got[A], got[1], rtol=1e-5)
