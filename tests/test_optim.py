"""Optimizer and objective options (issue 18): LR schedules, z-loss, bfloat16 moments, per-group norms.

Each is checked against an explicit formula or an explicit float32 reference.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import smoke_cfg
from nn.errors import ConfigError
from trainer import optim

PEAK, END_RATIO, WARMUP, STEPS = 1e-2, 0.1, 10, 100
END = PEAK * END_RATIO


def optim_cfg(**kw):
    c = ml_collections.ConfigDict(dict(learning_rate=PEAK, warmup_steps=WARMUP, min_lr_ratio=END_RATIO,
                                       schedule="cosine", decay_fraction=0.2, decay_shape="1-sqrt"))
    c.update(kw)
    return c


def lr_at(cfg, steps):
    sched = optim.lr_schedule(cfg, STEPS)
    return np.array([float(sched(jnp.asarray(t, jnp.int32))) for t in steps])


def warmup(t):
    return PEAK * t / WARMUP


STEPS_TO_CHECK = [0, 1, 5, 9, 10, 11, 50, 79, 80, 81, 85, 90, 99, 100, 120]


def test_cosine_schedule_is_warmup_then_cosine_to_the_end_value():
    def want(t):
        if t < WARMUP:
            return warmup(t)
        frac = min(t - WARMUP, STEPS - WARMUP) / (STEPS - WARMUP)
        return END + (PEAK - END) * 0.5 * (1 + math.cos(math.pi * frac))
    np.testing.assert_allclose(lr_at(optim_cfg(), STEPS_TO_CHECK), [want(t) for t in STEPS_TO_CHECK],
                               rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_schedule_holds_the_peak_then_decays_over_the_last_fraction(shape):
    decay = round(0.2 * STEPS)  # 20 steps: 80 .. 100
    start = STEPS - decay

    def want(t):
        if t < WARMUP:
            return warmup(t)
        if t < start:
            return PEAK
        frac = min((t - start) / decay, 1.0)
        g = 1 - frac if shape == "linear" else 1 - math.sqrt(frac)
        return END + (PEAK - END) * g

    got = lr_at(optim_cfg(schedule="wsd", decay_shape=shape), STEPS_TO_CHECK)
    np.testing.assert_allclose(got, [want(t) for t in STEPS_TO_CHECK], rtol=1e-5, atol=1e-9)
    # The two shapes differ in the decay phase: 1-sqrt drops faster at first (Hägele et al. 2024).
    assert got[STEPS_TO_CHECK.index(85)] == pytest.approx(want(85), rel=1e-5)


def test_constant_schedule_and_zero_warmup():
    got = lr_at(optim_cfg(schedule="constant"), STEPS_TO_CHECK)
    np.testing.assert_allclose(got, [warmup(t) if t < WARMUP else PEAK for t in STEPS_TO_CHECK], rtol=1e-6)
    np.testing.assert_allclose(lr_at(optim_cfg(schedule="wsd", warmup_steps=0, decay_shape="linear"), [0, 79, 90]),
                               [PEAK, PEAK, END + (PEAK - END) * 0.5], rtol=1e-6)


@pytest.mark.parametrize("field,value,msg", [
    ("schedule", "cosin", "optim.schedule='cosin' must be one of ['cosine', 'wsd', 'constant']"),
    ("decay_shape", "sqrt", "optim.decay_shape='sqrt' must be one of ['linear', '1-sqrt']"),
    ("decay_fraction", 0.0, "optim.decay_fraction=0.0 must be a number in (0, 1]"),
    ("decay_fraction", 0.95, "exceed train.num_steps"),
    ("moment_dtype", "float16", "optim.moment_dtype='float16' must be one of ['float32', 'bfloat16']"),
    ("z_loss", -1e-4, "optim.z_loss=-0.0001 must be a number >= 0"),
])
def test_bad_optim_values_are_one_line_config_errors(field, value, msg):
    cfg = optim_cfg(schedule="wsd", moment_dtype="float32", z_loss=0.0)
    cfg[field] = value
    with pytest.raises(ConfigError, match=None) as e:
        optim.make_optimizer(cfg if field != "x" else cfg, STEPS)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_z_loss_objective_is_ce_plus_weight_times_mean_log_z_squared(devices):
    """The LM task's objective and metrics against CE and log-sum-exp computed in float64 numpy."""
    from flax import nnx

    from nn.context import ForwardContext
    from tasks.base import z_loss
    from trainer import loop

    w = 0.01
    cfg = smoke_cfg()
    cfg.optim.z_loss = w
    s = loop.setup(cfg, devices[:1])
    task, graphdef = s.task, s.graphdef
    with jax.set_mesh(s.mesh):
        params = loop.init_state(s)["params"]  # jitted (building the model eagerly takes seconds)
    batch = {k: jnp.asarray(v) for k, v in task.train_batch(0).items()}
    # Weights with zeros (padding): both terms are means over the weighted positions only.
    batch["weights"] = jnp.asarray(np.random.default_rng(0).random(batch["targets"].shape) < 0.7, jnp.float32)

    @jax.jit
    def run(params, batch):
        model = nnx.merge(graphdef, params)
        ctx = ForwardContext(train=False, step=jnp.zeros((), jnp.int32), rng=jax.random.key(0))
        return task.loss(model, batch, ctx), model(batch["inputs"])[0]

    (loss, metrics), logits = run(params, batch)
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    tgt = np.take_along_axis(logits, np.asarray(batch["targets"])[..., None].astype(np.int64), -1)[..., 0]
    wts = np.asarray(batch["weights"], np.float64)
    ce = ((lse - tgt) * wts).sum() / wts.sum()
    z_raw = (lse ** 2 * wts).sum() / wts.sum()
    assert z_raw > 1.0  # log Z of a fresh model is about log(256): the term is not trivially 0
    assert float(metrics["ce_loss"]) == pytest.approx(ce, rel=1e-5)
    assert float(metrics["z_loss"]) == pytest.approx(z_raw, rel=1e-5)
    assert float(metrics["z_loss_weighted"]) == pytest.approx(w * z_raw, rel=1e-5)
    assert float(loss) == float(metrics["loss"]) == pytest.approx(ce + w * z_raw, rel=1e-5)
    # Off (the default): no term and no metric, so the objective is what it was before the option.
    assert z_loss(jnp.asarray(logits), batch["weights"], 1.0, 0.0) == (None, {})


