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
from conftest import first_losses


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


def _np_balance(probs, expert, groups, kind):
    """Reference balancing loss: f and P counted group by group in float64 numpy, averaged over groups."""
    B, S, E = probs.shape
    vals = []
    for rows in ([list(range(B))] if groups == "batch" else [[b] for b in range(B)]):
        routes = np.asarray(expert)[rows].reshape(-1)
        f = np.array([np.sum(routes == i) for i in range(E)], np.float64) / routes.size
        P = np.asarray(probs, np.float64)[rows].reshape(-1, E).mean(axis=0)
        vals.append(E * np.sum(f * P) if kind == "switch" else np.sum((f - 1.0 / E) ** 2))
    return float(np.mean(vals))


@pytest.mark.parametrize("groups", ["batch", "sequence"])
@pytest.mark.parametrize("kind", ["switch", "squared"])
def test_balance_loss_per_batch_and_per_sequence_match_numpy(groups, kind):
    B, S, E, k = 3, 7, 5, 2
    probs = jax.nn.softmax(2.0 * jax.random.normal(jax.random.key(1), (B, S, E)), axis=-1)
    expert = jax.lax.top_k(probs, k)[1]
    fn = losses.BALANCE_LOSSES[kind]
    assert float(fn(probs, expert, groups)) == pytest.approx(_np_balance(probs, expert, groups, kind), rel=1e-5)
    if kind == "switch":
        # d/dP[g,s,i] = E f_{group(g), i} / (tokens per group x number of groups): the gradient sees each
        # sequence's own route shares when grouped by sequence, the batch's when pooled.
        g = np.asarray(jax.grad(lambda p: fn(p, expert, groups))(probs))
        onehot = np.asarray(jax.nn.one_hot(expert, E)).sum(axis=2)  # [B, S, E] routes per token
        f = onehot.sum(axis=1) / (S * k) if groups == "sequence" else np.broadcast_to(onehot.sum((0, 1)) / (B * S * k), (B, E))
        n = S * B
        np.testing.assert_allclose(g, np.broadcast_to(E * f[:, None, :] / n, (B, S, E)), rtol=1e-5)


def test_per_sequence_balance_loss_sees_imbalance_the_pooled_one_misses():
    # Sequence 0 sends everything to expert 0, sequence 1 to expert 1 (confident router): balanced over the
    # batch (pooled loss 1, its minimum), fully unbalanced within each sequence (per-sequence loss E = 2).
    probs = jnp.array([[[1.0, 0.0]] * 4, [[0.0, 1.0]] * 4])
    expert = jnp.array([[[0]] * 4, [[1]] * 4], jnp.int32)
    assert float(losses.switch_balance_loss(probs, expert, "batch")) == pytest.approx(1.0)
    assert float(losses.switch_balance_loss(probs, expert, "sequence")) == pytest.approx(2.0)
    assert float(losses.squared_balance_loss(probs, expert, "batch")) == pytest.approx(0.0)
    assert float(losses.squared_balance_loss(probs, expert, "sequence")) == pytest.approx(0.5)


def test_load_health_defines_collapse():
    E = 16
    two = jnp.zeros(E).at[:2].set(0.5)  # top-2 onto exactly two experts
    h = {k: float(v) for k, v in health.load_health(two).items()}
    assert h["moe/load_entropy"] == pytest.approx(math.log(2) / math.log(E))
    assert h["moe/collapsed"] == 1.0 and h["moe/starved_experts"] == 14 and h["moe/max_fraction"] == 0.5
    h = {k: float(v) for k, v in health.load_health(jnp.full(E, 1.0 / E)).items()}
    assert h["moe/load_entropy"] == pytest.approx(1.0) and h["moe/collapsed"] == 0.0 and h["moe/starved_experts"] == 0
    # Just either side of the threshold: entropy 0.5 is sqrt(E) = 4 effective experts.
    four = jnp.zeros(E).at[:4].set(0.25)
    assert float(health.load_entropy(four)) == pytest.approx(0.5)
    assert float(health.load_health(four.at[0].add(0.01).at[1].add(-0.01))["moe/collapsed"]) == 1.0
    five = jnp.zeros(E).at[:5].set(0.2)  # 5 > 4 effective experts, but 11 of 16 starved: collapsed
    assert float(health.load_entropy(five)) > 0.5 and float(health.load_health(five)["moe/collapsed"]) == 1.0
    eight = jnp.zeros(E).at[0].set(0.5).at[1:8].set(0.5 / 7)  # one expert in every top 2, 7 share the rest
    h = {k: float(v) for k, v in health.load_health(eight).items()}
    assert h["moe/load_entropy"] > 0.5 and h["moe/starved_experts"] == 8 and h["moe/collapsed"] == 1.0
    nine = jnp.zeros(E).at[0].set(0.5).at[1:9].set(0.5 / 8)  # 7 starved: not collapsed
    assert float(health.load_health(nine)["moe/collapsed"]) == 0.0


