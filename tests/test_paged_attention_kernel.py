"""Pallas paged-attention decode kernel against the pure-jnp gather reference: interpret mode on CPU, Triton on a GPU
(`interpret=None`, so benchmarks/gpu_kernels.sh runs these compiled); its Triton lowering is checked on CPU too."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inference.paged_attention import paged_decode_attention_ref
from kernels.paged_attention.kernel import paged_decode_attention


@pytest.mark.parametrize("N, K, bs, dtype, tol", [
    (4, 4, 8, jnp.float32, 1e-5),
    (8, 2, 16, jnp.float32, 1e-5),   # grouped-query heads
    (4, 1, 8, jnp.bfloat16, 2e-2),   # multi-query, bfloat16 pools
])
def test_kernel_matches_the_gather_reference(N, K, bs, dtype, tol):
    rng = np.random.default_rng(0)
    B, H, L, nb = 4, 16, 6, 30
    k_pool = jnp.asarray(rng.normal(size=(nb + 1, bs, K, H)), dtype)
    v_pool = jnp.asarray(rng.normal(size=(nb + 1, bs, K, H)), dtype)
    tables = jnp.asarray(rng.permutation(nb)[: B * L].reshape(B, L), jnp.int32)
    lengths = jnp.array([1, bs, bs + 3, L * bs], jnp.int32)  # one token, a full block, a partial one, all
    q = jnp.asarray(rng.normal(size=(B, N, H)), dtype)
    got = paged_decode_attention(q, k_pool, v_pool, tables, lengths, interpret=None)
    want = jax.jit(paged_decode_attention_ref)(q, k_pool, v_pool, tables, lengths)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tol, rtol=tol)


def test_kernel_ignores_blocks_past_the_length_and_idle_rows_are_finite():
    rng = np.random.default_rng(1)
    k_pool = jnp.asarray(rng.normal(size=(9, 8, 2, 16)), jnp.float32)
    v_pool = jnp.asarray(rng.normal(size=(9, 8, 2, 16)), jnp.float32)
    tables = jnp.array([[0, 1, 2, 3], [4, 5, 8, 8]], jnp.int32)
    q = jnp.asarray(rng.normal(size=(2, 4, 16)), jnp.float32)
    lengths = jnp.array([10, 0], jnp.int32)
    out = paged_decode_attention(q, k_pool, v_pool, tables, lengths, interpret=None)
    # Garbage in blocks 2, 3 (past row 0's 10 tokens) must not change row 0.
    poisoned = k_pool.at[2:4].set(1e4)
    out2 = paged_decode_attention(q, poisoned, v_pool.at[2:4].set(jnp.nan), tables, lengths, interpret=None)
    np.testing.assert_array_equal(out[0], out2[0])
    assert np.isfinite(np.asarray(out)).all()


def test_a_row_of_length_0_is_zeros_in_every_implementation():
    """The cache never makes such a row today; if it ever does, the three paths must agree (zeros)."""
    from inference.paged_attention import PAGED_IMPLS

    rng = np.random.default_rng(2)
    k_pool = jnp.asarray(rng.normal(size=(9, 8, 2, 16)), jnp.float32)
    v_pool = jnp.asarray(rng.normal(size=(9, 8, 2, 16)), jnp.float32)
    tables = jnp.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 8, 8, 8]], jnp.int32)
    q = jnp.asarray(rng.normal(size=(3, 4, 16)), jnp.float32)
    outs = {name: np.asarray(jax.jit(fn)(q, k_pool, v_pool, tables, jnp.array([10, 0, 0], jnp.int32)))
            for name, fn in PAGED_IMPLS.items() if name != "pallas"}
    outs["pallas"] = np.asarray(paged_decode_attention(q, k_pool, v_pool, tables, jnp.array([10, 0, 0], jnp.int32),
                                                       interpret=None))
    for name, out in outs.items():
        np.testing.assert_array_equal(out[1:], 0.0, err_msg=name)
        np.testing.assert_allclose(out[0], outs["gather"][0], atol=1e-5, rtol=1e-5, err_msg=name)
        assert np.abs(out[0]).sum() > 0, name
    # All rows empty: the blocked path runs no chunk at all and must still give zeros, not 0/0.
    empty = jax.jit(PAGED_IMPLS["blocked"])(q, k_pool, v_pool, tables, jnp.zeros((3,), jnp.int32))
    np.testing.assert_array_equal(np.asarray(empty), 0.0)


@pytest.mark.slow
def test_engine_with_the_kernel_gives_the_contiguous_tokens():
    from conftest import contiguous_tokens, tiny_model

    from inference.scheduler import Engine, Request

    model = tiny_model()
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3], [2, 7]]
    want = contiguous_tokens(model, prompts, 8, 32)
    engine = Engine(model, num_blocks=12, block_size=8, max_batch=2, context=32, impl="pallas")
    got = engine.run([Request(i, p, 8) for i, p in enumerate(prompts)])
    assert [got[i] for i in range(3)] == want


def test_triton_lowering():
    """The GPU path lowers to Triton (not Mosaic GPU, which would stage the whole pools in shared memory)."""
    q = jnp.zeros((4, 8, 64), jnp.bfloat16)
    pool = jnp.zeros((30, 16, 2, 64), jnp.bfloat16)
    f = jax.jit(lambda q, k, v, t, n: paged_decode_attention(q, k, v, t, n, interpret=False))
    text = f.trace(q, pool, pool, jnp.zeros((4, 6), jnp.int32), jnp.full((4,), 20, jnp.int32)).lower(
        lowering_platforms=("cuda",)).as_text()
    assert "triton" in text.lower() and "mosaic" not in text.lower()
