"""Layers under scan (models/stack.py), remat policies, QK-norm and soft-capping.

The scanned layout must compute the same function as the unscanned one: the
same parameters (converted by `stack_params`) give the same loss and the
same gradients, for every attention variant and for MoE on every other layer.
"""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import moe  # noqa: F401  (registers model.ffn='moe')

from attention.dense_xla import dense_attention_xla
from attention.reference import reference_attention
from attention.rope import apply_rope
from experiments.configs.defaults import base_config
from models import DecoderLM, param_count
from models.config import validate_model_config
from models.stack import REMAT_POLICIES, stack_params, unstack_params
from nn.context import ForwardContext
from nn.errors import ConfigError
from sharding.axes import logical_to_spec
from sharding.rules import RULE_PRESETS, logical_axes_of

B, T = 2, 16


def model_cfg(**kw):
    c = base_config().model
    c.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
    c.update(**kw)
    return c


def build(cfg, params=None):
    """DecoderLM of `cfg` holding `params` (a pure dict), or random ones (norm scales near 1)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0))))
    if params is None:  # random values from NumPy: compiling the model's init costs seconds on CPU
        rng = np.random.default_rng(0)
        params = jax.tree.map(lambda a: jnp.asarray(
            (1.0 if a.ndim == 1 else 0.0) + (0.1 if a.ndim == 1 else 0.2) * rng.standard_normal(a.shape), a.dtype),
            nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def scanned_twin(cfg, model, **kw):
    """(scanned config, scanned model holding `model`'s parameters)."""
    c2 = copy.deepcopy(cfg)
    c2.update(scan_layers=True, **kw)
    validate_model_config(c2)
    return c2, build(c2, stack_params(nnx.to_pure_dict(nnx.state(model)), c2))


def loss_and_grads(model, tokens, train=True):
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)

    def loss_fn(p):
        ctx = ForwardContext(train=True, step=jnp.int32(3), rng=jax.random.key(5)) if train else None
        logits, _, aux = nnx.merge(graphdef, p)(tokens[:, :-1], ctx=ctx)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
        return ce + sum(sum(a.losses.values()) for a in aux)

    return jax.jit(jax.value_and_grad(loss_fn))(params)


VARIANTS = {
    "dense": dict(),
    "performer": dict(attention="performer", performer=dict(num_features=16, redraw_every=2, kernel="softmax",
                                                            chunk_size=8)),
    "longformer": dict(attention="longformer", longformer=dict(window=4, num_global=2, dilation=(1, 2, 1, 2))),
    "moe": dict(ffn="moe", ffn_every=2, n_layers=4, moe=dict(base_config().model.moe.to_dict(), num_experts=4, top_k=2)),
}


@pytest.mark.parametrize("variant", ["dense"] + [pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS
                                                 if v != "dense"])
def test_scanned_equals_unscanned_loss_and_grads(variant):
    cfg = model_cfg(**VARIANTS[variant])
    validate_model_config(cfg)
    model = build(cfg)
    # Dense runs the scan under remat as well: one compile checks both.
    c2, scanned = scanned_twin(cfg, model, remat="full" if variant == "dense" else "none")
    tokens = jax.random.randint(jax.random.key(1), (B, T + 1), 0, cfg.vocab_size)
    loss, grads = loss_and_grads(model, tokens)
    loss2, grads2 = loss_and_grads(scanned, tokens)
    np.testing.assert_allclose(loss2, loss, rtol=1e-5, atol=1e-5)
    back = unstack_params(grads2, c2)
    assert jax.tree.structure(back) == jax.tree.structure(grads)
    for (path, g), g2 in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(back)):
        np.testing.assert_allclose(g2, g, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    assert float(optax.tree.norm(grads)) > 0


def test_stack_and_unstack_are_inverse_and_keep_the_layer_order():
    cfg = model_cfg(ffn="moe", ffn_every=2, n_layers=4, moe=dict(base_config().model.moe.to_dict(), num_experts=2))
    params = nnx.to_pure_dict(nnx.state(build(cfg)))
    c2 = copy.deepcopy(cfg)
    c2.scan_layers = True
    stacked = stack_params(params, c2)
    # Layer i = g * P + j is slice g of group position j (P = ffn_every = 2): layer 3 is MoE, slice 1 of position 1.
    np.testing.assert_array_equal(stacked["layers"][1]["ffn"]["w_in_EDF"][1], params["blocks"][3]["ffn"]["w_in_EDF"])
    np.testing.assert_array_equal(stacked["layers"][0]["attn"]["wq_DNH"][1], params["blocks"][2]["attn"]["wq_DNH"])
    # The stacked tree has exactly the scanned model's paths and shapes.
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: DecoderLM(c2, rngs=nnx.Rngs(0)))))
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, abstract)
    back = unstack_params(stacked, c2)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    assert param_count(c2) == sum(x.size for x in jax.tree.leaves(stacked)) == param_count(cfg)
    with pytest.raises(ValueError, match="not the unscanned layout"):
        stack_params(stacked, c2)