def test_router_init_scale_scales_the_initial_router():
    base = MoEFFN(moe_cfg().model, rngs=nnx.Rngs(0)).router_DE[...]
    scaled = MoEFFN(moe_cfg(router_init_scale=8.0).model, rngs=nnx.Rngs(0)).router_DE[...]
    np.testing.assert_allclose(np.asarray(scaled), 8.0 * np.asarray(base), rtol=1e-6)


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["blocked", "ragged_dot", "pallas"])
def test_layer_dropless_impls_agree_with_capacity_without_drops(impl):
    base = dict(dispatch="capacity", capacity_factor=2.0, eval_capacity_factor=2.0)  # C = S: nothing dropped
    x = jax.random.normal(jax.random.key(0), (2, 8, 32))
    y_cap, aux_cap = MoEFFN(moe_cfg(**base).model, rngs=nnx.Rngs(0))(x)
    layer = MoEFFN(moe_cfg(dispatch="dropless", gmm_impl=impl).model, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)
    y_drop, _ = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, x)  # Pallas interpret mode wants jit
    assert float(aux_cap.metrics["moe/dropped_fraction"]) == 0.0
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


@pytest.mark.slow
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
    fractions = [float(aux.breakdown[f"moe/expert_fraction/e{i}"]) for i in range(4)]
    assert sum(fractions) == pytest.approx(1.0)
    assert float(aux.metrics["moe/max_fraction"]) == pytest.approx(max(fractions))
    assert 0 < float(aux.metrics["moe/load_entropy"]) <= 1.0 + 1e-6
    assert float(aux.losses["moe/aux_loss"]) == pytest.approx(0.01 * float(aux.metrics["moe/balance"]))
    assert float(aux.losses["moe/z_loss"]) == pytest.approx(1e-3 * float(aux.metrics["moe/router_z"]))
    assert 1 / 4 <= float(aux.metrics["moe/router_confidence"]) <= 1
    want = health.load_health(jnp.asarray(fractions))
    for name in ("moe/collapsed", "moe/starved_experts"):
        assert float(aux.metrics[name]) == float(want[name])
    # The layer hands its groups to the loss: per sequence, against the numpy reference on its own routing.
    layer.balance_groups = "sequence"
    _, aux_seq = layer(x)
    probs = jax.nn.softmax(jnp.einsum("BTD,DE->BTE", x, layer.router_DE[...]), axis=-1)
    want = _np_balance(probs, jax.lax.top_k(probs, 2)[1], "sequence", "switch")
    assert float(aux_seq.metrics["moe/balance"]) == pytest.approx(want, rel=1e-5)
    assert want != pytest.approx(float(aux.metrics["moe/balance"]), rel=1e-4)


def _np_act(h, activation, h_gate=None):
    if activation == "swiglu":
        return h_gate / (1.0 + np.exp(-h_gate)) * h  # silu(x W_gate) * (x W_in)
    return 0.5 * h * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (h + 0.044715 * h ** 3)))  # tanh GELU


