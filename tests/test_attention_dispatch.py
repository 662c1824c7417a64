"""model.attention_impl: "pallas" (flash kernel, interpret mode on CPU) equals "xla" through whole models."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention.dense import DENSE_IMPLS, dense_attention
from attention.flash import resolve_impl
from attention.longformer import GlobalInputs, global_indices, longformer_attention
from experiments.configs.defaults import base_config
from models import DecoderLM, EncoderClassifier
from models.config import validate_model_config
from nn.errors import ConfigError


def model_cfg(**kw):
    c = base_config().model
    c.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
    c.update(**kw)
    return c


def test_auto_picks_pallas_on_accelerators_only():
    assert resolve_impl("auto", "gpu") == resolve_impl("auto", "tpu") == "pallas"
    assert resolve_impl("auto", "cpu") == "xla"
    assert resolve_impl("pallas", "cpu") == "pallas"
    assert set(DENSE_IMPLS) == {"xla", "pallas", "cudnn", "auto"}
    assert resolve_impl("cudnn", "gpu") == "cudnn"


def test_config_accepts_the_impls_and_names_a_bad_one():
    for impl in ("xla", "pallas", "auto"):
        validate_model_config(model_cfg(attention_impl=impl))
    with pytest.raises(ConfigError, match="model.attention_impl='triton'"):
        validate_model_config(model_cfg(attention_impl="triton"))
    with pytest.raises(ConfigError, match="no kernel for model.attention='performer'"):
        validate_model_config(model_cfg(attention_impl="pallas", attention="performer"))
    validate_model_config(model_cfg(attention_impl="auto", attention="performer"))
    if jax.default_backend() == "gpu":  # benchmarks/gpu_kernels.sh runs this file on the GPU too
        validate_model_config(model_cfg(attention_impl="cudnn"))
    else:
        with pytest.raises(ConfigError, match="'cudnn' needs an NVIDIA GPU .this backend is 'cpu'"):
            validate_model_config(model_cfg(attention_impl="cudnn"))
    with pytest.raises(ConfigError, match="'cudnn' is for dense attention, not model.attention='performer'"):
        validate_model_config(model_cfg(attention_impl="cudnn", attention="performer"))


@pytest.mark.slow
def test_cudnn_core_maps_every_mask_onto_dot_product_attention(monkeypatch):
    """The cuDNN core's mapping of our masks (native causal/window/lengths, else a boolean mask) against the
    oracle, run through jax.nn.dot_product_attention's XLA implementation (cuDNN itself needs a GPU)."""
    from attention import dense_cudnn
    from attention.reference import reference_attention

    q = jax.random.normal(jax.random.key(0), (2, 24, 4, 8))
    k, v = (jax.random.normal(jax.random.key(i), (2, 24, 2, 8)) for i in (1, 2))
    if jax.default_backend() != "gpu":
        with pytest.raises(ConfigError, match="needs an NVIDIA GPU"):
            dense_cudnn.dense_attention_cudnn(q, k, v)
        monkeypatch.setattr(dense_cudnn, "IMPLEMENTATION", "xla")
    else:  # cuDNN itself (bf16 only), at bf16 tolerance
        q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    seg = jnp.array([[1] * 10 + [2] * 14, [1] * 20 + [0] * 4])
    pos = jnp.broadcast_to(jnp.arange(24), (2, 24))
    masks = (dict(causal=True, window=(5, None)), dict(window=(3, 0)), dict(window=(3, 4)),
             dict(causal=True, kv_lengths_B=jnp.array([7, 0])), dict(q_segment_ids_BT=seg, kv_segment_ids_BS=seg),
             dict(causal=True, q_positions_BT=pos + 3, kv_positions_BS=pos))
    # One jit for all cases: eager dispatch of nine small attentions costs more than compiling them once.
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    diffs = jax.jit(lambda q, k, v: [jnp.max(jnp.abs(f32(dense_cudnn.dense_attention_cudnn(q, k, v, **m))
                                                     - reference_attention(f32(q), f32(k), f32(v), **m)))
                                     for m in masks])(q, k, v)
    for m, d in zip(masks, diffs):
        assert float(d) < (1e-5 if q.dtype == jnp.float32 else 3e-2), (list(m), float(d))


def test_dense_core_dispatch():
    q = jax.random.normal(jax.random.key(0), (2, 24, 4, 8))
    k = jax.random.normal(jax.random.key(1), (2, 24, 2, 8))
    f = jax.jit(lambda impl, q, k: dense_attention(q, k, k, impl=impl, causal=True), static_argnums=0)
    np.testing.assert_allclose(f("pallas", q, k), f("xla", q, k), atol=1e-5)
    np.testing.assert_allclose(f("auto", q, k), f(resolve_impl("auto"), q, k), atol=0)  # XLA on CPU


def _loss_and_grads(model, tokens, seg):
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params):
        logits = nnx.merge(graphdef, params)(tokens[:, :-1], segment_ids_BT=seg)[0]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.slow