def test_scanned_parameters_have_a_replicated_layers_axis():
    cfg = model_cfg(scan_layers=True)
    axes = logical_axes_of(nnx.state(nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0)))))
    wq = axes["layers"][0]["attn"]["wq_DNH"]
    assert wq == ("layers", "embed", "heads", "head_dim")
    assert axes["embed"]["table_VD"] == ("vocab", "embed")  # outside the stack: unchanged
    for preset, rules in RULE_PRESETS.items():
        assert logical_to_spec(wq, rules)[0] is None, preset


@pytest.mark.slow
def test_scanned_cached_decoding_matches_the_unscanned_forward():
    cfg = model_cfg(n_kv_heads=1)
    model = build(cfg)
    _, scanned = scanned_twin(cfg, model)
    tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, 256)
    run = nnx.jit(lambda m, tokens, caches: m(tokens, caches=caches)[:2])
    full, _ = run(model, tokens, None)
    caches = scanned.init_caches(2, 8)
    got, caches = run(scanned, tokens[:, :6], caches)  # prefill 6, then one at a time
    steps = [got]
    for t in (6, 7):
        lt, caches = run(scanned, tokens[:, t:t + 1], caches)
        steps.append(lt)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["dots_saveable", "save_attention_out"])
def test_remat_policies_change_nothing_numerically(remat):
    cfg = model_cfg()
    model = build(cfg)
    c2 = copy.deepcopy(cfg)
    c2.remat = remat
    remat_model = build(c2, nnx.to_pure_dict(nnx.state(model)))
    tokens = jax.random.randint(jax.random.key(1), (B, T + 1), 0, cfg.vocab_size)
    (loss, grads), (loss2, grads2) = loss_and_grads(model, tokens), loss_and_grads(remat_model, tokens)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads2, grads)


@pytest.mark.slow
def test_qk_norm_is_rmsnorm_per_head_before_rope():
    cfg = model_cfg(qk_norm=True, n_layers=1)
    attn = build(cfg).blocks[0].attn
    attn.q_norm_H[...] = jnp.linspace(0.5, 1.5, attn.head_dim)
    x = jax.random.normal(jax.random.key(2), (B, T, cfg.d_model))
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    q, k, v = attn.project_qkv(x, pos)

    def expected(w, scale):
        h = jnp.einsum("BTD,DNH->BTNH", x, w)
        h = h / jnp.sqrt(jnp.mean(h * h, axis=-1, keepdims=True) + cfg.norm_eps) * scale
        return apply_rope(h, pos, cfg.rope_base)

    np.testing.assert_allclose(q, expected(attn.wq_DNH[...], attn.q_norm_H[...]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(k, expected(attn.wk_DKH[...], attn.k_norm_H[...]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v, jnp.einsum("BTD,DKH->BTKH", x, attn.wv_DKH[...]), rtol=1e-5, atol=1e-5)
    assert param_count(cfg) == sum(x.size for x in jax.tree.leaves(nnx.state(build(cfg), nnx.Param)))


@pytest.mark.slow
def test_attention_logit_softcap_matches_the_formula():
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 6, 2, 4)) * 4 for i in range(3))
    cap = 2.0
    logits = jnp.einsum("BTNH,BSNH->BNTS", q, k) / 2.0  # H**-0.5 with H = 4
    logits = cap * jnp.tanh(logits / cap)
    logits = jnp.where(jnp.tril(jnp.ones((6, 6), bool)), logits, -jnp.inf)
    want = jnp.einsum("BNTS,BSNH->BTNH", jax.nn.softmax(logits, axis=-1), v)
    ref = reference_attention(q, k, v, causal=True, logit_softcap=cap)
    got = dense_attention_xla(q, k, v, causal=True, logit_softcap=cap)
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(dense_attention_xla(q, k, v, causal=True), want, atol=1e-3)  # the cap is active


