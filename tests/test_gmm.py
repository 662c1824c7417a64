"""Pallas grouped matmul (kernels/gmm) against jax.lax.ragged_dot, in interpret mode on CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kernels.gmm import GmmBlocks, gmm

BLOCKS = GmmBlocks(block_m=16, block_k=16, block_n=16)
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}
GROUPS = {
    "uneven_with_empty": [20, 0, 33, 7, 30],   # sums to M; an empty expert; groups straddle row tiles
    "one_expert_takes_all": [0, 0, 100, 0, 0],
    "rows_left_over": [5, 17, 0, 40, 1],       # sums to 63 < M: the remaining rows are zeros
    "all_empty": [0, 0, 0, 0, 0],
}


def rand(shape, dtype, seed):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(dtype)


def fwd_and_grads(f, lhs, rhs, dout):
    out, pullback = jax.vjp(f, lhs, rhs)
    return (out, *pullback(dout))


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])
@pytest.mark.parametrize("groups", [g if g == "uneven_with_empty" else pytest.param(g, marks=pytest.mark.slow)
                                    for g in sorted(GROUPS)])
def test_matches_ragged_dot(groups, dtype):
    M, D, F = 100, 48, 40  # none a tile multiple
    gs = jnp.array(GROUPS[groups], jnp.int32)
    lhs, rhs, dout = rand((M, D), dtype, 0), rand((len(gs), D, F), dtype, 1), rand((M, F), dtype, 2)
    got = jax.jit(lambda *a: fwd_and_grads(lambda l, r: gmm(l, r, gs, blocks=BLOCKS), *a))(lhs, rhs, dout)
    f32 = [x.astype(jnp.float32) for x in (lhs, rhs, dout)]
    want = jax.jit(lambda *a: fwd_and_grads(
        lambda l, r: jax.lax.ragged_dot(l, r, gs, precision=jax.lax.Precision.HIGHEST), *a))(*f32)
    for name, g, w in zip(("out", "dlhs", "drhs"), got, want):
        assert g.dtype == dtype and g.shape == w.shape, (name, g.dtype, g.shape)
        scale = max(1.0, float(jnp.max(jnp.abs(w))))
        np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=TOL[dtype] * scale, rtol=TOL[dtype],
                                   err_msg=name)


def test_group_sizes_are_dynamic_under_jit():
    M, D, F, E = 64, 32, 32, 4
    lhs, rhs = rand((M, D), jnp.float32, 0), rand((E, D, F), jnp.float32, 1)
    traces = []

    @jax.jit
    def f(gs):
        traces.append(1)
        return gmm(lhs, rhs, gs, blocks=BLOCKS)

    for gs in ([16, 16, 16, 16], [64, 0, 0, 0], [1, 2, 3, 58]):
        gs = jnp.array(gs, jnp.int32)
        np.testing.assert_allclose(f(gs), jax.lax.ragged_dot(lhs, rhs, gs, precision="highest"), atol=1e-5)
    assert len(traces) == 1  # one compilation for all group sizes


@pytest.mark.slow
def test_check_grads_numerically():
    gs = jnp.array([3, 0, 9, 4], jnp.int32)
    lhs, rhs = rand((16, 8), jnp.float32, 0), rand((4, 8, 12), jnp.float32, 1)
    check_grads(jax.jit(lambda l, r: gmm(l, r, gs, blocks=BLOCKS)), (lhs, rhs), order=1, modes=("rev",),
                atol=1e-2, rtol=1e-2)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="do not match"):
        gmm(jnp.zeros((8, 4)), jnp.zeros((2, 5, 3)), jnp.array([4, 4]))
    with pytest.raises(ValueError, match="block_m=24 must be a power of two"):
        gmm(jnp.zeros((8, 4)), jnp.zeros((2, 4, 3)), jnp.array([4, 4]), blocks=GmmBlocks(block_m=24))


def test_triton_lowering_forward_and_backward():
    def loss(lhs, rhs):
        out = gmm(lhs, rhs, jnp.array([100, 0, 60, 96], jnp.int32), interpret=False, backend="gpu")
        return jnp.sum(out.astype(jnp.float32))

    lhs, rhs = jnp.zeros((256, 128), jnp.bfloat16), jnp.zeros((4, 128, 384), jnp.bfloat16)
    text = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(lhs, rhs).lower(lowering_platforms=("cuda",)).as_text()
    assert "tgmm" in text and "gmm" in text.replace("tgmm", "")  # forward / d lhs kernel and d rhs kernel