def _layer_oracle(layer, x_BTD):
    """The MoE layer at evaluation, one token and one expert at a time in float64 numpy.

    Reads only the layer's parameters and its config fields; routing, capacity
    slots (priority: every token's first choice in token order, then second
    choices), gates and the shared expert are re-derived here, independently
    of moe/router.py and moe/dispatch.py.
    """
    x = np.asarray(x_BTD, np.float64)
    B, T, D = x.shape
    E, k = layer.num_experts, layer.k
    get = lambda name: np.asarray(getattr(layer, name)[...], np.float64)  # noqa: E731
    w_in, w_out = get("w_in_EDF"), get("w_out_EFD")
    w_gate = get("w_gate_EDF") if layer.activation == "swiglu" else None

    def expert(e, x_D):
        gate_h = None if w_gate is None else x_D @ w_gate[e]
        return _np_act(x_D @ w_in[e], layer.activation, gate_h) @ w_out[e]

    logits = x @ get("router_DE")
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    C = max(1, math.ceil(layer.capacity_factor[1] * T * k / E))  # eval capacity
    y = np.zeros_like(x)
    for b in range(B):
        if layer.router_type == "expert_choice":
            for e in range(E):
                for t in np.argsort(-probs[b, :, e], kind="stable")[:min(C, T)]:
                    y[b, t] += probs[b, t, e] * expert(e, x[b, t])
            continue
        chosen = [np.argsort(-probs[b, t], kind="stable")[:k] for t in range(T)]
        taken = [0] * E
        for j in range(k):  # priority order: every first choice, then every second choice, ...
            for t in range(T):
                e = chosen[t][j]
                if layer.mode == "capacity" and taken[e] >= C:
                    continue  # over capacity: the route is dropped
                taken[e] += 1
                g = probs[b, t, chosen[t]]
                gate = g[j] / g.sum() if layer.renormalize else g[j]
                y[b, t] += gate * expert(e, x[b, t])
    if layer.has_shared:
        s_gate = x @ get("shared_gate_DF") if layer.activation == "swiglu" else None
        y += _np_act(x @ get("shared_in_DF"), layer.activation, s_gate) @ get("shared_out_FD")
    return y


LAYER_CASES = {
    "capacity_no_drops": dict(),  # eval factor 2.0, k=2, E=4: C = T
    "capacity_drops": dict(eval_capacity_factor=0.5),  # C = 2 of 8 tokens: routes dropped
    "top1_raw_gates": dict(top_k=1, renormalize=False),
    "dropless": dict(dispatch="dropless", gmm_impl="ragged_dot", eval_capacity_factor=0.25),
    "shared_expert_swiglu": dict(num_shared_experts=1, activation="swiglu"),
    "expert_choice": dict(router="expert_choice", eval_capacity_factor=0.5),  # each expert takes its top 2
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_equals_per_token_loop_over_chosen_experts(case):
    moe = dict(LAYER_CASES[case])
    activation, top_k = moe.pop("activation", "gelu"), moe.pop("top_k", 2)
    c = moe_cfg(**moe)
    c.model.activation, c.model.moe.top_k = activation, top_k
    layer = MoEFFN(c.model, rngs=nnx.Rngs(0))
    # Larger router weights than the init so the gates are far from uniform (and top-k has no near-ties).
    layer.router_DE[...] = layer.router_DE[...] * 50.0
    x = jax.random.normal(jax.random.key(0), (2, 8, 32))
    y = layer(x)[0]
    want = _layer_oracle(layer, x)
    assert np.abs(want).max() > 1e-3  # not a vacuous comparison of zeros
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-4, atol=1e-6)


def test_shared_expert_and_expert_choice_layers_run():
    for moe in (dict(num_shared_experts=1), dict(router="expert_choice", capacity_factor=1.0)):
        layer = MoEFFN(moe_cfg(**moe).model, rngs=nnx.Rngs(0))
        x = jax.random.normal(jax.random.key(0), (2, 8, 32))
        y, aux = layer(x)
        np.testing.assert_allclose(np.asarray(y, np.float64), _layer_oracle(layer, x), rtol=1e-4, atol=1e-6)
        if "router" in moe:  # every expert takes exactly C tokens: balanced by construction
            assert float(aux.metrics["moe/max_fraction"]) == pytest.approx(0.25)


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
        c.model.n_layers = 1  # one MoE layer holds every sharded expert weight
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
    assert float(jax.device_get(state8["stats"]["ffn"]["moe"]["seen"])) == 3  # models/variants.py layout


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
    ("balance_groups", "group", "model.moe.balance_groups='group' must be one of ['batch', 'sequence']"),
    ("router_init_scale", 0.0, "model.moe.router_init_scale=0.0 must be a finite number > 0"),
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


