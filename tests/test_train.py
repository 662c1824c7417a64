"""The train loop end to end: outputs, exact resume, accumulation, sampling, every experiment's smoke run.

Most tests read the session's one trained smoke run (`smoke_run` in conftest.py):
its summary, metrics and checkpoints, or a copy of its workdir to continue.
"""
import glob
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import first_losses, read_metrics, smoke_cfg, train_losses
from trainer import loop, restore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIFORM_LOSS = math.log(256)  # nats per byte of a uniform guess
# The smoke run's eval loss falls from 5.54 (step 0) to 5.08 (step 6); a run that learns nothing stays near 5.54.
LEARNED_MARGIN = 0.3
# bfloat16 activations move the smoke run's eval loss by ~1e-4 relative; a broken bfloat16 path by far more.
BF16_RTOL = 5e-3


def initial_eval(cfg, devices) -> dict[str, float]:
    """Evaluation of `cfg`'s freshly initialized parameters: the step-0 point its curve leaves out."""
    s = loop.setup(cfg, devices)
    with jax.set_mesh(s.mesh):
        return loop.evaluate(s, loop.jit_eval_step(s), loop.init_state(s)["params"])


def test_smoke_run_writes_metrics_checkpoints_and_tensorboard(smoke_run, devices):
    summary, wd = smoke_run.summary, smoke_run.workdir
    final = summary["final"]
    assert summary["steps"] == 6 and set(final) == {"eval/loss", "eval/bpb", "eval/accuracy"}
    assert final["eval/bpb"] == pytest.approx(final["eval/loss"] / math.log(2), rel=1e-6)
    # It learned: from a uniform guess at step 0 to clearly below it after 6 steps.
    start = initial_eval(smoke_run.config, devices[:1])["loss"]
    assert start == pytest.approx(UNIFORM_LOSS, abs=0.05)
    assert final["eval/loss"] < start - LEARNED_MARGIN, (start, final)
    assert [p["step"] for p in summary["curve"]] == [3, 6]
    assert summary["curve"][-1]["eval/loss"] == final["eval/loss"] < summary["curve"][0]["eval/loss"]
    records = read_metrics(wd)
    train = train_losses(wd)
    assert sorted(train) == [2, 4, 6] and train[6] < train[2]  # log_every=2
    assert all(r["train/tokens_per_s"] > 0 for r in records if "train/loss" in r)
    assert glob.glob(os.path.join(wd, "tensorboard", "events.out.tfevents.*"))
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3", "6"]


def test_final_eval_equals_a_direct_computation_from_the_last_checkpoint(smoke_run, devices):
    """The logged eval loss and accuracy, recomputed in numpy from the step-6 checkpoint and the eval batches."""
    model, cfg, step = restore.restore_model(smoke_run.workdir)
    assert step == 6
    forward = jax.jit(lambda tokens: model(tokens)[0])
    nll = weight = correct = 0.0
    for batch in loop.setup(cfg, devices[:1]).task.eval_batches():
        logits = np.asarray(forward(jnp.asarray(batch["inputs"])), np.float64)  # [B, T, V]
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        target_logp = np.take_along_axis(logp, batch["targets"][..., None].astype(np.int64), -1)[..., 0]
        w = np.asarray(batch["weights"], np.float64)
        nll -= (target_logp * w).sum()
        weight += w.sum()
        correct += ((logits.argmax(-1) == batch["targets"]) * w).sum()
    assert weight > 0
    final = smoke_run.summary["final"]
    assert final["eval/loss"] == pytest.approx(nll / weight, rel=1e-5)
    assert final["eval/accuracy"] == pytest.approx(correct / weight, abs=1e-6)