def _explicit_group_sq(tree) -> dict[str, float]:
    """{group: sum of squares} in float64 from the unscanned tree: blocks.<i> -> layer_<i>, else the top key."""
    out: dict[str, float] = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
        name = f"layer_{keys[1]}" if keys[0] == "blocks" else str(keys[0])
        out[name] = out.get(name, 0.0) + float((np.asarray(x, np.float64) ** 2).sum())
    return out


@pytest.mark.slow
def test_the_smoke_runs_logged_norms_add_up(smoke_run):
    """The shared smoke run's rows (free): groups add up to the whole-model norms, ratios are update / param."""
    from conftest import read_metrics

    rows = [r for r in read_metrics(smoke_run.workdir) if "train/loss" in r]
    assert [r["step"] for r in rows] == [2, 4, 6]
    for r in rows:
        groups = sorted(k.split("/", 2)[2] for k in r if k.startswith("train/param_norm/"))
        assert groups == ["embed", "final_norm", "layer_0", "layer_1"]
        sq = lambda kind: sum(r[f"train/{kind}/{g}"] ** 2 for g in groups)  # noqa: E731
        assert math.sqrt(sq("grad_norm")) == pytest.approx(r["train/grad_norm"], rel=1e-5)
        assert math.sqrt(sq("param_norm")) == pytest.approx(r["train/param_norm"], rel=1e-5)
        assert math.sqrt(sq("update_norm")) / r["train/param_norm"] == pytest.approx(r["train/update_ratio"], rel=1e-5)
        for g in groups:
            assert r[f"train/update_ratio/{g}"] == pytest.approx(
                r[f"train/update_norm/{g}"] / r[f"train/param_norm/{g}"], rel=1e-5)
            assert 0 < r[f"train/update_ratio/{g}"] < 0.5