@pytest.mark.slow
def test_lm_objective_is_cross_entropy_plus_weighted_router_losses():
    """LMTask.loss = CE + balance_weight * balance + z_loss_weight * router_z, each the mean over MoE layers.

    CE is recomputed in float64 from the model's logits and the raw (unweighted)
    balance and router_z from each layer's LayerAux, so a router loss left out of
    the objective, counted twice, or weighted wrongly is caught.
    """
    from tasks.lm import LMTask

    def run(balance_weight, z_loss_weight):
        c = moe_cfg(balance_weight=balance_weight, z_loss_weight=z_loss_weight)
        c.model.n_layers = 3
        c.model.ffn_every = 1
        task = LMTask(c)
        model = task.build_model(nnx.Rngs(0))
        batch = {k: jnp.asarray(v) for k, v in task.train_batch(0).items()}
        loss, metrics = task.loss(model, batch, ForwardContext())
        logits, _, aux = model(batch["inputs"])
        assert len(aux) == 3
        logits = np.asarray(logits, np.float64)
        logz = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
        nll = logz - np.take_along_axis(logits, np.asarray(batch["targets"])[..., None], -1)[..., 0]
        w = np.asarray(batch.get("weights", np.ones(nll.shape)), np.float64)
        ce = float(np.sum(nll * w) / np.sum(w))
        balance = float(np.mean([float(a.metrics["moe/balance"]) for a in aux]))
        router_z = float(np.mean([float(a.metrics["moe/router_z"]) for a in aux]))
        assert float(metrics["moe/balance"]) == pytest.approx(balance, rel=1e-6)
        assert float(metrics["moe/router_z"]) == pytest.approx(router_z, rel=1e-6)
        assert float(metrics["loss"]) == float(loss)
        np.testing.assert_allclose(float(loss), ce + balance_weight * balance + z_loss_weight * router_z, rtol=1e-6)
        return float(loss), balance, router_z

    loss_a, balance, router_z = run(0.01, 1e-3)
    assert balance > 0.5 and router_z > 0  # non-trivial terms
    loss_b, balance_b, _ = run(0.51, 1e-3)
    assert balance_b == balance  # the weight scales the term, it does not change the routing
    # The differences cancel the CE (~5.5) in float32: rtol 1e-5 on them is ~1e-6 on the objective.
    np.testing.assert_allclose(loss_b - loss_a, 0.5 * balance, rtol=1e-5)
    loss_c, _, _ = run(0.01, 0.101)
    np.testing.assert_allclose(loss_c - loss_a, 0.1 * router_z, rtol=1e-5)


def test_collect_aux_adds_losses_only_and_eval_drops_breakdown():
    from nn.layer_aux import LayerAux
    from tasks.base import aux_eval_sums, collect_aux

    f = jnp.float32
    aux = [LayerAux({"x/a_loss": f(1.0)}, {"x/m": f(10.0)}, {"x/part/p0": f(0.5)}),
           LayerAux.none(),  # a dense layer
           LayerAux({"x/a_loss": f(3.0)}, {"x/m": f(20.0), "x/not_a_loss": f(7.0)}, {"x/part/p0": f(0.25)})]
    extra, metrics = collect_aux(aux)
    assert float(extra) == 2.0  # the mean over the two layers that report it; metrics never enter
    assert {k: float(v) for k, v in metrics.items()} == {
        "x/a_loss": 2.0, "x/a_loss/layer_0": 1.0, "x/a_loss/layer_2": 3.0, "x/m": 15.0, "x/m/layer_0": 10.0,
        "x/m/layer_2": 20.0, "x/not_a_loss": 7.0, "x/not_a_loss/layer_2": 7.0, "x/part/p0": 0.375,
        "x/part/p0/layer_0": 0.5, "x/part/p0/layer_2": 0.25}
    assert {k: float(v) for k, v in aux_eval_sums(aux).items()} == {
        "aux:x/a_loss": 2.0, "aux:x/m": 15.0, "aux:x/not_a_loss": 7.0, "aux:batches": 1.0}
    with pytest.raises(ValueError, match="x/m"):
        collect_aux([LayerAux({}, {"x/m": f(1.0)}, {}), LayerAux({"x/m": f(1.0)}, {}, {})])
