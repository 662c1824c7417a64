"""Longformer attention: the blocked path against a dense masked oracle, O(nW) memory, models, sharding."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import attention.longformer  # noqa: F401  (registers "longformer")
from attention.kv_cache import KVCache
from attention.longformer import (GlobalInputs, LongformerAttention, global_indices, longformer_attention)
from attention.reference import reference_attention
from attention.rope import apply_rope
from experiments.configs.defaults import base_config
from models import DecoderLM, EncoderClassifier, param_count
from models.config import validate_model_config
from nn.errors import ConfigError
from conftest import cfg_for, first_losses

TOL = {jnp.float32: dict(atol=2e-5, rtol=2e-5), jnp.bfloat16: dict(atol=3e-2, rtol=3e-2)}


# ---------------------------------------------------------------- the oracle
def dense_longformer_mask(T, *, window, causal, dilation_N, is_global_BT, seg_BT=None, lengths_B=None):
    """(local mask [B, N, T, S], global-query mask [B, T, S]) spelled out densely from the definition."""
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    delta = i - j
    rate = np.asarray(dilation_N)[:, None, None]
    left, right = (window, 0) if causal else (window // 2, window // 2)
    band_NTS = (delta % rate == 0) & (delta <= left * rate) & (-delta <= right * rate)
    B = is_global_BT.shape[0]
    base_BTS = jnp.ones((B, T, T), bool)
    if causal:
        base_BTS &= delta >= 0
    if seg_BT is not None:
        base_BTS &= (seg_BT[:, :, None] == seg_BT[:, None, :]) & (seg_BT[:, None, :] != 0)
    if lengths_B is not None:
        base_BTS &= j[None] < lengths_B[:, None, None]
    glob_col_B1S = is_global_BT[:, None, None, :]
    return (band_NTS[None] | glob_col_B1S) & base_BTS[:, None], base_BTS


def masked_attention(q_BTNH, k_BSKH, v_BSKH, mask_BNTS):
    N, K = q_BTNH.shape[2], k_BSKH.shape[2]
    k = jnp.repeat(k_BSKH, N // K, axis=2).astype(jnp.float32)
    v = jnp.repeat(v_BSKH, N // K, axis=2).astype(jnp.float32)
    logits = jnp.einsum("BTNH,BSNH->BNTS", q_BTNH.astype(jnp.float32), k) * q_BTNH.shape[-1] ** -0.5
    logits = jnp.where(mask_BNTS, logits, -jnp.inf)
    m = jnp.max(logits, -1, keepdims=True)
    w = jnp.exp(logits - jnp.where(jnp.isfinite(m), m, 0.0))
    s = jnp.sum(w, -1, keepdims=True)
    return jnp.einsum("BNTS,BSNH->BTNH", w / jnp.where(s == 0, 1.0, s), v)


def oracle(q, k, v, *, window, causal, dilation_N, is_global_BT, qg=None, kg=None, vg=None, seg=None, lengths=None):
    """Window/global rows with K/V, global rows with Q_g/K_g/V_g over all keys (Beltagy et al. 2020, Sec. 3.1)."""
    T = q.shape[1]
    local, base = dense_longformer_mask(T, window=window, causal=causal, dilation_N=dilation_N,
                                        is_global_BT=is_global_BT, seg_BT=seg, lengths_B=lengths)
    out = masked_attention(q, k, v, local)
    if qg is not None:
        out_g = masked_attention(qg, kg, vg, base[:, None])
        out = jnp.where(jnp.asarray(is_global_BT)[:, :, None, None], out_g, out)
    return out


# ---------------------------------------------------------------- inputs
def rand(shape, dtype, seed):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(dtype)


def packed_segments(B, T):
    seg = np.zeros((B, T), np.int32)
    seg[0, :7], seg[0, 7:16], seg[0, 16:] = 1, 2, 3
    seg[1, :12], seg[1, 12:T - 3] = 1, 2  # 3 padding positions at the end
    return jnp.asarray(seg)


CASES = {
    # name: (N, K, dilation, num_global or general mask, segments, lengths)
    "plain": (4, 2, 1, 0, False, False),
    "lengths": (4, 2, 1, 0, False, True),
    "packed": (4, 2, 1, 0, True, False),
    "global": (4, 4, 1, 3, False, False),
    "dilated": (4, 2, (1, 1, 2, 2), 0, False, False),
    "dilated_uneven_gqa": (4, 2, (1, 2, 2, 2), 0, True, False),
    "all": (4, 2, (1, 2, 1, 3), 2, True, True),
    "global_mask": (2, 1, (1, 2), "mask", True, False),
}


def case_inputs(case, dtype, T=21, B=2, H=8):
    N, K, dilation, glob, use_seg, use_len = CASES[case]
    arrays = dict(q=rand((B, T, N, H), dtype, 0), k=rand((B, T, K, H), dtype, 1), v=rand((B, T, K, H), dtype, 2),
                  seg=packed_segments(B, T) if use_seg else None, lengths=jnp.array([T, 13]) if use_len else None)
    if glob == "mask":  # row-dependent global tokens, fewer than the slots in row 1
        is_global = np.zeros((B, T), bool)
        is_global[0, [3, 9, 17]] = True
        is_global[1, [0, 12]] = True
        arrays["is_global"] = jnp.asarray(is_global)
    else:
        arrays["is_global"] = jnp.broadcast_to(jnp.arange(T) < glob, (B, T))
    if glob:
        arrays.update(qg=rand((B, T, N, H), dtype, 3), kg=rand((B, T, K, H), dtype, 4), vg=rand((B, T, K, H), dtype, 5))
    return arrays


def ours_and_oracle(a, *, case, causal, W=4):
    """Both paths in one jitted function (one compilation instead of hundreds of eager ops)."""
    N, _, dilation, glob, _, _ = CASES[case]
    dilation_N = (dilation,) * N if isinstance(dilation, int) else dilation
    gi, kw = None, {}
    if glob:
        idx = global_indices(a["is_global"], 3 if glob == "mask" else glob)
        qg_A = jnp.take_along_axis(a["qg"], idx[:, :, None, None], axis=1)
        gi = GlobalInputs(a["is_global"], idx, qg_A, a["kg"], a["vg"])
        kw = dict(qg=a["qg"], kg=a["kg"], vg=a["vg"])
    out = longformer_attention(a["q"], a["k"], a["v"], window=W, causal=causal, dilation=dilation,
                               q_segment_ids_BT=a["seg"], kv_segment_ids_BS=a["seg"], kv_lengths_B=a["lengths"],
                               global_inputs=gi)
    want = oracle(a["q"], a["k"], a["v"], window=W, causal=causal, dilation_N=dilation_N, seg=a["seg"],
                  is_global_BT=a["is_global"], lengths=a["lengths"], **kw)
    return out, want


# The cases that exercise every code path run by default; the rest of the grid is marked slow.
FAST = {("all", False, jnp.float32), ("all", True, jnp.float32), ("global_mask", True, jnp.float32),
        ("dilated_uneven_gqa", False, jnp.float32), ("all", True, jnp.bfloat16)}
GRID = [(c, causal, d) for d in (jnp.float32, jnp.bfloat16) for c in CASES for causal in (False, True)]


@pytest.mark.parametrize("case,causal,dtype", [
    pytest.param(c, k, d, id=f"{c}-{'causal' if k else 'bidir'}-{jnp.dtype(d).name}",
                 marks=() if (c, k, d) in FAST else pytest.mark.slow) for c, k, d in GRID])
def test_blocked_matches_dense_oracle(case, causal, dtype):
    a = case_inputs(case, dtype)
    out, want = jax.jit(functools.partial(ours_and_oracle, case=case, causal=causal))(a)
    assert out.dtype == dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want, np.float32), **TOL[dtype])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T,W", [(21, 4)] + [pytest.param(*tw, marks=pytest.mark.slow) for tw in [(5, 8), (16, 8), (40, 6)]])
def test_no_global_no_dilation_matches_reference_window(causal, T, W):
    """The plain sliding window is exactly the oracle's window=(W/2, W/2), or (W, 0) when causal."""
    q, k, v = rand((2, T, 4, 8), jnp.float32, 0), rand((2, T, 2, 8), jnp.float32, 1), rand((2, T, 2, 8), jnp.float32, 2)
    seg = packed_segments(2, T) if T >= 21 else None
    window = (W, 0) if causal else (W // 2, W // 2)
    out, want = jax.jit(lambda q, k, v, seg: (
        longformer_attention(q, k, v, window=W, causal=causal, q_segment_ids_BT=seg, kv_segment_ids_BS=seg),
        reference_attention(q, k, v, causal=causal, window=window, q_segment_ids_BT=seg, kv_segment_ids_BS=seg)))(q, k, v, seg)
    np.testing.assert_allclose(out, want, **TOL[jnp.float32])


@pytest.mark.slow
def test_gradients_match_oracle():
    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))
    a = case_inputs("all", jnp.float32)
    q, k, v, seg, lengths = a["q"], a["k"], a["v"], a["seg"], a["lengths"]
    kw = dict(window=4, causal=True, dilation=(1, 2, 1, 3), q_segment_ids_BT=seg, kv_segment_ids_BS=seg, kv_lengths_B=lengths)
    ours = jax.jit(jax.grad(loss(lambda q, k, v: longformer_attention(q, k, v, **kw)), argnums=(0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(loss(lambda q, k, v: oracle(q, k, v, window=4, causal=True, dilation_N=(1, 2, 1, 3),
                                                is_global_BT=jnp.zeros(q.shape[:2], bool), seg=seg, lengths=lengths)),
                    argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(ours, want):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def temp_bytes(T, W=64, N=2, H=16, A=2):
    q = jax.ShapeDtypeStruct((1, T, N, H), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, T, N, H), jnp.float32)

    def f(q, k, v):
        B = q.shape[0]
        is_global = jnp.broadcast_to(jnp.arange(T) < A, (B, T))
        idx = jnp.broadcast_to(jnp.arange(A, dtype=jnp.int32), (B, A))
        gi = GlobalInputs(is_global, idx, q[:, :A], k, v)
        return longformer_attention(q, k, v, window=W, causal=False, dilation=(1, 2), global_inputs=gi)

    return jax.jit(f).lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_memory_grows_linearly_in_length():
    """4x the length at fixed W: temp memory ~4x (dense attention's T x T logits would grow 16x)."""
    small, large = temp_bytes(1024), temp_bytes(4096)
    assert large / small < 6, (small, large)


# ---------------------------------------------------------------- the layer
def layer_cfg(*, window=None, num_global=None, dilation=None, **model):
    """A small Longformer config: `window`, `num_global`, `dilation` set model.longformer.*, the rest model.*."""
    c = base_config().model
    c.update(d_model=32, n_heads=4, n_kv_heads=2, n_layers=1)
    longformer = dict(window=window, num_global=num_global, dilation=dilation)
    longformer = {k: v for k, v in longformer.items() if v is not None}
    with c.ignore_type():  # model.longformer.dilation is a tuple; the error cases also set plain ints
        c.update(attention="longformer", longformer=longformer, **model)
    return c


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
def test_layer_matches_oracle_with_global_projections(causal):
    cfg = layer_cfg(window=4, num_global=2, dilation=(1, 2, 1, 2), causal=causal)
    layer = LongformerAttention(cfg, rngs=nnx.Rngs(0))
    B, T = 2, 21
    x = rand((B, T, 32), jnp.float32, 7)
    seg = packed_segments(B, T)
    pos = jnp.asarray(np.concatenate([np.r_[0:7, 0:9, 0:5], np.r_[0:12, 0:6, 0:3]]).reshape(B, T))

    def layer_and_oracle(layer, x, pos, seg):
        y, _ = layer(x, positions_BT=pos, segment_ids_BT=seg)

        def proj(w, rope=True):
            out = jnp.einsum("BTD,D...->BT...", x, w[...])
            return apply_rope(out, pos) if rope else out
        is_global = jnp.broadcast_to(jnp.arange(T) < 2, (B, T))
        o = oracle(proj(layer.wq_DNH), proj(layer.wk_DKH), proj(layer.wv_DKH, False), window=4, causal=causal,
                   dilation_N=(1, 2, 1, 2), is_global_BT=is_global, qg=proj(layer.wq_g_DNH),
                   kg=proj(layer.wk_g_DKH), vg=proj(layer.wv_g_DKH, False), seg=seg)
        return y, jnp.einsum("BTNH,NHD->BTD", o, layer.wo_NHD[...])

    y, want = jax.jit(layer_and_oracle)(layer, x, pos, seg)
    np.testing.assert_allclose(y, want, atol=2e-5, rtol=2e-5)


def n_params(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("num_global", [0, 2])
def test_param_count_and_flops(num_global):
    cfg = layer_cfg(window=8, num_global=num_global, n_layers=2, d_ff=64)
    assert param_count(cfg) == n_params(nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0))))
    # O(W): the core's FLOPs per token stop growing with the length once T >> W.
    f = LongformerAttention.core_flops_per_token
    assert f(cfg, 4096) == f(cfg, 1024) < LongformerAttention.__mro__[1].core_flops_per_token(cfg, 1024) / 20


def test_core_flops_match_xla_cost_analysis():
    """The analytic O(W) + global count is within 15% of what XLA counts (softmax/masking are left out)."""
    cfg = layer_cfg(n_heads=2, n_kv_heads=2, head_dim=32, window=64, num_global=4, dilation=(1, 2))
    T, A = 1024, 4
    s = jax.ShapeDtypeStruct((1, T, 2, 32), jnp.float32)

    def f(q, k, v):
        gi = GlobalInputs(jnp.broadcast_to(jnp.arange(T) < A, (1, T)),
                          jnp.broadcast_to(jnp.arange(A, dtype=jnp.int32), (1, A)), q[:, :A], k, v)
        return longformer_attention(q, k, v, window=64, causal=True, dilation=(1, 2), global_inputs=gi)
    cost = jax.jit(f).lower(s, s, s).compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"] / T
    analytic = LongformerAttention.core_flops_per_token(cfg, T)
    assert abs(analytic - xla) / xla < 0.15, (analytic, xla)


@pytest.mark.slow
def test_encoder_classifier_forward():
    cfg = layer_cfg(window=4, num_global=1, dilation=(1, 1, 2, 2), causal=False, num_classes=3, n_layers=2, d_ff=64)
    model = EncoderClassifier(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 19), 1, 256)
    seg = jnp.array([[1] * 19, [1] * 11 + [0] * 8])
    forward = jax.jit(lambda m, t, s: m(t, segment_ids_BT=s)[0])
    logits = forward(model, tokens, seg)
    assert logits.shape == (2, 3) and np.all(np.isfinite(logits))
    # Padding (segment 0) is invisible: new tokens there leave row 1 unchanged; a real token changes row 0.
    changed = tokens.at[:, 15].set((tokens[:, 15] + 1) % 256)
    again = forward(model, changed, seg)
    np.testing.assert_allclose(again[1], logits[1], atol=1e-6, rtol=1e-6)
    assert float(jnp.max(jnp.abs(again[0] - logits[0]))) > 1e-4