@pytest.mark.slow
def test_final_logit_softcap_caps_the_model_logits():
    cfg = model_cfg(n_layers=1)
    model = build(cfg)
    c2 = copy.deepcopy(cfg)
    c2.final_logit_softcap = 0.05
    capped = build(c2, nnx.to_pure_dict(nnx.state(model)))
    tokens = jax.random.randint(jax.random.key(3), (B, T), 0, cfg.vocab_size)
    plain = model(tokens)[0]
    np.testing.assert_allclose(capped(tokens)[0], 0.05 * jnp.tanh(plain / 0.05), rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(plain))) > 0.05


@pytest.mark.parametrize("kw,match", [
    (dict(remat="most"), "model.remat='most' must be one of " + str(list(REMAT_POLICIES))),
    (dict(scan_layers=True, n_layers=3, ffn_every=2), "model.n_layers=3 must be a multiple of model.ffn_every=2"),
    (dict(attn_logit_softcap=-1.0), "model.attn_logit_softcap=-1.0 must be a finite number >= 0"),
    (dict(attn_logit_softcap=30.0, attention="performer"), "model.attn_logit_softcap=30.0 is supported with "
                                                           "model.attention='dense' only"),
    (dict(attn_logit_softcap=30.0, attention_impl="pallas"), "is not supported by model.attention_impl='pallas'"),
    (dict(final_logit_softcap=float("nan")), "model.final_logit_softcap=nan"),
])
def test_depth_and_stability_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace("[", r"\[")):
        validate_model_config(model_cfg(**kw))


def test_a_checkpoint_of_the_other_layout_is_a_one_line_error_and_init_from_converts():
    from nn.errors import CheckpointMismatchError
    from trainer.checkpoint import check_compatible
    from trainer.loop import layout_converter

    saved = {"model": {"scan_layers": True, "remat": "full"}}
    with pytest.raises(CheckpointMismatchError, match=r"scanned parameter layout \(model.scan_layers=True\).*"
                                                      r"train.init_from='w', which converts") as e:
        check_compatible(saved, {"model": {"scan_layers": False, "remat": "full"}}, "w")
    assert "\n" not in str(e.value)
    check_compatible(saved, {"model": {"scan_layers": True, "remat": "none"}}, "w")  # remat may change
    check_compatible({"model": {}}, {"model": {"scan_layers": False, "qk_norm": False}}, "w")  # older checkpoints
    cfg = model_cfg()
    c2 = copy.deepcopy(cfg)
    c2.scan_layers = True
    params = nnx.to_pure_dict(nnx.state(build(cfg)))
    stacked = layout_converter(cfg, c2, params)(params)
    np.testing.assert_array_equal(stacked["layers"][0]["attn"]["wo_NHD"][1], params["blocks"][1]["attn"]["wo_NHD"])
    jax.tree.map(np.testing.assert_array_equal, layout_converter(c2, cfg, stacked)(stacked), params)
    assert layout_converter(cfg, cfg, params)(params) is params


@pytest.mark.slow
def test_init_from_converts_an_unscanned_run_and_resuming_across_layouts_is_refused(smoke_run, tmp_path, devices):
    """The session's lm_tiny smoke run (unscanned) seeds a scanned run through train.init_from."""
    import shutil

    from nn.errors import CheckpointMismatchError
    from trainer import loop, restore

    c = copy.deepcopy(smoke_run.config)
    c.model.update(scan_layers=True, remat="save_attention_out")
    c.train.update(num_steps=2, eval_every=2, checkpoint_every=1, init_from=f"{smoke_run.workdir}:6", tensorboard=False)
    c.optim.learning_rate = 1e-12  # (almost) no update: step 1's parameters are the source's
    c.data.eval_batches = 1
    c.sample.num_tokens = 0
    loop.train_and_evaluate(c, str(tmp_path / "scanned"), devices[:1])
    got, got_cfg, _ = restore.restore_model(str(tmp_path / "scanned"), 1)
    want, _, _ = restore.restore_model(smoke_run.workdir, 6)
    got_params = unstack_params(nnx.to_pure_dict(nnx.state(got, nnx.Param)), got_cfg.model)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got_params,
                 nnx.to_pure_dict(nnx.state(want, nnx.Param)))
    resume = copy.deepcopy(c)
    resume.train.update(init_from="", num_steps=8)
    shutil.copytree(smoke_run.workdir, tmp_path / "copy")
    with pytest.raises(CheckpointMismatchError, match=r"unscanned parameter layout \(model.scan_layers=False\)"):
        loop.train_and_evaluate(resume, str(tmp_path / "copy"), devices[:1])