@pytest.mark.slow
def test_per_group_norms_of_one_step_equal_explicit_norms(devices):
    """One train step of the smoke LM: each group's logged norms against the params, grads and update in numpy."""
    from flax import nnx

    from nn.context import ForwardContext
    from trainer import loop

    cfg = smoke_cfg()  # the shared smoke run's config: its compiled train step is reused
    s = loop.setup(cfg, devices[:1])
    with jax.set_mesh(s.mesh):
        step_fn = loop.jit_train_step(s, s.task.train_batch(0))
        # Step 0 runs at learning rate 0 (the warmup starts there) and leaves the parameters as they were;
        # step 1 is the one checked.
        state, _ = step_fn(loop.init_state(s), loop.to_global(s.task.train_batch(0), s.batch_shardings))
        p0 = jax.device_get(state["params"])
        batch = loop.to_global(s.task.train_batch(1), s.batch_shardings)
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 1)

        @jax.jit
        def grads_of(params, batch):
            def f(p):
                ctx = ForwardContext(train=True, step=jnp.asarray(1, jnp.int32), rng=rng)
                return s.task.loss(nnx.merge(s.graphdef, p), batch, ctx)[0]
            return jax.grad(f)(params)

        g = jax.device_get(grads_of(state["params"], batch))
        new_state, m = step_fn(state, batch)
        p1 = jax.device_get(new_state["params"])
    m = jax.device_get(m)
    pn, gn = _explicit_group_sq(p0), _explicit_group_sq(g)
    un = _explicit_group_sq(jax.tree.map(lambda a, b: np.asarray(b, np.float64) - a, p0, p1))
    assert sorted(pn) == ["embed", "final_norm", "layer_0", "layer_1"]
    assert {k.split("/", 2)[2] for k in m if k.startswith("train/param_norm/")} == set(pn)
    for name in pn:
        assert m[f"train/param_norm/{name}"] == pytest.approx(math.sqrt(pn[name]), rel=1e-5)
        assert m[f"train/grad_norm/{name}"] == pytest.approx(math.sqrt(gn[name]), rel=1e-4)
        # p1 - p0 in float32 carries the rounding of p1 (|p| ~ 20x the update): 1e-4 relative.
        assert m[f"train/update_norm/{name}"] == pytest.approx(math.sqrt(un[name]), rel=1e-4)
        assert m[f"train/update_ratio/{name}"] == pytest.approx(math.sqrt(un[name] / pn[name]), rel=1e-4)
        assert m[f"train/update_norm/{name}"] > 0
    assert m["train/grad_norm"] == pytest.approx(math.sqrt(sum(gn.values())), rel=1e-4)
    assert m["train/param_norm"] == pytest.approx(math.sqrt(sum(pn.values())), rel=1e-5)


