"""MoE: router, losses and both dispatch modes against hand-computed cases and each other;
expert parallelism on 8 fake devices equals one device; health metrics; bad config."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from trainer import loop
from nn.context import ForwardContext
from experiments.configs.defaults import apply_smoke, base_config
from models.config import validate_model_config
from nn.errors import ConfigError
from models.flops import param_count
from models.lm import DecoderLM
from moe import dispatch as dsp
from moe import health, losses, router
from moe.gmm import blocked_gmm
from moe.layer import MoEFFN
from tests.test_sharding import first_losses


def moe_cfg(**moe):
    c = apply_smoke(base_config())
    c.model.update(ffn="moe", d_model=32, d_ff=64)
    c.model.moe.update(num_experts=4, top_k=2, **moe)
    return c


# --------------------------------------------------------------------------- router


def test_top_k_route_renormalizes_over_chosen_experts():
    probs = jnp.array([[[0.1, 0.5, 0.3, 0.1]]])
    expert, gate = router.top_k_route(probs, 2, renormalize=True)
    np.testing.assert_array_equal(expert[0, 0], [1, 2])
    np.testing.assert_allclose(gate[0, 0], [0.5 / 0.8, 0.3 / 0.8], rtol=1e-6)
    _, raw = router.top_k_route(probs, 2, renormalize=False)
    np.testing.assert_allclose(raw[0, 0], [0.5, 0.3], rtol=1e-6)


def test_router_runs_in_float32_and_noise_only_with_rng():
    x = jnp.ones((1, 3, 4), jnp.bfloat16)
    w = jnp.eye(4, dtype=jnp.float32)
    logits = router.router_logits(x, w)
    assert logits.dtype == jnp.float32
    np.testing.assert_array_equal(router.router_logits(x, w, noise="gaussian", scale=1.0), logits)
    noisy = router.router_logits(x, w, noise="gaussian", scale=1.0, rng=jax.random.key(0))
    assert float(jnp.max(jnp.abs(noisy - logits))) > 0.1
    jit = router.router_logits(x, w, noise="jitter", scale=0.1, rng=jax.random.key(0))
    assert 0 < float(jnp.max(jnp.abs(jit - logits))) <= 0.1 + 1e-6


def test_noise_anneals_linearly_to_zero():
    assert float(router.noise_scale(2.0, 0, 100)) == 2.0
    assert float(router.noise_scale(2.0, 50, 100)) == pytest.approx(1.0)
    assert float(router.noise_scale(2.0, 500, 100)) == 0.0
    assert float(router.noise_scale(2.0, 500, 0)) == 2.0  # no annealing


def test_expert_choice_takes_top_tokens_per_expert():
    probs = jnp.array([[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]])  # G=1, S=3, E=2
    token, gate = router.expert_choice_route(probs, 2)
    np.testing.assert_array_equal(token[0], [[0, 2], [1, 2]])
    np.testing.assert_allclose(gate[0], [[0.9, 0.6], [0.8, 0.4]], rtol=1e-6)
    dispatch, combine, covered = dsp.expert_choice_masks(token, gate, 3)
    assert dispatch.shape == (1, 3, 2, 2)
    assert float(dispatch[0, 2, 0, 1]) == 1 and float(dispatch[0, 2, 1, 1]) == 1  # token 2 in both
    assert float(combine[0, 2, 1, 1]) == pytest.approx(0.4)
    assert float(covered) == 1.0


# --------------------------------------------------------------------------- losses


@pytest.mark.parametrize("k", [1, 2])
def test_switch_loss_is_one_when_balanced(k):
    E, S = 4, 8
    probs = jnp.full((1, S, E), 1.0 / E)
    expert = (jnp.arange(S * k).reshape(1, S, k) % E).astype(jnp.int32)  # every expert equally often
    assert float(losses.switch_balance_loss(probs, expert)) == pytest.approx(1.0)
    assert float(losses.squared_balance_loss(probs, expert)) == pytest.approx(0.0, abs=1e-12)


def test_switch_loss_hand_computed_collapse():
    # Every token to expert 0 with probability 0.7: f = (1, 0, 0, 0), P = (0.7, 0.1, 0.1, 0.1).
    probs = jnp.tile(jnp.array([0.7, 0.1, 0.1, 0.1]), (1, 5, 1))
    expert = jnp.zeros((1, 5, 1), jnp.int32)
    assert float(losses.switch_balance_loss(probs, expert)) == pytest.approx(4 * 0.7)
    assert float(losses.squared_balance_loss(probs, expert)) == pytest.approx(0.75 ** 2 + 3 * 0.25 ** 2)
    # The gradient flows through P: more probability on the over-used expert raises the loss.
    g = jax.grad(lambda p: losses.switch_balance_loss(p, expert))(probs)
    assert float(g[0, 0, 0]) > 0 and float(g[0, 0, 1]) == 0


def test_z_loss_hand_computed():
    logits = jnp.array([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    expected = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert float(losses.router_z_loss(logits)) == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- dispatch


def test_capacity_drops_top2_routes_before_top1():
    # 3 tokens, E=2, k=2, C=2: expert 0 is every token's first choice.
    expert = jnp.array([[[0, 1], [0, 1], [1, 0]]], jnp.int32)
    gate = jnp.array([[[0.6, 0.4], [0.7, 0.3], [0.8, 0.2]]])
    dispatch, combine, kept = dsp.token_choice_masks(expert, gate, 2, 2)
    d = np.asarray(dispatch[0])  # [S, E, C]
    # Expert 0 slots: token 0 (top-1), token 1 (top-1); token 2's top-2 route is dropped.
    assert d[0, 0, 0] == 1 and d[1, 0, 1] == 1 and d[2, 0].sum() == 0
    # Expert 1: token 2 (top-1) first, then token 0 (top-2); token 1's top-2 route is dropped.
    assert d[2, 1, 0] == 1 and d[0, 1, 1] == 1 and d[1, 1].sum() == 0
    assert float(kept) == pytest.approx(4 / 6)
    np.testing.assert_allclose(np.asarray(combine[0]).sum(axis=(1, 2)), [1.0, 0.7, 0.8], rtol=1e-6)
    assert dsp.capacity(3, 2, 2, 1.0) == 3 and dsp.capacity(3, 2, 2, 0.5) == 2


def _weights(E, D, F, seed=0, swiglu=False):
    ks = jax.random.split(jax.random.key(seed), 3)
    w = {"in": jax.random.normal(ks[0], (E, D, F)) * 0.3, "out": jax.random.normal(ks[1], (E, F, D)) * 0.3}
    if swiglu:
        w["gate"] = jax.random.normal(ks[2], (E, D, F)) * 0.3
    return w


def _per_token_oracle(x_GSD, dispatch, combine, w, activation):
    """Per token: sum over experts e of (its combine weight for e) * expert_e(token)."""
    G, S, D = x_GSD.shape
    E = w["in"].shape[0]
    every_e = [np.asarray(dsp.expert_ffn(x_GSD.reshape(1, G * S, D), {k: v[e:e + 1] for k, v in w.items()},
                                         activation))[0].reshape(G, S, D) for e in range(E)]
    weight_GSE = np.asarray(combine).sum(axis=-1)
    out = np.zeros((G, S, D), np.float32)
    for g in range(G):
        for s in range(S):
            for e in range(E):
                out[g, s] += weight_GSE[g, s, e] * every_e[e][g, s]
    return out


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_capacity_moe_matches_per_token_loop(activation):
    G, S, D, F, E, k = 2, 6, 8, 16, 4, 2
    x = jax.random.normal(jax.random.key(1), (G, S, D))
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(2), (G, S, E)), axis=-1)
    expert, gate = router.top_k_route(probs, k)
    w = _weights(E, D, F, swiglu=activation == "swiglu")
    dispatch, combine, kept = dsp.token_choice_masks(expert, gate, E, dsp.capacity(S, k, E, 1.0))
    assert float(kept) < 1.0  # this case drops routes: the oracle must follow the masks
    y = dsp.capacity_moe(x, dispatch, combine, w, activation)
    np.testing.assert_allclose(y, _per_token_oracle(x, dispatch, combine, w, activation), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_dropless_equals_capacity_when_nothing_is_dropped(dtype, tol):
    G, S, D, F, E, k = 3, 10, 8, 16, 5, 2
    x = jax.random.normal(jax.random.key(3), (G, S, D)).astype(dtype)
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(4), (G, S, E)), axis=-1)
    expert, gate = router.top_k_route(probs, k)
    w = jax.tree.map(lambda a: a.astype(dtype), _weights(E, D, F))
    dispatch, combine, kept = dsp.token_choice_masks(expert, gate, E, S)  # C = S: no drops possible
    assert float(kept) == 1.0
    y_cap = dsp.capacity_moe(x, dispatch, combine, w, "gelu")
    y_drop = dsp.dropless_moe(x.reshape(G * S, D), expert.reshape(-1, k), gate.reshape(-1, k), w, "gelu")
    np.testing.assert_allclose(np.asarray(y_drop.reshape(G, S, D), np.float32), np.asarray(y_cap, np.float32),
                               rtol=tol, atol=tol)

    # Gradients too (with respect to input, expert weights and gates).
    def f_cap(x, w, gate):
        d, c, _ = dsp.token_choice_masks(expert, gate, E, S)
        return jnp.sum(jnp.sin(dsp.capacity_moe(x, d, c, w, "gelu").astype(jnp.float32)))

    def f_drop(x, w, gate):
        y = dsp.dropless_moe(x.reshape(G * S, D), expert.reshape(-1, k), gate.reshape(-1, k), w, "gelu")
        return jnp.sum(jnp.sin(y.astype(jnp.float32)))

    if dtype == jnp.float32:
        g_cap = jax.grad(f_cap, argnums=(0, 1, 2))(x, w, gate)
        g_drop = jax.grad(f_drop, argnums=(0, 1, 2))(x, w, gate)
        for a, b in zip(jax.tree.leaves(g_drop), jax.tree.leaves(g_cap)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dropless_serves_only_local_experts_with_offset():
    X, D, F, E, k = 7, 4, 8, 4, 2
    x = jax.random.normal(jax.random.key(5), (X, D))
    expert = jax.random.randint(jax.random.key(6), (X, k), 0, E)
    gate = jax.random.uniform(jax.random.key(7), (X, k))
    w = _weights(E, D, F)
    full = dsp.dropless_moe(x, expert, gate, w, "gelu")
    halves = [dsp.dropless_moe(x, expert, gate, {n: v[o:o + 2] for n, v in w.items()}, "gelu", expert_offset=o)
              for o in (0, 2)]
    np.testing.assert_allclose(halves[0] + halves[1], full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sizes,block", [([100, 0, 377, 250, 200], 64), ([3, 1, 0, 2, 1], 4), ([0, 0, 0, 0, 0], 8)])
def test_blocked_gmm_equals_ragged_dot(sizes, block):
    M, K, N = max(sum(sizes) + 5, 8), 16, 24
    x = jax.random.normal(jax.random.key(0), (M, K))
    w = jax.random.normal(jax.random.key(1), (len(sizes), K, N))
    gs = jnp.array(sizes, jnp.int32)
    ours = jax.jit(blocked_gmm, static_argnums=3)
    np.testing.assert_allclose(ours(x, w, gs, block), jax.lax.ragged_dot(x, w, gs), rtol=1e-5, atol=1e-5)

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w, gs)))

    want = jax.grad(loss(jax.lax.ragged_dot), (0, 1))(x, w)
    got = jax.grad(loss(lambda x, w, g: blocked_gmm(x, w, g, block)), (0, 1))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["blocked", "ragged_dot", "pallas"])
def test_layer_dropless_impls_agree_with_capacity_without_drops(impl):
    base = dict(dispatch="capacity", capacity_factor=2.0, eval_capacity_factor=2.0)  # C = S: nothing dropped
    x = jax.random.normal(jax.random.key(0), (2, 8, 32))
    y_cap, aux_cap = MoEFFN(moe_cfg(**base).model, rngs=nnx.Rngs(0))(x)
    layer = MoEFFN(moe_cfg(dispatch="dropless", gmm_impl=impl).model, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)
    y_drop, _ = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, x)  # Pallas interpret mode wants jit
    assert float(aux_cap["moe/dropped_fraction"]) == 0.0
    np.testing.assert_allclose(y_drop, y_cap, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the layer


def test_layer_param_and_flop_counts_match_model():
    c = moe_cfg(num_shared_experts=1)
    c.model.activation = "swiglu"
    model = DecoderLM(c.model, rngs=nnx.Rngs(0))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert param_count(c.model) == n
    E, k, D, F = 4, 2, 32, 64
    assert MoEFFN.flops_per_token(c.model) == 2.0 * (D * E + k * 3 * D * F + 3 * D * F)


def test_layer_metrics_and_noise_only_in_training():
    c = moe_cfg(noise="gaussian", noise_scale=1.0)
    layer = MoEFFN(c.model, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 8, 32))
    y_eval, aux = layer(x)
    y_eval2, _ = layer(x, ForwardContext())
    np.testing.assert_array_equal(y_eval, y_eval2)
    ctx = ForwardContext(train=True, step=jnp.int32(3), rng=jax.random.key(1))
    y_train, aux_train = layer(x, ctx)
    assert float(jnp.max(jnp.abs(y_train - y_eval))) > 0
    fractions = [float(aux[f"moe/expert_fraction/e{i}"]) for i in range(4)]
    assert sum(fractions) == pytest.approx(1.0)
    assert float(aux["moe/max_fraction"]) == pytest.approx(max(fractions))
    assert 0 < float(aux["moe/load_entropy"]) <= 1.0 + 1e-6
    assert float(aux["moe/aux_loss"]) == pytest.approx(0.01 * float(aux["moe/balance"]))
    assert float(aux["moe/z_loss"]) == pytest.approx(1e-3 * float(aux["moe/router_z"]))
    assert 1 / 4 <= float(aux["moe/router_confidence"]) <= 1


def test_shared_expert_and_expert_choice_layers_run():
    for moe in (dict(num_shared_experts=1), dict(router="expert_choice", capacity_factor=1.0)):
        layer = MoEFFN(moe_cfg(**moe).model, rngs=nnx.Rngs(0))
        y, aux = layer(jax.random.normal(jax.random.key(0), (2, 8, 32)))
        assert y.shape == (2, 8, 32) and bool(jnp.all(jnp.isfinite(y)))
        if "router" in moe:  # every expert takes exactly C tokens: balanced by construction
            assert float(aux["moe/max_fraction"]) == pytest.approx(0.25)


def test_dead_expert_window():
    c = moe_cfg(dead_window=3)
    c.model.n_layers = 2
    c.model.ffn_every = 2  # layer 1 only
    hist = health.init_load_history(c.model)
    assert hist["load"].shape == (1, 3, 4)

    def metrics(fr):
        return {f"moe/expert_fraction/e{i}/layer_1": jnp.float32(f) for i, f in enumerate(fr)}

    hist, out = health.update_load_history(hist, metrics([0.5, 0.5, 0.0, 0.0]), c.model)
    assert float(out["moe/dead_experts/layer_1"]) == 2
    for _ in range(2):
        hist, out = health.update_load_history(hist, metrics([0.3, 0.3, 0.4, 0.0]), c.model)
    assert float(out["moe/dead_experts"]) == 1  # expert 2 got 0.8/3 of the load over the window
    for _ in range(3):  # the window forgets older steps
        hist, out = health.update_load_history(hist, metrics([0.25] * 4), c.model)
    assert float(out["moe/dead_experts"]) == 0
    assert health.init_load_history(apply_smoke(base_config()).model) == {}


# --------------------------------------------------------------------------- expert parallelism


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["capacity", "dropless"])
def test_expert_parallel_matches_single_device(devices, mode):
    def cfg(shape):
        c = moe_cfg(dispatch=mode, capacity_factor=1.0)
        c.data.update(batch_size=16, seq_len=16)
        c.mesh.shape.update(data=1, fsdp=1, tensor=1, expert=1)
        c.mesh.shape.update(**shape)
        c.mesh.rules = "fsdp"
        return c

    s1, state1, l1 = first_losses(cfg({}), devices[:1], n=3)
    s8, state8, l8 = first_losses(cfg({"data": 2, "expert": 4}), devices, n=3)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    # Parameters after 3 updates (so the gradients) agree; experts really are sharded.
    for a, b in zip(jax.tree.leaves(state8["params"]), jax.tree.leaves(state1["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)
    w_in = state8["params"]["blocks"][0]["ffn"]["w_in_EDF"]
    assert w_in.sharding.spec[0] == "expert"
    assert float(jax.device_get(state8["stats"]["seen"])) == 3


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("field,value,match", [
    ("top_k", 5, "model.moe.top_k=5 exceeds model.moe.num_experts=4"),
    ("top_k", 0, "model.moe.top_k=0"),
    ("capacity_factor", 0.0, "model.moe.capacity_factor=0.0"),
    ("eval_capacity_factor", -1.0, "model.moe.eval_capacity_factor=-1.0"),
    ("balance_weight", -0.01, "model.moe.balance_weight=-0.01"),
    ("z_loss_weight", -1.0, "model.moe.z_loss_weight=-1.0"),
    ("dispatch", "magic", "model.moe.dispatch='magic'"),
    ("noise", "loud", "model.moe.noise='loud'"),
])
def test_bad_moe_config_is_one_line_error(field, value, match):
    c = moe_cfg()
    c.model.moe[field] = value
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace("[", r"\[")) as e:
        validate_model_config(c.model)
    assert "\n" not in str(e.value)


def test_experts_not_divisible_by_expert_axis(devices):
    c = moe_cfg()
    c.model.moe.num_experts = 6
    c.mesh.shape.update(data=2, expert=4)
    with pytest.raises(ConfigError, match="model.moe.num_experts=6 is not divisible by the expert mesh axis size 4"):
        loop.setup(c, devices)


# --------------------------------------------------------------------------- studies and benchmark


def test_moe_vs_dense_study_matches_flops_and_params(tmp_path):
    from experiments.study import expand, load_study
    from models.flops import train_flops_per_token

    runs = {r.point: r for r in expand(load_study("experiments/studies/moe_vs_dense.py"), tmp_path) if r.seed == 0}
    fpt = {p: train_flops_per_token(r.config.model, r.config.data.seq_len) for p, r in runs.items()}
    params = {p: param_count(r.config.model) for p, r in runs.items()}
    assert fpt["moe"] == pytest.approx(fpt["dense_flops"], rel=0.01)
    assert params["moe"] == pytest.approx(params["dense_params"], rel=0.01)
    assert params["moe"] > 2 * params["dense_flops"] and fpt["dense_params"] > 2 * fpt["moe"]
    assert len({r.steps for r in runs.values()}) == 1  # the same tokens for every arm


@pytest.mark.slow
def test_collapse_smoke_study_reports_every_metric(tmp_path):
    from experiments.study.results import load_results
    from experiments.study import load_study, run_study

    run_study(load_study("experiments/studies/moe_collapse.py:smoke"), tmp_path, log=lambda *_: None)
    records = load_results(tmp_path / "results.jsonl")
    assert sorted({r["point"] for r in records}) == ["aux", "aux_noise", "capacity", "no_aux"]
    assert all(0 < r["final"]["eval/moe/load_entropy"] <= 1 + 1e-6 for r in records)
    assert "higher is better" in (tmp_path / "report_moe_load_entropy.md").read_text()
    assert "lower is better" in (tmp_path / "report.md").read_text()


def test_moe_benchmark_runs_on_tiny_sizes(capsys):
    from benchmarks import moe as bench

    bench.main(["--tokens", "64", "--d-model", "16", "--d-ff", "32", "--experts", "4", "--overhead-experts", "4",
                "--repeats", "1"])
    out = capsys.readouterr().out
    assert "dropless (blocked)" in out and "overhead" in out
