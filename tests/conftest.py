"""Test set-up: 8 fake CPU devices, so mesh code runs as on a small pod slice; a per-session
compilation cache; the shared helpers.

XLA reads the flag when JAX initializes, so it must be set before the first
`import jax` anywhere in the test session.

Helpers shared by several test files live here, as plain functions that a
test module imports with `from conftest import smoke_cfg, first_losses`
(pytest puts tests/ on `sys.path` to load this file, so that import works
under `pytest tests` and `pytest tests/test_x.py` alike, and returns this
very module); test modules never import each other. Fixtures are for what is
computed once and shared: `devices`, and `smoke_run`, the lm_tiny smoke
config trained once per session.
"""
import atexit
import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache per test session, in a fresh temporary folder (so a timed run is a
# cold run), inherited by the train.py subprocesses: the dozen tests that train the same smoke config
# compile its init, train and eval steps once instead of once each (XLA compiles are most of their time).
# Set JAX_COMPILATION_CACHE_DIR yourself to keep the cache across sessions.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE_DIR = tempfile.mkdtemp(prefix="jax_test_compile_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
    atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# Tokenizers and shards that configs prepare on first use (data/sources.py) go to a per-session folder,
# never into the user's ~/.cache; preparation is rename-into-place, so xdist workers may share it.
if "SCALING_STUDIES_DATA" not in os.environ:
    _DATA_DIR = tempfile.mkdtemp(prefix="scaling_studies_test_data_")
    os.environ["SCALING_STUDIES_DATA"] = _DATA_DIR
    atexit.register(shutil.rmtree, _DATA_DIR, ignore_errors=True)
# Tests run tiny shapes, so XLA's compile time dominates and its optimizing passes buy nothing: skipping
# them halved the CPU time of the MoE/Performer/dispatch tests (123 s -> 67 s user time) with every
# tolerance still met. The train.py subprocesses inherit it. JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the
# suite on fully optimized code instead.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds; still run in CI")


@pytest.fixture(scope="session")
def devices():
    devs = jax.devices()
    assert len(devs) == 8, f"expected 8 fake CPU devices, got {len(devs)}"
    return devs


# --------------------------------------------------------------------------
# Configs and short training runs
# --------------------------------------------------------------------------

LM_TINY = "experiments/configs/lm_tiny.py"


def load_config(path: str, arg: str | None = "smoke"):
    """`get_config(arg)` of an experiment config file (path relative to the repository root)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_config_under_test", os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def smoke_cfg(*, lean: bool = False, **train_kw):
    """The lm_tiny `:smoke` config (what `train.py --config experiments/configs/lm_tiny.py:smoke` runs).

    `train_kw` overrides `config.train` fields. `lean` trims what a test of the
    loop's control flow does not look at: no TensorBoard, no text sample, one
    eval batch.
    """
    c = load_config(LM_TINY, "smoke")
    c.train.update(**train_kw)
    if lean:
        c.train.tensorboard = False
        c.data.eval_batches = 1
        c.sample.num_tokens = 0
    return c


def cfg_for(shape: dict, rules: str):
    """A small LM (D=64, 4 heads, batch 16) on the given mesh shape and rule preset."""
    from experiments.configs.defaults import apply_smoke, base_config

    c = apply_smoke(base_config())
    c.model.update(d_model=64, n_heads=4, n_kv_heads=4, d_ff=128)
    c.data.update(batch_size=16, seq_len=32)
    c.mesh.shape.update(data=1, fsdp=1, tensor=1)
    c.mesh.shape.update(**shape)
    c.mesh.rules = rules
    return c


def first_losses(cfg, devices, n: int = 3):
    """(setup, state, [loss of step 1 .. n]) of `cfg` on `devices`, without the loop's I/O."""
    from trainer import loop

    s = loop.setup(cfg, devices)
    with jax.set_mesh(s.mesh):
        state = loop.init_state(s)
        step_fn = loop.jit_train_step(s, s.task.train_batch(0))
        losses = []
        for i in range(n):
            state, m = step_fn(state, loop.to_global(s.task.train_batch(i), s.batch_shardings))
            losses.append(float(m["train/loss"]))
    return s, state, losses


def read_metrics(workdir) -> list[dict]:
    """Every row of `workdir/metrics.jsonl`."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def train_losses(workdir) -> dict[int, float]:
    """{step: train/loss} from `workdir/metrics.jsonl`."""
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def finish_process(proc, timeout: float = 240) -> str:
    """The combined output of a `Popen(..., start_new_session=True)` child; its process group is killed if it hangs."""
    import signal

    try:
        return proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclasses.dataclass(frozen=True)
class SmokeRun:
    """A finished run of `smoke_cfg()`: read it, never write to it (copy `workdir` to continue training)."""

    workdir: str
    summary: dict
    config: object


@pytest.fixture(scope="session")
def experiment_run(tmp_path_factory, devices):
    """experiment_run(path) -> SmokeRun of that config file's `:smoke` config, trained once per session on 1 device.

    Every test that only needs a finished smoke run of an experiment (its
    summary, metrics or checkpoints) shares this one.
    """
    from trainer import loop

    runs: dict[str, SmokeRun] = {}

    def get(path: str) -> SmokeRun:
        if path not in runs:
            cfg = load_config(path, "smoke")
            name = os.path.splitext(os.path.basename(path))[0]
            workdir = str(tmp_path_factory.mktemp(f"smoke_{name}"))
            runs[path] = SmokeRun(workdir, loop.train_and_evaluate(cfg, workdir, devices[:1]), cfg)
        return runs[path]

    return get


@pytest.fixture(scope="session")
def smoke_run(experiment_run) -> SmokeRun:
    """`smoke_cfg()` (lm_tiny `:smoke`) trained once: 6 steps, evaluations and checkpoints at 3 and 6."""
    return experiment_run(LM_TINY)


# --------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------

def tiny_model(**kw):
    """A 2-layer decoder LM (vocab 64, D=32, GQA 4/2 heads) with seed-0 parameters; `kw` overrides model fields."""
    from flax import nnx

    from models.config import default_model_config
    from models.lm import DecoderLM

    cfg = default_model_config()
    cfg.update({**dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64), **kw})
    return DecoderLM(cfg, rngs=nnx.Rngs(0))


@functools.lru_cache(maxsize=None)
def _contiguous_generate(max_new: int, context: int):
    from flax import nnx

    from models.decode import generate

    def run(graphdef, params, prompt_BP, lengths_B):
        return generate(nnx.merge(graphdef, params), prompt_BP, lengths_B, max_new_tokens=max_new,
                        rng=jax.random.key(0), context=context)
    return jax.jit(run, static_argnums=0)


def contiguous_tokens(model, prompts, max_new: int, context: int) -> list[list[int]]:
    """Greedy-or-sampled tokens of `generate` with a contiguous KV cache: the paged engine's reference."""
    from flax import nnx

    from models.decode import pad_prompts

    prompt_BP, lengths_B = pad_prompts(prompts)
    out = jax.device_get(_contiguous_generate(max_new, context)(*nnx.split(model), prompt_BP, lengths_B))
    return [list(out["tokens_BN"][b, : out["num_tokens_B"][b]]) for b in range(len(prompts))]