def test_scanned_layout_gives_the_same_groups_as_the_unscanned_one():
    """`layers.<j>` stacked over G scan steps (models/stack.py) -> layer_<g * P + j>, as `blocks.<i>` gives."""
    from trainer.norms import group_sq_sums

    rng = np.random.default_rng(0)
    n_layers, period = 6, 2
    blocks = {i: {"attn": {"w": rng.normal(size=(3, 4))}, "norm": rng.normal(size=(4,))} for i in range(n_layers)}
    unscanned = {"embed": {"t": rng.normal(size=(5, 4))}, "blocks": blocks}
    from models.config import default_model_config
    from models.stack import stack_params

    mcfg = default_model_config()
    mcfg.update(n_layers=n_layers, ffn_every=period)
    scanned = stack_params(unscanned, mcfg)  # the model's own conversion (`layers.<j>`, leading axis g)
    assert scanned["layers"][1]["norm"].shape == (n_layers // period, 4)
    a, b = group_sq_sums(unscanned), group_sq_sums(scanned)
    assert sorted(a) == sorted(b) == sorted(["embed", *(f"layer_{i}" for i in range(n_layers))])
    want = _explicit_group_sq(unscanned)
    for k in a:
        assert float(a[k]) == pytest.approx(want[k], rel=1e-5) and float(b[k]) == pytest.approx(want[k], rel=1e-5)
    # A prefix above the blocks is kept (CLIP towers).
    assert sorted(group_sq_sums({"image": unscanned, "logit_scale": np.ones(())})) == sorted(
        ["image", "logit_scale", *(f"image.layer_{i}" for i in range(n_layers))])


# bfloat16 keeps 8 bits of mantissa: each stored moment is off by up to 2^-9 relative. Measured over
# these 10 steps: moments 0.3% and parameter changes 0.13% from float32's (norm-wise); the tolerance is
# 1%. A wrapper that lost either moment (e.g. kept only the fresh gradient's) is off by tens of %.
BF16_MOMENT_RTOL = 1e-2


def test_bfloat16_moments_follow_float32_moments_over_ten_steps():
    cfg = optim_cfg(schedule="constant", warmup_steps=0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                    grad_clip=1.0, learning_rate=1e-2)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32), "b": jnp.asarray(rng.normal(size=(32,)),
                                                                                         jnp.float32)}
    # A fixed direction plus noise, as gradients of a real run: the moments build up over the steps.
    grads = [jax.tree.map(lambda p: jnp.asarray(0.01 * (1.0 + rng.normal(size=p.shape)), jnp.float32), params)
             for _ in range(10)]

    def run(moment_dtype):
        cfg.moment_dtype = moment_dtype
        tx, _ = optim.make_optimizer(cfg, STEPS)

        @jax.jit
        def go(params):
            state = tx.init(params)
            for g in grads:
                u, state = tx.update(g, state, params)
                params = jax.tree.map(jnp.add, params, u)
            return params, state
        return go(params)

    p32, s32 = run("float32")
    p16, s16 = run("bfloat16")
    mu16, nu16 = s16[1][0].mu, s16[1][0].nu  # chain(clip, chain(adam, decay, lr)): the Adam state
    assert mu16["w"].dtype == nu16["w"].dtype == jnp.bfloat16 and s32[1][0].mu["w"].dtype == jnp.float32
    for got, want in ((mu16, s32[1][0].mu), (nu16, s32[1][0].nu)):
        got, want = np.asarray(got["w"], np.float32), np.asarray(want["w"])
        assert np.linalg.norm(got - want) <= BF16_MOMENT_RTOL * np.linalg.norm(want)
    for k in params:
        d32, d16 = np.asarray(p32[k] - params[k]), np.asarray(p16[k] - params[k])
        assert np.abs(d32).mean() > 0.05  # the ten steps moved the parameters (lr 1e-2 per step)
        assert np.linalg.norm(d16 - d32) <= BF16_MOMENT_RTOL * np.linalg.norm(d32), k


def test_bfloat16_moments_in_the_train_state_are_sharded_like_their_parameters(devices):
    """The loop's abstract state: every Adam moment in bfloat16, with its parameter's sharding (fsdp 8)."""
    from trainer import loop

    cfg = smoke_cfg()
    cfg.optim.moment_dtype = "bfloat16"
    cfg.mesh.shape.update(data=1, fsdp=8)
    s = loop.setup(cfg, devices)
    opt = loop.abstract_state(s)["opt_state"]
    adam = opt[1][0]
    for moments in (adam.mu, adam.nu):
        flat_m = jax.tree_util.tree_flatten_with_path(moments)[0]
        flat_p = dict(jax.tree_util.tree_flatten_with_path(s.param_shardings)[0])
        assert flat_m and all(x.dtype == jnp.bfloat16 for _, x in flat_m)
        assert all(x.sharding == flat_p[path] for path, x in flat_m)
    assert any(x.sharding.spec != jax.sharding.PartitionSpec() for _, x in flat_m)  # fsdp shards some