@pytest.mark.parametrize("kw", [
    dict(), dict(attention="longformer", longformer=dict(window=4, num_global=2, dilation=(1, 2, 1, 2)))])
def test_decoder_lm_with_pallas_equals_xla(kw):
    tokens = jax.random.randint(jax.random.key(0), (2, 38), 0, 256)
    seg = jnp.array([[1] * 20 + [2] * 17, [1] * 30 + [0] * 7])  # packed rows and padding
    results = [_loss_and_grads(DecoderLM(model_cfg(attention_impl=impl, **kw), rngs=nnx.Rngs(0)), tokens, seg)
               for impl in ("xla", "pallas")]
    (l_xla, g_xla), (l_pal, g_pal) = results
    np.testing.assert_allclose(l_pal, l_xla, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_pal), jax.tree.leaves(g_xla)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_bf16_encoder_with_pallas_equals_xla():
    tokens = jax.random.randint(jax.random.key(0), (2, 33), 0, 256)
    outs = []
    for impl in ("xla", "pallas"):
        cfg = model_cfg(attention_impl=impl, causal=False, num_classes=3, dtype="bfloat16")
        model = EncoderClassifier(cfg, rngs=nnx.Rngs(0))
        outs.append(jax.jit(lambda m, t: m(t)[0])(model, tokens).astype(jnp.float32))
    np.testing.assert_allclose(outs[1], outs[0], atol=3e-2, rtol=3e-2)


@pytest.mark.slow
def test_longformer_kernel_window_equals_blocked_xla():
    """Dilation folded into the batch and global tokens merged through the kernel's log-sum-exp, with gradients.
    (Non-causal here; the causal band runs through the Longformer LM test above.)"""
    causal = False
    B, T, N, K, H, A = 2, 50, 4, 2, 8, 3
    ks = jax.random.split(jax.random.key(0), 6)
    q, k, v = (jax.random.normal(ks[0], (B, T, N, H)), jax.random.normal(ks[1], (B, T, K, H)),
               jax.random.normal(ks[2], (B, T, K, H)))
    is_global = jnp.broadcast_to(jnp.arange(T) < A, (B, T))
    glob = GlobalInputs(is_global, global_indices(is_global, A), jax.random.normal(ks[3], (B, A, N, H)),
                        jax.random.normal(ks[4], (B, T, K, H)), jax.random.normal(ks[5], (B, T, K, H)))
    seg = jnp.array([[1] * 20 + [2] * 25 + [0] * 5, [1] * 50])

    def run(impl):
        def f(q, k, v):
            return longformer_attention(q, k, v, window=6, causal=causal, dilation=(1, 2, 2, 1),
                                        q_segment_ids_BT=seg, kv_segment_ids_BS=seg, kv_lengths_B=jnp.array([50, 41]),
                                        global_inputs=glob, impl=impl)
        out, pullback = jax.vjp(f, q, k, v)
        return (out, *pullback(jnp.cos(out)))

    got, want = jax.jit(lambda: run("pallas"))(), jax.jit(lambda: run("xla"))()
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_tpu_dispatch_runs_splash_attention_in_tpu_interpret_mode(monkeypatch):
    """On TPU "pallas" means jax's splash attention: checked against the oracle under TPU interpret mode."""
    from jax.experimental.pallas import tpu as pltpu

    from attention import flash
    from attention.reference import reference_attention

    monkeypatch.setattr(flash, "backend", lambda: "tpu")
    B, T, N, K, H = 1, 200, 4, 2, 128  # T not a tile multiple; GQA
    ks = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(ks[0], (B, T, N, H)), jax.random.normal(ks[1], (B, T, K, H)),
               jax.random.normal(ks[2], (B, T, K, H)))
    seg = jnp.array([[1] * 90 + [2] * 80 + [0] * 30])
    mask = dict(causal=True, window=(40, None), q_segment_ids_BT=seg, kv_segment_ids_BS=seg)

    def fwd_and_grads(attn):
        out, pullback = jax.vjp(attn, q, k, v)
        return (out, *pullback(jnp.cos(out)))

    with pltpu.force_tpu_interpret_mode():
        got = jax.jit(lambda: fwd_and_grads(lambda q, k, v: dense_attention(q, k, v, impl="auto", **mask)))()
    want = jax.jit(lambda: fwd_and_grads(lambda q, k, v: reference_attention(q, k, v, **mask)))()
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)

    # Explicit positions (decoding) stay on XLA on TPU: no Pallas call, same numbers.
    pos = jnp.arange(T)[None] + 3
    f = lambda q: dense_attention(q, k, v, impl="pallas", causal=True, q_positions_BT=pos, kv_positions_BS=pos)  # noqa: E731
    assert "pallas_call" not in str(jax.make_jaxpr(f)(q))
    np.testing.assert_allclose(f(q), reference_attention(q, k, v, causal=True), atol=1e-5)
