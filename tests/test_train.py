"""The train loop end to end: outputs, exact resume, accumulation, every experiment's smoke run."""
import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from trainer import loop
from experiments.configs.defaults import apply_smoke, base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_cfg(**train_kw):
    c = apply_smoke(base_config())
    c.train.update(**train_kw)
    return c


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_smoke_run_writes_metrics_checkpoints_and_tensorboard(tmp_path, devices):
    summary = loop.train_and_evaluate(smoke_cfg(), str(tmp_path), devices[:1])
    assert summary["steps"] == 6 and set(summary["final"]) == {"eval/loss", "eval/bpb", "eval/accuracy"}
    assert summary["final"]["eval/bpb"] < 8.0  # below uniform over bytes after a few steps
    assert [p["step"] for p in summary["curve"]] == [3, 6]
    records = read_metrics(tmp_path)
    assert any("train/tokens_per_s" in r for r in records)
    assert any("eval/sample" in r and r["eval/sample"].startswith("The ") for r in records)
    assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]


def test_rerun_of_finished_workdir_resumes_and_does_not_retrain(tmp_path, devices):
    loop.train_and_evaluate(smoke_cfg(), str(tmp_path), devices[:1])
    n = len(read_metrics(tmp_path))
    summary = loop.train_and_evaluate(smoke_cfg(), str(tmp_path), devices[:1])
    new = read_metrics(tmp_path)[n:]
    assert all("train/loss" not in r for r in new)  # no training step ran again
    assert summary["final"]


def _run_cli(workdir, steps, extra=()):
    env = {**os.environ, "XLA_FLAGS": "", "CI": "1"}
    cmd = [sys.executable, "train.py", "--config", "experiments/configs/lm_tiny.py:smoke", "--workdir", str(workdir),
           f"--config.train.num_steps={steps}", "--config.train.log_every=1", "--config.train.eval_every=10",
           "--config.train.checkpoint_every=10", *extra]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_resume_in_fresh_process_is_bit_exact(tmp_path):
    """20 steps straight == 10 steps, a new process, 10 more: every loss, bit for bit."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    _run_cli(straight, 20)
    _run_cli(split, 20, ["--config.train.stop_at=10"])
    _run_cli(split, 20)
    losses = lambda d: [(r["step"], r["train/loss"]) for r in read_metrics(d) if "train/loss" in r]  # noqa: E731
    a, b = losses(straight), losses(split)
    assert [s for s, _ in a] == list(range(1, 21))
    assert a == b  # exact float equality
    evals = lambda d: [(r["step"], r["eval/loss"]) for r in read_metrics(d) if "eval/loss" in r]  # noqa: E731
    assert evals(straight) == evals(split)


def test_gradient_accumulation_matches_full_batch(devices):
    from tests.test_sharding import first_losses

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


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_every_experiment_runs_as_smoke(path, tmp_path, devices):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg_module", os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config("smoke")
    summary = loop.train_and_evaluate(cfg, str(tmp_path), devices[:1])
    assert np.isfinite(summary["final"]["eval/loss"])


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


def test_bfloat16_compute_trains(tmp_path, devices):
    cfg = smoke_cfg()
    cfg.model.dtype = "bfloat16"
    summary = loop.train_and_evaluate(cfg, str(tmp_path), devices[:1])
    assert np.isfinite(summary["final"]["eval/loss"]) and summary["final"]["eval/bpb"] < 8.0


def test_resumed_run_summary_keeps_earlier_evaluations(tmp_path, devices):
    first = smoke_cfg(stop_at=3)
    loop.train_and_evaluate(first, str(tmp_path), devices[:1])
    summary = loop.train_and_evaluate(smoke_cfg(), str(tmp_path), devices[:1])
    assert [p["step"] for p in summary["curve"]] == [3, 6]
    assert summary["best"]["eval/loss"] == min(p["eval/loss"] for p in summary["curve"])