@pytest.mark.slow
def test_decoder_lm_trains():
    cfg = layer_cfg(window=4, num_global=2, dilation=(1, 2, 1, 2), n_layers=2, d_ff=64)
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)
    tokens = jax.random.randint(jax.random.key(1), (4, 25), 0, 256)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            logits, _, _ = nnx.merge(graphdef, p)(tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(6):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("n_kv_heads,num_global,prefill", [
    pytest.param(2, 2, 1, marks=pytest.mark.slow),  # decode steps at position 1 are global queries: they need the cached K_g/V_g
    pytest.param(2, 0, 5, marks=pytest.mark.slow),
    pytest.param(4, 3, 5, marks=pytest.mark.slow),
])
def test_cached_decoding_matches_full_forward(n_kv_heads, num_global, prefill):
    cfg = layer_cfg(window=4, dilation=(1, 2, 1, 3), n_kv_heads=n_kv_heads, num_global=num_global, n_layers=2, d_ff=64)
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 14), 0, 256)
    run = jax.jit(lambda m, t, c: m(t, caches=c))
    full, _, _ = run(model, tokens, None)
    caches = model.init_caches(2, 16)
    logits_pre, caches, _ = run(model, tokens[:, :prefill], caches)  # prefill, then one at a time
    got = [logits_pre]
    for t in range(prefill, 14):
        lt, caches, _ = run(model, tokens[:, t:t + 1], caches)
        got.append(lt)
    np.testing.assert_allclose(jnp.concatenate(got, axis=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_generate_with_padded_prompts_matches_unpadded():
    from models.decode import generate
    model = DecoderLM(layer_cfg(window=4, dilation=(1, 2, 1, 2), num_global=4, n_layers=2, d_ff=64), rngs=nnx.Rngs(0))
    prompts = jax.random.randint(jax.random.key(1), (2, 6), 0, 256)
    lengths = jnp.array([6, 3])  # row 1's first decoded tokens are still global positions
    run = jax.jit(functools.partial(generate, max_new_tokens=5))  # greedy (default SamplingParams)
    batch_out = run(model, prompts.at[1, 3:].set(0), lengths, rng=jax.random.key(0))["tokens_BN"]
    alone = run(model, prompts[1:, :3], lengths[1:], rng=jax.random.key(0))["tokens_BN"]
    np.testing.assert_array_equal(batch_out[1], alone[0])


def test_global_tokens_need_the_global_cache():
    layer = LongformerAttention(layer_cfg(window=4, num_global=1), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="needs the cache from init_cache"):
        layer(jnp.zeros((1, 1, 32)), cache=KVCache.init(1, 8, 2, 8))


@pytest.mark.parametrize("kw,match", [
    (dict(window=0), "model.longformer.window=0 must be a positive even integer"),
    (dict(window=-4), "model.longformer.window=-4 must be"),
    (dict(window=5, causal=False), "model.longformer.window=5 must be a positive even integer"),
    (dict(num_global=-1), "model.longformer.num_global=-1 must be a non-negative integer"),
    (dict(dilation=(1, 2)), r"model.longformer.dilation=\(1, 2\) must have one rate per head \(model.n_heads=4\)"),
    (dict(dilation=0), "model.longformer.dilation=0 must hold integers >= 1"),
    (dict(dilation=(1, 1, 0, 2)), r"model.longformer.dilation=\(1, 1, 0, 2\) must hold integers >= 1"),
])
def test_config_errors_name_field_and_value(kw, match):
    kw.setdefault("causal", False)
    with pytest.raises(ConfigError, match=match):
        validate_model_config(layer_cfg(**kw))


def test_valid_configs_pass():
    validate_model_config(layer_cfg(window=5, causal=True))  # causal windows may be odd: W keys back
    validate_model_config(layer_cfg(window=8, num_global=3, dilation=(1, 2, 3, 4)))


# ---------------------------------------------------------------- sharding
@pytest.mark.slow
def test_sharded_losses_match_single_device(devices):
    def cfg(shape, rules):
        c = cfg_for(shape, rules)
        with c.model.ignore_type():
            c.model.update(attention="longformer", longformer=dict(window=8, num_global=2, dilation=(1, 2, 1, 2)))
        c.model.n_layers = 1  # one layer holds every sharded projection; a second only doubles the compile
        return c
    base = first_losses(cfg({}, "dp"), devices[:1])[2]
    s, state, losses = first_losses(cfg({"data": 2, "tensor": 4}, "tensor"), devices)
    np.testing.assert_allclose(losses, base, rtol=1e-5)
    from jax.sharding import PartitionSpec as P
    assert state["params"]["blocks"][0]["attn"]["wq_g_DNH"].sharding.spec == P(None, "tensor", None)
