"""Cached decoding: logits equal a full forward pass at every step; sampling filters; bad prompts."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nn.errors import InferenceError
from models.decode import PAD_TOKEN, check_prompts, generate, pad_prompts
from models.sampling import SamplingParams, filter_logits, sample_token
from conftest import tiny_model


@functools.lru_cache(maxsize=None)
def jitted_generate(**settings):
    def run(graphdef, params, prompt_BP, lengths_B, rng):
        return generate(nnx.merge(graphdef, params), prompt_BP, lengths_B, rng=rng, **settings)

    return jax.jit(run, static_argnums=0)


def run_generate(model, prompts, **settings):
    prompt_BP, lengths_B = pad_prompts(prompts)
    graphdef, params = nnx.split(model)
    fn = jitted_generate(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    return jax.device_get(fn(graphdef, params, prompt_BP, lengths_B, jax.random.key(0))), lengths_B


@pytest.mark.slow
@pytest.mark.parametrize("n_kv_heads", [2, 4])
def test_cached_logits_equal_full_forward_at_every_step(n_kv_heads):
    model = tiny_model(n_kv_heads=n_kv_heads)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, 64, n)) for n in (3, 11, 7)]
    N = 10
    out, _ = run_generate(model, prompts, max_new_tokens=N, return_logits=True)
    assert (out["num_tokens_B"] == N).all()
    # One jitted causal forward over a fixed-width buffer (positions past a row's end do not reach it).
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda p, tokens_BT: nnx.merge(graphdef, p)(tokens_BT)[0])
    width = max(map(len, prompts)) + N
    for b, p in enumerate(prompts):
        seq = np.zeros((1, width), np.int32)
        seq[0, : len(p) + N] = p + list(out["tokens_BN"][b])
        full_TV = np.asarray(forward(params, jnp.asarray(seq)))[0]
        # Token i was drawn from the logits at position len(p) - 1 + i.
        np.testing.assert_allclose(out["logits_BNV"][b], full_TV[len(p) - 1: len(p) - 1 + N], atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(out["tokens_BN"][b], full_TV[len(p) - 1: len(p) - 1 + N].argmax(-1))


@pytest.mark.slow
def test_stop_tokens_end_rows_and_the_loop():
    model = tiny_model()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    free, _ = run_generate(model, prompts, max_new_tokens=12)
    stop = int(free["tokens_BN"][0, 3])  # row 0's fourth greedy token becomes a stop token
    out, _ = run_generate(model, prompts, max_new_tokens=12, stop_tokens=(stop,))
    toks = out["tokens_BN"][0]
    first = int(np.argmax(free["tokens_BN"][0] == stop))
    assert out["num_tokens_B"][0] == first + 1
    np.testing.assert_array_equal(toks[: first + 1], free["tokens_BN"][0][: first + 1])
    assert (toks[first + 1:] == PAD_TOKEN).all()
    for b in range(2):  # the rows that did not stop are unchanged up to their stop
        n = out["num_tokens_B"][b]
        np.testing.assert_array_equal(out["tokens_BN"][b][:n], free["tokens_BN"][b][:n])


def test_rows_stop_when_the_context_is_full():
    model = tiny_model()
    out, _ = run_generate(model, [[1] * 5, [2] * 14], max_new_tokens=8, context=16)
    np.testing.assert_array_equal(out["num_tokens_B"], [8, 2])  # 14 + 2 = 16 positions


@pytest.mark.slow
def test_top_k_and_top_p_keep_the_right_tokens():
    logits_BV = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))
    kept = lambda p: np.isfinite(np.asarray(filter_logits(logits_BV, p)))
    np.testing.assert_array_equal(kept(SamplingParams(1.0, top_k=2)), [[1, 1, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(kept(SamplingParams(1.0, top_p=0.7)), [[1, 1, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(kept(SamplingParams(1.0, top_p=0.85)), [[1, 1, 1, 0], [0, 1, 1, 1]])
    np.testing.assert_array_equal(kept(SamplingParams(1.0, top_p=0.1)), [[1, 0, 0, 0], [0, 0, 0, 1]])
    # Samples only ever come from the kept set.
    toks = [np.asarray(sample_token(logits_BV, jax.random.key(i), SamplingParams(1.0, top_p=0.7))) for i in range(50)]
    assert set(np.concatenate([t[:1] for t in toks])) <= {0, 1} and set(np.concatenate([t[1:] for t in toks])) <= {2, 3}


@pytest.mark.slow
def test_sampled_generation_is_reproducible_and_varies_with_temperature():
    model = tiny_model()
    a, _ = run_generate(model, [[1, 2, 3]], max_new_tokens=16, sampling=SamplingParams(1.5, top_k=20, top_p=0.95))
    b, _ = run_generate(model, [[1, 2, 3]], max_new_tokens=16, sampling=SamplingParams(1.5, top_k=20, top_p=0.95))
    g, _ = run_generate(model, [[1, 2, 3]], max_new_tokens=16)
    np.testing.assert_array_equal(a["tokens_BN"], b["tokens_BN"])
    assert not np.array_equal(a["tokens_BN"], g["tokens_BN"])


@pytest.mark.parametrize("lengths, context, new, match", [
    ([40], 32, 4, "prompt of 40 tokens does not fit the model context of 32 tokens"),
    ([32], 32, 4, "prompt of 32 tokens does not fit"),
    ([0, 3], 32, 4, "prompt length 0"),
    ([3], 32, 0, "max_new_tokens=0"),
])
def test_bad_prompts_are_one_line_errors(lengths, context, new, match):
    with pytest.raises(InferenceError, match=match) as e:
        check_prompts(lengths, context, new)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=-1.0), "temperature=-1.0"), (dict(top_k=-2), "top_k=-2"), (dict(top_p=0.0), "top_p=0.0"),
])
def test_bad_sampling_settings(kw, match):
    with pytest.raises(InferenceError, match=match):
        SamplingParams(**kw)
