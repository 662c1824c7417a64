"""CLIP losses: the formulas against plain numpy, and the sharded forms against the single-device
oracle in value and gradient on 8 fake CPU devices (float32 and bfloat16 embeddings)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from clip import loss as closs
from clip.model import l2_normalize


def embeddings(B=16, Z=8, seed=0, dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.key(seed))
    img = l2_normalize(jax.random.normal(k1, (B, Z)))
    txt = l2_normalize(img + 0.8 * jax.random.normal(k2, (B, Z)))  # correlated, like a trained model
    return img.astype(dtype), txt.astype(dtype)


def np_softmax_loss(img, txt, t):
    logits = math.exp(t) * np.asarray(img, np.float64) @ np.asarray(txt, np.float64).T
    def ce(L):
        m = L.max(1, keepdims=True)
        return np.mean(np.log(np.exp(L - m).sum(1)) + m[:, 0] - np.diag(L))
    return (ce(logits) + ce(logits.T)) / 2


def np_sigmoid_loss(img, txt, t, b):
    logits = math.exp(t) * np.asarray(img, np.float64) @ np.asarray(txt, np.float64).T + b
    z = 2 * np.eye(len(img)) - 1
    return -np.sum(np.log(1 / (1 + np.exp(-z * logits)))) / len(img)


@pytest.mark.slow
def test_losses_match_numpy_formulas():
    img, txt = embeddings()
    t = math.log(1 / 0.07)
    val, m = closs.softmax_loss(img, txt, jnp.float32(t))
    np.testing.assert_allclose(val, np_softmax_loss(img, txt, t), rtol=1e-5)
    assert set(m) == {"clip/i2t_loss", "clip/t2i_loss", "clip/batch_i2t_accuracy"}
    val, _ = closs.sigmoid_loss(img, txt, jnp.float32(math.log(10)), jnp.float32(-10.0))
    np.testing.assert_allclose(val, np_sigmoid_loss(img, txt, math.log(10), -10.0), rtol=1e-5)


def test_loss_over_sub_batches_is_the_mean_of_each_sub_batch_loss():
    img, txt = embeddings(B=16, Z=8)
    t, b = math.log(1 / 0.07), -2.0
    subs = [slice(g * 4, (g + 1) * 4) for g in range(4)]  # sub-batch g: rows 4g .. 4g + 3
    got, m = closs.contrastive_loss("softmax", img, txt, jnp.float32(t), sub_batch=4)
    np.testing.assert_allclose(got, np.mean([np_softmax_loss(img[s], txt[s], t) for s in subs]), rtol=1e-5)
    assert set(m) == {"clip/i2t_loss", "clip/t2i_loss", "clip/batch_i2t_accuracy"}
    got, _ = closs.contrastive_loss("sigmoid", img, txt, jnp.float32(t), jnp.float32(b), sub_batch=4)
    np.testing.assert_allclose(got, np.mean([np_sigmoid_loss(img[s], txt[s], t, b) for s in subs]), rtol=1e-5)
    # A sub-batch of the whole batch is the whole-batch loss.
    whole, _ = closs.contrastive_loss("softmax", img, txt, jnp.float32(t), sub_batch=16)
    np.testing.assert_allclose(whole, np_softmax_loss(img, txt, t), rtol=1e-5)
    with pytest.raises(ValueError, match="clip.loss_sub_batch=5 must be a positive divisor of the batch 16"):
        closs.sub_batch_loss("softmax", img, txt, jnp.float32(t), sub_batch=5)


def test_perfect_alignment_gives_low_softmax_loss_and_full_batch_accuracy():
    img, _ = embeddings()
    val, m = closs.softmax_loss(img, img, jnp.float32(math.log(100)))
    rand, _ = closs.softmax_loss(*embeddings(seed=3), jnp.float32(math.log(100)))
    assert float(val) < float(rand) and float(m["clip/batch_i2t_accuracy"]) == 1.0


MESHES = [((8,), ("data",), ("data",)), ((2, 4), ("data", "fsdp"), ("data", "fsdp"))]


@pytest.mark.parametrize("shape,names,batch_axes", MESHES)
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), pytest.param(jnp.bfloat16, 2e-2, marks=pytest.mark.slow)])
def test_sharded_loss_equals_single_device_in_value_and_gradient(devices, shape, names, batch_axes, kind, dtype, tol):
    mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)
    img, txt = embeddings(B=32, Z=16, dtype=dtype)
    t = jnp.float32(math.log(1 / 0.07) if kind == "softmax" else math.log(10))
    b = jnp.float32(-10.0)

    def single(img, txt, t, b):
        return closs.contrastive_loss(kind, img, txt, t, b)[0]

    def sharded(img, txt, t, b):
        return closs.contrastive_loss(kind, img, txt, t, b, batch_axes=batch_axes)[0]

    want, want_g = jax.jit(jax.value_and_grad(single, argnums=(0, 1, 2, 3)))(img, txt, t, b)
    with jax.set_mesh(mesh):
        spec = NamedSharding(mesh, P(batch_axes))
        img_s, txt_s = jax.device_put(img, spec), jax.device_put(txt, spec)
        got, got_g = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3)))(img_s, txt_s, t, b)
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=tol)
    for g, w in zip(got_g, want_g):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        # bfloat16 gradients round each element to 8 bits: compare at the scale of the largest one.
        scale = np.max(np.abs(w)) if dtype == jnp.bfloat16 else 1e-2
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * scale)
    if kind == "softmax":
        assert float(jnp.abs(want_g[3])) == 0.0  # no bias in the softmax loss


def test_sharded_metrics_match_single_device(devices):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,), devices=devices)
    img, txt = embeddings(B=32, Z=16)
    t = jnp.float32(2.0)
    _, want = closs.softmax_loss(img, txt, t)
    with jax.set_mesh(mesh):
        _, got = jax.jit(lambda a, b: closs.sharded_softmax_loss(a, b, t, batch_axes=("data",)))(img, txt)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_masked_eval_loss_drops_padded_rows(kind):
    img, txt = embeddings(B=12)
    t, b = jnp.float32(2.5), jnp.float32(-5.0)
    full = closs.masked_loss(kind, img, txt, t, b, jnp.ones(12))
    ref = closs.contrastive_loss(kind, img, txt, t, b)[0]
    np.testing.assert_allclose(full / 12, ref, rtol=1e-5)
    w = jnp.asarray([1.0] * 9 + [0.0] * 3)
    padded = closs.masked_loss(kind, img, txt, t, b, w)
    ref9 = closs.contrastive_loss(kind, img[:9], txt[:9], t, b)[0]
    np.testing.assert_allclose(padded / 9, ref9, rtol=1e-5)