@pytest.mark.slow
def test_evaluation_samples_text_from_the_prompt(tmp_path, devices):
    """Smoke configs do not sample: this run turns it on (greedy) and checks it against a cache-free loop."""
    cfg = smoke_cfg(lean=True, stop_at=3)  # the smoke schedule, so the shared run's compiled steps serve
    cfg.sample.update(prompt="The ", num_tokens=8, temperature=0.0)
    loop.train_and_evaluate(cfg, str(tmp_path), devices[:1])
    samples = {r["step"]: r["eval/sample"] for r in read_metrics(tmp_path) if "eval/sample" in r}
    assert list(samples) == [3]
    # Greedy decoding by hand, without a KV cache: full causal forward passes over the growing sequence
    # (in a fixed 12-token buffer, so one compile), the argmax at the last real position.
    model, _, _ = restore.restore_model(str(tmp_path))
    forward = jax.jit(lambda tokens_BT: model(tokens_BT)[0])
    tokens = np.zeros((1, 12), np.int32)
    tokens[0, :4] = list(b"The ")
    for n in range(4, 12):
        tokens[0, n] = int(jnp.argmax(forward(jnp.asarray(tokens))[0, n - 1]))
    assert samples[3] == "The " + bytes(tokens[0, 4:].astype(np.uint8)).decode("utf-8", errors="replace")


def test_rerun_of_finished_workdir_resumes_and_does_not_retrain(smoke_run, tmp_path, devices):
    wd = tmp_path / "run"
    shutil.copytree(smoke_run.workdir, wd)
    n = len(read_metrics(wd))
    summary = loop.train_and_evaluate(smoke_cfg(), str(wd), devices[:1])
    new = read_metrics(wd)[n:]
    assert all("train/loss" not in r for r in new)  # no training step ran again
    assert sorted(os.listdir(wd / "checkpoints")) == ["3", "6"]
    # The step-6 parameters are re-evaluated: the same numbers as the first launch's final evaluation.
    assert summary["steps"] == 6
    assert summary["final"] == pytest.approx(smoke_run.summary["final"], rel=1e-6)


@pytest.mark.slow
def test_gradient_accumulation_matches_full_batch(devices):
    def cfg(accum):
        c = smoke_cfg()
        c.optim.accum_steps = accum
        return c

    _, s1, l1 = first_losses(cfg(1), devices[:1], n=2)
    _, s2, l2 = first_losses(cfg(4), devices[:1], n=2)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def _is_config_file(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        return "\ndef get_config(" in f.read()


EXPERIMENTS = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py")) if _is_config_file(p)
)


def test_experiment_configs_are_found():
    assert {"experiments/configs/lm_tiny.py", "experiments/configs/listops.py"} <= set(EXPERIMENTS)
    assert "experiments/configs/defaults.py" not in EXPERIMENTS


# The default experiment's smoke run (the session's `smoke_run`, shared by many quick tests) is in the quick
# set; every other config's smoke run is in the slow set (each costs seconds of compilation).
QUICK_EXPERIMENTS = {"experiments/configs/lm_tiny.py"}


@pytest.mark.parametrize("path", [p if p in QUICK_EXPERIMENTS else pytest.param(p, marks=pytest.mark.slow)
                                  for p in EXPERIMENTS])
def test_every_experiment_runs_as_smoke(path, experiment_run, devices):
    """Each config's `:smoke` run finishes its schedule and its evaluation loss falls below the step-0 value."""
    run = experiment_run(path)  # shared with the tests of that task that read a finished smoke run
    cfg, summary = run.config, run.summary
    steps, every = int(cfg.train.num_steps), int(cfg.train.eval_every)
    assert summary["steps"] == steps and summary["tokens"] == steps * summary["tokens_per_step"]
    assert [p["step"] for p in summary["curve"]] == sorted({*range(every, steps + 1, every), steps})
    start = initial_eval(cfg, devices[:1])["loss"]
    assert summary["final"]["eval/loss"] < start, (start, summary["final"]["eval/loss"])


@pytest.mark.slow
def test_quickstart_notebook_executes():
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
    env_before = os.environ.get("STEPS")
    os.environ["STEPS"] = "30"
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
    finally:
        if env_before is None:
            os.environ.pop("STEPS", None)
        else:
            os.environ["STEPS"] = env_before
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "validation bpb" in outputs and "The " in outputs


