"""Attention: the oracle against JAX's own attention, every path against the oracle."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention.dense import DenseAttention, dense_attention
from attention.reference import reference_attention
from attention.rope import apply_rope
from experiments.configs.defaults import base_config

TOL = {jnp.float32: dict(atol=2e-5, rtol=2e-5), jnp.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def qkv(B=2, T=16, S=16, N=4, K=2, H=8, dtype=jnp.float32, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (B, T, N, H), dtype), jax.random.normal(kk, (B, S, K, H), dtype),
            jax.random.normal(kv, (B, S, K, H), dtype))


def packed_segments(B, T):
    """Two or three packed sequences per row, then padding (id 0)."""
    seg = np.zeros((B, T), np.int32)
    seg[0, :5], seg[0, 5:12], seg[0, 12:] = 1, 2, 3
    seg[1, :9], seg[1, 9:13] = 1, 2  # 3 padding positions at the end
    return jnp.asarray(seg)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("K", [pytest.param(4, marks=pytest.mark.slow), 2, pytest.param(1, marks=pytest.mark.slow)])
def test_reference_matches_jax_dot_product_attention(causal, K):
    q, k, v = qkv(K=K)
    lengths = jnp.array([16, 11])
    ours = reference_attention(q, k, v, causal=causal, kv_lengths_B=lengths)
    theirs = jax.nn.dot_product_attention(q, k, v, is_causal=causal, key_value_seq_lengths=lengths,
                                          implementation="xla")
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=2e-5)


def test_reference_segment_ids_match_jax_with_dense_mask():
    q, k, v = qkv()
    seg = packed_segments(2, 16)
    mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    mask = mask & jnp.tril(jnp.ones((16, 16), bool))
    ours = reference_attention(q, k, v, causal=True, q_segment_ids_BT=seg, kv_segment_ids_BS=seg)
    theirs = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="xla")
    valid = np.asarray(seg != 0)  # jax leaves fully masked rows undefined; ours are zero
    np.testing.assert_allclose(np.asarray(ours)[valid], np.asarray(theirs)[valid], atol=2e-5, rtol=2e-5)
    np.testing.assert_array_equal(np.asarray(ours)[~valid], 0.0)


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", ["plain", "causal", "lengths", "packed", "gqa_packed_causal", "mqa"])
def test_dense_xla_matches_reference(dtype, case):
    K = {"gqa_packed_causal": 2, "mqa": 1}.get(case, 4)
    q, k, v = qkv(K=K, dtype=dtype)
    seg = packed_segments(2, 16)
    kw = {
        "plain": {}, "causal": dict(causal=True), "lengths": dict(kv_lengths_B=jnp.array([7, 16])),
        "packed": dict(q_segment_ids_BT=seg, kv_segment_ids_BS=seg),
        "gqa_packed_causal": dict(causal=True, q_segment_ids_BT=seg, kv_segment_ids_BS=seg),
        "mqa": dict(causal=True),
    }[case]
    out = dense_attention(q, k, v, impl="xla", **kw)
    ref = reference_attention(q, k, v, **kw)
    assert out.dtype == dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), **TOL[dtype])


def test_window_mask_matches_jax_local_window():
    q, k, v = qkv(K=2)
    ours = reference_attention(q, k, v, causal=True, window=(3, 0))
    theirs = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=(3, 0), implementation="xla")
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=2e-5)


def test_unknown_impl_is_rejected():
    q, k, v = qkv()
    with pytest.raises(KeyError, match="attention_impl='nope'"):
        dense_attention(q, k, v, impl="nope")


def test_rope_depends_only_on_relative_position():
    x = jax.random.normal(jax.random.key(1), (1, 2, 1, 8))
    pos_a = jnp.array([[3, 7]])
    pos_b = pos_a + 11
    qa, qb = apply_rope(x, pos_a), apply_rope(x, pos_b)
    dot_a = jnp.sum(qa[0, 0] * qa[0, 1])
    dot_b = jnp.sum(qb[0, 0] * qb[0, 1])
    np.testing.assert_allclose(dot_a, dot_b, rtol=1e-5)
    assert not np.allclose(apply_rope(x, pos_a), x)


def layer_cfg(**kw):
    c = base_config().model
    c.update(d_model=32, n_heads=4, n_kv_heads=2, n_layers=1, **kw)
    return c


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("causal", [True, False])
def test_dense_layer_matches_reference_on_packed_gqa(dtype, causal):
    cfg = layer_cfg(dtype=dtype, causal=causal)
    layer = DenseAttention(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (2, 16, 32))
    seg = packed_segments(2, 16)
    # Positions restart in every packed sequence, as a packing data pipeline emits them.
    pos = jnp.asarray(np.concatenate([np.r_[0:5, 0:7, 0:4], np.r_[0:9, 0:4, 0:3]]).reshape(2, 16))
    y, _ = layer(x, positions_BT=pos, segment_ids_BT=seg)
    dt = jnp.float32 if dtype == "float32" else jnp.bfloat16
    xd = x.astype(dt)
    q = apply_rope(jnp.einsum("BTD,DNH->BTNH", xd, layer.wq_DNH[...].astype(dt)), pos)
    k = apply_rope(jnp.einsum("BTD,DKH->BTKH", xd, layer.wk_DKH[...].astype(dt)), pos)
    v = jnp.einsum("BTD,DKH->BTKH", xd, layer.wv_DKH[...].astype(dt))
    o = reference_attention(q, k, v, causal=causal, q_segment_ids_BT=seg, kv_segment_ids_BS=seg,
                            q_positions_BT=pos, kv_positions_BS=pos)
    want = jnp.einsum("BTNH,NHD->BTD", o, layer.wo_NHD[...].astype(dt))
    tol = TOL[dt]
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(want, np.float32), **tol)


@pytest.mark.slow
def test_packed_sequences_do_not_see_each_other():
    cfg = layer_cfg(causal=False)
    layer = DenseAttention(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (1, 8, 32))
    seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2]])
    y1, _ = layer(x, segment_ids_BT=seg)
    x2 = x.at[0, 5].add(10.0)  # perturb segment 2 only
    y2, _ = layer(x2, segment_ids_BT=seg)
    np.testing.assert_allclose(y1[0, :3], y2[0, :3], atol=1e-6)
    assert not np.allclose(y1[0, 3:], y2[0, 3:])
