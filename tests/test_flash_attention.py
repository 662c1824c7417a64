"""Pallas flash attention (kernels/flash_attention) against the oracle, in interpret mode on CPU.

Forward and all three gradients, float32 and bfloat16, over causal and not,
windows, packed segments, key lengths, explicit positions, GQA, and lengths
that are not block multiples (1, 127, 128, 129, 1000). Small tiles make the
short lengths span several blocks, so the block-skipping bounds are
exercised; a NaN planted in blocks outside every band proves they are never
read. The GPU (Triton) lowering of all three kernels is checked too: it
runs on a CPU-only machine, though only a GPU can compile and run it.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from attention.reference import reference_attention
from kernels.flash_attention import BlockSizes, flash_attention

SMALL = BlockSizes(block_q=32, block_k=32, block_q_dkv=32, block_k_dkv=32, block_q_dq=32, block_k_dq=32)
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def rand(shape, dtype, seed):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(dtype)


def packed(B, T, seed=0):
    """Segment ids of 1..4 packed sequences per row, with trailing padding (id 0) on odd rows."""
    rng = np.random.default_rng(seed)
    out = np.zeros((B, T), np.int32)
    for b in range(B):
        cuts = np.sort(rng.choice(np.arange(1, T), size=min(3, T - 1), replace=False)) if T > 1 else []
        ids = np.searchsorted(cuts, np.arange(T), side="right") + 1
        if b % 2 and T > 4:
            ids[-T // 4:] = 0
        out[b] = ids
    return jnp.asarray(out)


def fwd_and_grads(attn, q, k, v, do):
    out, pullback = jax.vjp(attn, q, k, v)
    return (out, *pullback(do))


def check_against_oracle(B, T, S, N, K, H, dtype, blocks=SMALL, seed=0, **mask):
    q, k, v = rand((B, T, N, H), dtype, seed), rand((B, S, K, H), dtype, seed + 1), rand((B, S, K, H), dtype, seed + 2)
    do = rand((B, T, N, H), dtype, seed + 3)
    got = jax.jit(lambda *a: fwd_and_grads(lambda q, k, v: flash_attention(q, k, v, block_sizes=blocks, **mask), *a))(
        q, k, v, do)
    # The oracle runs in float32 on the same (rounded) inputs: the truth the bf16 kernel approximates.
    f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
    want = jax.jit(lambda *a: fwd_and_grads(lambda q, k, v: reference_attention(q, k, v, **mask), *a))(*f32)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.dtype == dtype, (name, g.dtype)
        scale = max(1.0, float(jnp.max(jnp.abs(w))))
        np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=TOL[dtype] * scale, rtol=TOL[dtype],
                                   err_msg=name)


CASES = {
    "len1_gqa_causal": dict(B=2, T=1, S=1, N=2, K=1, H=16, causal=True),
    "len127_gqa": dict(B=2, T=127, S=127, N=4, K=2, H=16),
    "len128_causal": dict(B=2, T=128, S=128, N=2, K=2, H=16, causal=True),
    "len129_causal_window": dict(B=1, T=129, S=129, N=4, K=1, H=16, causal=True, window=(40, None)),
    "window_both_sides": dict(B=1, T=200, S=200, N=2, K=2, H=8, window=(17, 33)),
    "cross_lengths": dict(B=2, T=70, S=130, N=2, K=1, H=16),
}


@pytest.mark.parametrize("case", [c if c == "len129_causal_window" else pytest.param(c, marks=pytest.mark.slow)
                                  for c in sorted(CASES)])
def test_matches_oracle_float32(case):
    check_against_oracle(dtype=jnp.float32, **CASES[case])


@pytest.mark.slow
def test_packed_segments_and_key_lengths():
    B, T = 3, 129
    seg = packed(B, T)
    check_against_oracle(B, T, T, 4, 2, 16, jnp.float32, causal=True, q_segment_ids_BT=seg, kv_segment_ids_BS=seg)
    check_against_oracle(B, T, T, 2, 2, 16, jnp.float32, q_segment_ids_BT=seg, kv_segment_ids_BS=seg,
                         kv_lengths_B=jnp.array([129, 60, 0]))  # length 0: every query sees nothing -> zeros


@pytest.mark.slow
def test_explicit_positions_like_a_decode_step():
    # 3 new queries at positions 40..42 (of 3 rows with different cache fills) over a 64-slot cache.
    B, T, S = 3, 3, 64
    lengths = jnp.array([43, 20, 5])
    q_pos = lengths[:, None] - T + jnp.arange(T)[None]
    k_pos = jnp.broadcast_to(jnp.arange(S), (B, S))
    check_against_oracle(B, T, S, 4, 2, 16, jnp.float32, causal=True, q_positions_BT=q_pos, kv_positions_BS=k_pos,
                         kv_lengths_B=lengths, window=(8, None))


@pytest.mark.slow
def test_length_1000_causal_and_windowed():
    big = BlockSizes(block_q=256, block_k=256, block_q_dkv=256, block_k_dkv=256, block_q_dq=256, block_k_dq=256)
    check_against_oracle(1, 1000, 1000, 2, 1, 16, jnp.float32, blocks=big, causal=True)
    check_against_oracle(1, 1000, 1000, 2, 2, 8, jnp.float32, blocks=SMALL, window=(64, 64))


@pytest.mark.slow
@pytest.mark.parametrize("case", [
    dict(B=2, T=128, S=128, N=2, K=2, H=32, causal=True),
    dict(B=2, T=129, S=129, N=4, K=2, H=16, window=(24, 24)),
    dict(B=2, T=127, S=127, N=2, K=1, H=16, causal=True, segments=True),
])
def test_matches_oracle_bfloat16(case):
    case = dict(case)
    if case.pop("segments", False):
        seg = packed(case["B"], case["T"])
        case.update(q_segment_ids_BT=seg, kv_segment_ids_BS=seg)
    check_against_oracle(dtype=jnp.bfloat16, **case)


@pytest.mark.slow
def test_check_grads_numerically():
    q, k, v = rand((1, 20, 2, 8), jnp.float32, 0), rand((1, 20, 1, 8), jnp.float32, 1), rand((1, 20, 1, 8), jnp.float32, 2)
    seg = jnp.array([[1] * 12 + [2] * 8])
    blocks = BlockSizes(16, 16, 16, 16, 16, 16)
    f = jax.jit(lambda q, k, v: flash_attention(q, k, v, causal=True, window=(9, None), q_segment_ids_BT=seg,
                                                block_sizes=blocks))
    check_grads(f, (q, k, v), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


@pytest.mark.slow
def test_skipped_blocks_are_never_read():
    # Causal window of 16 with 32-wide tiles: query blocks 2, 3 never visit key block 0, and key blocks 1..3
    # never visit query block 0. NaNs planted there must not reach those outputs or gradients.
    B, T, N, H = 1, 128, 2, 16
    q, k, v = rand((B, T, N, H), jnp.float32, 0), rand((B, T, N, H), jnp.float32, 1), rand((B, T, N, H), jnp.float32, 2)
    do = rand((B, T, N, H), jnp.float32, 3)
    mask = dict(causal=True, window=(16, None))
    nan_v = v.at[:, :32].set(jnp.nan)
    nan_q = q.at[:, :32].set(jnp.nan)
    attn = lambda q, k, v: flash_attention(q, k, v, block_sizes=SMALL, **mask)  # noqa: E731
    out, dq, _, _ = jax.jit(fwd_and_grads, static_argnums=0)(attn, q, k, nan_v, do)
    _, _, dk, dv = jax.jit(fwd_and_grads, static_argnums=0)(attn, nan_q, k, v, do)
    ref = lambda q, k, v: reference_attention(q, k, v, **mask)  # noqa: E731
    r_out, r_dq, _, _ = fwd_and_grads(ref, q, k, v.at[:, :32].set(0.0), do)
    _, _, r_dk, r_dv = fwd_and_grads(ref, q.at[:, :32].set(0.0), k, v, do)
    np.testing.assert_allclose(out[:, 64:], r_out[:, 64:], atol=1e-5)
    np.testing.assert_allclose(dq[:, 64:], r_dq[:, 64:], atol=1e-5)
    np.testing.assert_allclose(dk[:, 32:], r_dk[:, 32:], atol=1e-5)
    np.testing.assert_allclose(dv[:, 32:], r_dv[:, 32:], atol=1e-5)


@pytest.mark.slow
def test_log_sum_exp_output_and_its_gradient():
    B, T, N, H = 1, 40, 2, 8
    q, k, v = rand((B, T, N, H), jnp.float32, 0), rand((B, T, N, H), jnp.float32, 1), rand((B, T, N, H), jnp.float32, 2)
    blocks = BlockSizes(16, 16, 16, 16, 16, 16)

    def ours(q, k):
        return flash_attention(q, k, v, causal=True, block_sizes=blocks, return_lse=True)[1]

    def theirs(q, k):
        logits = jnp.einsum("BTNH,BSNH->BNTS", q, k) * H**-0.5
        return jax.nn.logsumexp(jnp.where(jnp.tril(jnp.ones((T, T), bool)), logits, -jnp.inf), axis=-1)

    np.testing.assert_allclose(jax.jit(ours)(q, k), theirs(q, k), atol=1e-5)
    g_ours = jax.jit(jax.grad(lambda q, k: jnp.sum(jnp.sin(ours(q, k))), argnums=(0, 1)))(q, k)
    g_theirs = jax.grad(lambda q, k: jnp.sum(jnp.sin(theirs(q, k))), argnums=(0, 1))(q, k)
    for a, b in zip(g_ours, g_theirs):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    q = jnp.zeros((1, 8, 3, 16))
    with pytest.raises(ValueError, match="query heads 3 must be a multiple of KV heads 2"):
        flash_attention(q, jnp.zeros((1, 8, 2, 16)), jnp.zeros((1, 8, 2, 16)))
    with pytest.raises(ValueError, match="block_k=48 must be a power of two"):
        flash_attention(q, jnp.zeros((1, 8, 1, 16)), jnp.zeros((1, 8, 1, 16)), block_sizes=BlockSizes(block_k=48))


@pytest.mark.parametrize("mask", [
    dict(causal=True),
    dict(window=(64, 64), segments=True),
    dict(causal=True, positions=True),
])
def test_triton_lowering_of_all_three_kernels(mask):
    """The GPU path lowers (Pallas -> Triton IR) for bf16 GQA with 3 query heads per KV head, H = 96 padded."""
    mask = dict(mask)
    B, T, N, K, H = 2, 200, 6, 2, 96
    q, k = jnp.zeros((B, T, N, H), jnp.bfloat16), jnp.zeros((B, T, K, H), jnp.bfloat16)
    ids = jnp.ones((B, T), jnp.int32)
    if mask.pop("segments", False):
        mask.update(q_segment_ids_BT=ids, kv_segment_ids_BS=ids)
    if mask.pop("positions", False):
        mask.update(q_positions_BT=ids, kv_positions_BS=ids)

    def loss(q, k, v):
        out = flash_attention(q, k, v, interpret=False, backend="gpu", block_sizes=BlockSizes.for_backend("gpu"), **mask)
        return jnp.sum(out.astype(jnp.float32))

    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, k, k).lower(lowering_platforms=("cuda",)).as_text()
    for name in ("flash_attention_fwd", "flash_attention_dkdv", "flash_attention_dq"):
        assert name in text, name