@pytest.mark.slow
def test_bfloat16_compute_trains_like_float32(smoke_run, tmp_path, devices):
    """The same run with bfloat16 activations: each evaluation within bfloat16 rounding of the float32 run's."""
    cfg = smoke_cfg(tensorboard=False)
    cfg.sample.num_tokens = 0
    cfg.model.dtype = "bfloat16"
    summary = loop.train_and_evaluate(cfg, str(tmp_path), devices[:1])
    got = [p["eval/loss"] for p in summary["curve"]]
    want = [p["eval/loss"] for p in smoke_run.summary["curve"]]
    np.testing.assert_allclose(got, want, rtol=BF16_RTOL)
    assert got[-1] < UNIFORM_LOSS - LEARNED_MARGIN, got


@pytest.mark.slow
def test_resumed_run_summary_keeps_earlier_evaluations(smoke_run, tmp_path, devices):
    """Stopped at step 3 and relaunched: the summary's curve is the uninterrupted run's, both points."""
    loop.train_and_evaluate(smoke_cfg(stop_at=3), str(tmp_path), devices[:1])
    summary = loop.train_and_evaluate(smoke_cfg(), str(tmp_path), devices[:1])
    assert [p["step"] for p in summary["curve"]] == [3, 6]
    for got, want in zip(summary["curve"], smoke_run.summary["curve"]):
        assert got == pytest.approx(want, rel=1e-6)
    assert summary["best"]["eval/loss"] == min(p["eval/loss"] for p in summary["curve"])


@pytest.mark.slow
def test_seeds_share_compiled_programs_only_inside_reuse_programs(devices):
    """A study's seeds, rates and budgets reuse the jitted programs; a change the program bakes in does not.

    The schedule's numbers are train-step inputs: a run that borrows another's program still trains
    with its own learning rate, bit for bit as with a program compiled for itself.
    """
    def setups(**kw):
        out = []
        for seed in (0, 1):
            c = smoke_cfg(lean=True)
            c.seed = seed
            c.optim.update(**kw)
            out.append(loop.setup(c, devices))
        return out

    (a0, a1), (b0, _), (c0, _) = setups(), setups(learning_rate=0.5, warmup_steps=0), setups(b1=0.5)
    batch = a0.task.train_batch(0)
    step = loop.jit_train_step
    assert step(a0, batch).jitted is not step(a1, batch).jitted  # outside: nothing shared
    with loop.reuse_programs():
        assert step(a0, batch).jitted is step(a1, batch).jitted is step(b0, batch).jitted
        assert loop.jit_eval_step(a0) is loop.jit_eval_step(a1)
        assert step(c0, batch).jitted is not step(a0, batch).jitted  # Adam's b1 is a compiled constant
        with jax.set_mesh(a1.mesh):
            shared = loop.init_state(a0), loop.init_state(a1)  # one compiled init, two seeds
            borrowed = step(b0, batch)(loop.init_state(b0), batch)  # b0's rate in a0's program
    with jax.set_mesh(a1.mesh):
        own = loop.init_state(a1)
        alone = step(b0, batch)(loop.init_state(b0), batch)
    assert float(borrowed[1]["train/lr"]) == float(alone[1]["train/lr"]) == np.float32(0.5)
    for x, y in zip(jax.tree.leaves(borrowed[0]["params"]), jax.tree.leaves(alone[0]["params"])):
        np.testing.assert_array_equal(x, y)
    leaves = [jax.tree.leaves(x["params"]) for x in (*shared, own)]
    assert any(not np.array_equal(x, y) for x, y in zip(leaves[0], leaves[1]))  # seeds 0 and 1 differ
    assert all(np.array_equal(x, y) for x, y in zip(leaves[1], leaves[2]))  # seed 1 as if compiled for itself
