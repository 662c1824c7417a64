"""Models: parameter and FLOPs counts, cached decoding, the encoder classifier, registries."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.configs.defaults import base_config
from models import DecoderLM, EncoderClassifier, param_count, train_flops_per_token
from models.config import validate_model_config
from nn.errors import ConfigError
from models.decode import generate


def model_cfg(**kw):
    c = base_config().model
    c.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
    c.update(**kw)
    return c


def n_params(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=False), dict(activation="swiglu"),
                                dict(head_dim=16), dict(n_kv_heads=1)])
def test_analytic_param_count_is_exact(kw):
    cfg = model_cfg(**kw)
    assert param_count(cfg) == n_params(DecoderLM(cfg, rngs=nnx.Rngs(0)))


def test_classifier_param_count_is_exact():
    cfg = model_cfg(causal=False, num_classes=10, pooling="mean")
    assert param_count(cfg, head="classifier") == n_params(EncoderClassifier(cfg, rngs=nnx.Rngs(0)))


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(), dict(activation="swiglu", n_kv_heads=2, tie_embeddings=False)])
def test_analytic_flops_match_xla_cost_analysis(kw):
    """Analytic fwd+bwd FLOPs within 15% of what XLA counts for the compiled train step."""
    cfg = model_cfg(d_model=256, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=1024)
    cfg.update(**kw)
    B, T = 4, 128
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)

    def step(params, opt_state, tokens):
        def loss_fn(p):
            logits, _, _ = nnx.merge(graphdef, p)(tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    tokens = jnp.zeros((B, T + 1), jnp.int32)
    compiled = jax.jit(step).lower(params, opt_state, tokens).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = cost["flops"]
    analytic = train_flops_per_token(cfg, T) * B * T
    assert abs(analytic - xla_flops) / xla_flops < 0.15, (analytic, xla_flops)


@pytest.mark.parametrize("n_kv_heads", [pytest.param(4, marks=pytest.mark.slow), 1])
def test_cached_decoding_matches_full_forward(n_kv_heads):
    cfg = model_cfg(n_kv_heads=n_kv_heads)
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 256)
    run = nnx.jit(lambda m, tokens, caches: m(tokens, caches=caches)[:2])  # 3 compiles beat ~9 eager passes
    full, _ = run(model, tokens, None)
    caches = model.init_caches(2, 16)
    logits_pre, caches = run(model, tokens[:, :5], caches)  # prefill 5, then one at a time
    got = [logits_pre]
    for t in range(5, 12):
        lt, caches = run(model, tokens[:, t:t + 1], caches)
        got.append(lt)
    np.testing.assert_allclose(jnp.concatenate(got, axis=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_generate_with_padded_prompts_matches_unpadded():
    cfg = model_cfg()
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    prompts = jax.random.randint(jax.random.key(1), (2, 6), 0, 256)
    lengths = jnp.array([6, 3])
    padded = prompts.at[1, 3:].set(0)
    run = jax.jit(functools.partial(generate, max_new_tokens=5))  # greedy (default SamplingParams)
    batch_out = run(model, padded, lengths, rng=jax.random.key(0))["tokens_BN"]
    alone = run(model, prompts[1:, :3], lengths[1:], rng=jax.random.key(0))["tokens_BN"]
    np.testing.assert_array_equal(batch_out[1], alone[0])


@pytest.mark.slow
def test_encoder_classifier_ignores_padding_with_mean_pooling():
    cfg = model_cfg(causal=False, num_classes=3, pooling="mean")
    model = EncoderClassifier(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (1, 10), 1, 256)
    seg = jnp.array([[1] * 6 + [0] * 4])
    a, _ = model(tokens, segment_ids_BT=seg)
    b, _ = model(tokens.at[0, 7].set(5), segment_ids_BT=seg)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a.shape == (1, 3)


def test_encoder_rejects_causal():
    with pytest.raises(ValueError, match="model.causal=True"):
        EncoderClassifier(model_cfg(num_classes=3), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kw,match", [
    (dict(d_model=30, n_heads=4), "model.n_heads=4 does not divide model.d_model=30"),
    (dict(n_heads=4, n_kv_heads=3), "model.n_kv_heads=3 does not divide model.n_heads=4"),
    (dict(attention="sparse"), "model.attention='sparse'"),
    (dict(ffn="wide"), "model.ffn='wide'"),
    (dict(activation="tanh"), "model.activation='tanh'"),
    (dict(dtype="float16"), "model.dtype='float16'"),
    (dict(n_layers=0), "model.n_layers=0"),
])
def test_model_config_errors_name_field_and_value(kw, match):
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace("[", r"\[")):
        validate_model_config(model_cfg(**kw))
