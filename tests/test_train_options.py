"""The loop with issue 18's options on: z-loss, WSD, bfloat16 moments, norms, MFU, a profile trace, W&B offline.

One short run checks what each option writes; the options' numerics are tested in test_optim.py.
"""
import glob
import json
import os

import jax
import pytest

from conftest import read_metrics, smoke_cfg
from nn.errors import ConfigError
from trainer import loop, mfu


def test_peak_table_names_known_chips_and_falls_back_to_a_measurement():
    t = 1e12
    assert mfu.table_peak("TPU v4", "tpu", "float32").flops_per_s == 275 * t
    assert mfu.table_peak("TPU v5 lite", "tpu", "bfloat16").flops_per_s == 197 * t
    assert mfu.table_peak("TPU v5", "tpu", "bfloat16").flops_per_s == 459 * t
    assert mfu.table_peak("TPU v5p", "tpu", "bfloat16").flops_per_s == 459 * t
    assert mfu.table_peak("TPU v6 lite", "tpu", "bfloat16").flops_per_s == 918 * t
    assert mfu.table_peak("NVIDIA A100-SXM4-80GB", "gpu", "bfloat16").flops_per_s == 312 * t
    assert mfu.table_peak("NVIDIA A100-SXM4-80GB", "gpu", "float32").flops_per_s == 156 * t
    assert mfu.table_peak("NVIDIA H100 80GB HBM3", "gpu", "bfloat16").flops_per_s == 989.5 * t
    assert mfu.table_peak("NVIDIA H100 PCIe", "gpu", "float32").flops_per_s == 378 * t
    assert mfu.table_peak("NVIDIA H200", "gpu", "float32").flops_per_s == 494.5 * t
    assert mfu.table_peak("cpu", "cpu", "float32") is None
    peak, name = mfu.total_peak(jax.devices()[:2], "float32")
    assert peak > 0 and "measured" in name and name.startswith("1 x ")  # two fake CPU devices, one process


@pytest.mark.parametrize("value", [(3, 3), (5, 2), (-1, 2), (1, 2, 3), (True, 2)])
def test_bad_profile_steps_and_missing_wandb_are_one_line_errors(value, monkeypatch):
    cfg = smoke_cfg()
    cfg.train.profile_steps = value
    with pytest.raises(ConfigError, match=r"^train\.profile_steps=.* must be two integers \(start, stop\)"):
        loop.setup(cfg, jax.devices()[:1])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    cfg = smoke_cfg(wandb_project="p")
    with pytest.raises(ConfigError, match=r"^train\.wandb_project='p' needs the wandb package"):
        loop.setup(cfg, jax.devices()[:1])


@pytest.mark.parametrize("value", [(-1,), (2.5,), (True,)])
def test_bad_eval_steps_are_one_line_errors(value):
    cfg = smoke_cfg()
    cfg.train.eval_steps = value
    with pytest.raises(ConfigError, match=r"^train\.eval_steps=.* must be a tuple of integers >= 0"):
        loop.setup(cfg, jax.devices()[:1])


@pytest.mark.slow
def test_a_run_with_every_option_logs_them_and_writes_a_trace(tmp_path, devices, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = smoke_cfg(lean=True, log_every=1, eval_every=4, checkpoint_every=4, num_steps=4,
                    profile_steps=(1, 3), wandb_project="scaling-tests")
    cfg.optim.update(schedule="wsd", decay_fraction=0.5, decay_shape="linear", moment_dtype="bfloat16", z_loss=1e-3)
    summary = loop.train_and_evaluate(cfg, str(tmp_path), devices[:1])
    rows = [r for r in read_metrics(tmp_path) if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    peak, _ = mfu.total_peak(devices[:1], "float32")  # the same cached measurement the loop used
    peak_lr, warm = cfg.optim.learning_rate, cfg.optim.warmup_steps
    end = peak_lr * cfg.optim.min_lr_ratio
    for r in rows:
        t = r["step"] - 1  # the learning rate of the update that made row `step`
        want_lr = peak_lr * t / warm if t < warm else end + (peak_lr - end) * (1 - (t - 2) / 2)  # decay 2..4
        assert r["train/lr"] == pytest.approx(want_lr, rel=1e-5)
        assert r["train/z_loss_weighted"] == pytest.approx(1e-3 * r["train/z_loss"], rel=1e-5)
        assert r["train/loss"] == pytest.approx(r["train/ce_loss"] + r["train/z_loss_weighted"], rel=1e-6)
        assert r["train/mfu"] == pytest.approx(
            summary["flops_per_token"] * r["train/tokens_per_s"] / peak, rel=1e-6)
        assert {"train/param_norm/layer_1", "train/grad_norm/embed", "train/update_ratio/final_norm"} <= set(r)
    assert glob.glob(os.path.join(tmp_path, "profile", "plugins", "profile", "*", "*.xplane.pb"))
    # W&B (offline): one run, whose log holds every row's values (wandb >= 0.2x has no Python reader for its
    # .wandb files, which store each value as its JSON text: looked for as bytes).
    (log_file,) = glob.glob(os.path.join(tmp_path, "wandb", "offline-run-*", "run-*.wandb"))
    with open(log_file, "rb") as f:
        blob = f.read()
    for r in rows:
        for key in ("train/loss", "train/mfu", "train/grad_norm/layer_0"):
            assert json.dumps(r[key]).encode() in blob, (key, r[key])
    assert json.dumps(summary["final"]["eval/loss"]).encode() in blob and b"scaling-tests" in blob


def test_object_store_writer_path_writes_what_the_append_path_writes(tmp_path, monkeypatch):
    """The MetricWriter branch for object stores (rewrite, no append), run on local files: the same rows,
    and a resume drops the rows past the resumed step in both."""
    from trainer import writer

    def run(wd, local):
        monkeypatch.setattr(writer, "is_local", lambda _: local)
        w = writer.MetricWriter(str(wd), tensorboard=False)
        for step in (1, 2, 3):
            w.write(step, {"train/loss": 1.0 / step, "eval/sample": "x"})
        w.close()
        w = writer.MetricWriter(str(wd), tensorboard=False, resume_step=2)  # redo step 3
        w.write(3, {"train/loss": 0.25})
        w.close()
        return (wd / "metrics.jsonl").read_text()

    a, b = run(tmp_path / "append", True), run(tmp_path / "rewrite", False)
    assert a == b
    assert [json.loads(line) for line in a.splitlines()] == [
        {"step": 1, "train/loss": 1.0, "eval/sample": "x"}, {"step": 2, "train/loss": 0.5, "eval/sample": "x"},
        {"step": 3, "train/loss": 0.25}]
