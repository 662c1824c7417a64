"""Recovery: damaged checkpoints fall back, reruns write nothing, Ctrl-C saves, metrics rows stay unique."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from experiments.configs.defaults import apply_smoke, base_config
from trainer import loop
from trainer.launch import last_error_line
from trainer.writer import drop_rows_after

from conftest import finish_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg(**train_kw):
    c = apply_smoke(base_config())
    c.train.update({**dict(tensorboard=False, log_every=1, eval_every=1000, checkpoint_every=3, keep_checkpoints=3,
                           num_steps=9), **train_kw})
    c.data.eval_batches = 1
    c.sample.num_tokens = 0
    return c


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(workdir):
    return {r["step"]: r["train/loss"] for r in rows(workdir) if "train/loss" in r}


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, devices):
    """(a run stopped at step 6 with checkpoints 3 and 6, an uninterrupted 9-step reference)."""
    saved = tmp_path_factory.mktemp("saved")
    loop.train_and_evaluate(cfg(stop_at=6), str(saved), devices[:1])
    ref = tmp_path_factory.mktemp("reference")
    loop.train_and_evaluate(cfg(), str(ref), devices[:1])
    return saved, ref


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _largest_array_file(step_dir):
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
             if os.sep + "d" + os.sep in os.path.join(d, f) + os.sep or os.path.basename(d) == "d"]
    return max(files, key=os.path.getsize)


DAMAGE = {
    "truncated_array_file": lambda step_dir: _truncate(_largest_array_file(step_dir)),
    "truncated_metadata": lambda step_dir: _truncate(os.path.join(step_dir, "state", "_METADATA")),
    "missing_member": lambda step_dir: shutil.rmtree(os.path.join(step_dir, "state", "ocdbt.process_0")),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_the_one_before(damage, two_checkpoints, tmp_path, devices, caplog):
    saved, ref = two_checkpoints
    wd = tmp_path / "run"
    shutil.copytree(saved, wd)
    DAMAGE[damage](str(wd / "checkpoints" / "6"))

    with caplog.at_level("WARNING", logger="train"):
        summary = loop.train_and_evaluate(cfg(), str(wd), devices[:1])
    warning = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
    assert len(warning) == 1 and "step 6" in warning[0] and "\n" not in warning[0]
    # The damaged checkpoint is kept aside, renamed; the run resumed from step 3 and finished.
    assert (wd / "checkpoints" / "6.damaged").is_dir() and summary["steps"] == 9
    got, want = losses(wd), losses(ref)
    assert sorted(got) == list(range(1, 10))  # one row per step: rows 4..6 of the first launch were dropped
    assert [got[s] for s in range(4, 10)] == [want[s] for s in range(4, 10)]  # an uninterrupted run's, bit for bit


@pytest.mark.slow
def test_a_launch_that_fails_leaves_config_json_and_checkpoints_alone(tmp_path, devices):
    from nn.errors import CheckpointMismatchError

    wd = tmp_path / "run"
    loop.train_and_evaluate(cfg(num_steps=3, eval_every=3), str(wd), devices[:1])
    before = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()}
    other = cfg(num_steps=6, eval_every=3)
    other.model.d_model = 64
    with pytest.raises(CheckpointMismatchError, match="model.d_model=32"):
        loop.train_and_evaluate(other, str(wd), devices[:1])
    assert {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_rerunning_a_finished_run_writes_nothing(tmp_path, devices):
    wd = tmp_path / "run"
    c = cfg(num_steps=3, eval_every=3)
    first = loop.train_and_evaluate(c, str(wd), devices[:1])
    before = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()}
    again = loop.train_and_evaluate(cfg(num_steps=3, eval_every=3), str(wd), devices[:1])
    after = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()}
    assert again["already_finished"] is True and again["final"] == first["final"]
    assert after == before  # no new eval row, no new checkpoint, no rewritten config
    assert [r["step"] for r in rows(wd) if "eval/loss" in r] == [3]


@pytest.mark.slow
def test_a_finished_run_continues_when_asked_for_more_steps(tmp_path, devices):
    wd = tmp_path / "run"
    loop.train_and_evaluate(cfg(num_steps=9, stop_at=3, eval_every=3), str(wd), devices[:1])
    summary = loop.train_and_evaluate(cfg(num_steps=9, stop_at=4, eval_every=3), str(wd), devices[:1])
    assert "already_finished" not in summary and summary["steps"] == 4
    assert sorted(losses(wd)) == [1, 2, 3, 4]


def test_resume_drops_metrics_rows_past_the_restored_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "train/loss": float(s)}) for s in (1, 2, 3, 4, 5)]
    path.write_text("\n".join(lines) + "\n" + '{"step": 6, "train/lo')  # the last row cut by a crash
    assert drop_rows_after(str(path), 3) == 3
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]
    assert drop_rows_after(str(path), 3) == 0


def test_negative_stop_at_is_a_config_error(devices):
    from nn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.stop_at=-1 must be an integer >= 0"):
        loop.setup(cfg(stop_at=-1), devices[:1])


def test_launch_reports_the_failing_child_s_error_line():
    out = "I1130 loading...\nTraceback (most recent call last):\n  File x\nValueError: boom\n"
    assert last_error_line(out) == "ValueError: boom"
    assert last_error_line("lots\nerror: data.path='/x' does not exist\nmore noise\n") == \
        "error: data.path='/x' does not exist"
    assert last_error_line("") == "(no output)"


def _cmd(workdir, *flags):
    return [sys.executable, "train.py", "--config", "experiments/configs/lm_tiny.py:smoke", "--workdir", str(workdir),
            "--config.train.log_every=1", "--config.train.tensorboard=False", "--config.sample.num_tokens=0",
            "--config.train.num_steps=400", "--config.train.eval_every=1000",
            "--config.train.checkpoint_every=1000", *flags]


ENV = {**os.environ, "XLA_FLAGS": "", "CI": "1"}


def _run_until_step(workdir, step, timeout=240):
    proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= step):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"train.py did not reach step {step}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.01)
    return proc


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_like_sigterm(tmp_path):
    wd = tmp_path / "once"
    proc = _run_until_step(wd, 3)
    proc.send_signal(signal.SIGINT)
    out = finish_process(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "KeyboardInterrupt" not in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("preempted: saved checkpoint at step ")
    n = int(last.split("at step ")[1].split()[0])
    assert os.listdir(wd / "checkpoints") == [str(n)] and max(losses(wd)) == n


def test_a_second_ctrl_c_exits_at_once_with_130(monkeypatch, capsys):
    """In process: two signals sent back to back can coalesce into one, so the handler is called directly."""
    from trainer import preemption

    def fake_exit(code):
        raise SystemExit(code)

    monkeypatch.setattr(preemption.os, "_exit", fake_exit)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a pytest-xdist worker
    watcher = preemption.PreemptionWatcher()
    try:
        assert not watcher.reached(1)
        watcher._on_signal(signal.SIGINT, None)  # the first: save after this step
        assert watcher.reached(1)
        with pytest.raises(SystemExit) as e:
            watcher._on_signal(signal.SIGINT, None)
        assert e.value.code == 130
        assert capsys.readouterr().err.strip() == "interrupted: exiting without saving"
    finally:
        watcher.close()
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


# --------------------------------------------------------------------------
# Evaluate a checkpoint without training; start from another run's parameters
# --------------------------------------------------------------------------

@pytest.mark.slow
def test_eval_mode_evaluates_a_checkpoint_without_touching_the_run(tmp_path, devices):
    from trainer import restore

    wd = tmp_path / "run"
    summary = loop.train_and_evaluate(cfg(num_steps=3, eval_every=3), str(wd), devices[:1])
    before = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file()}
    got = restore.evaluate_checkpoint(cfg(num_steps=3, eval_every=3), str(wd), devices=devices[:1])
    assert got["eval/loss"] == pytest.approx(summary["final"]["eval/loss"], rel=1e-6)  # same data: same numbers
    # Other data (a text file of its own): other numbers, one more row in eval.jsonl, nothing else changed.
    text = tmp_path / "other.txt"
    text.write_text("completely different text, repeated. " * 400)
    other = cfg(num_steps=3, eval_every=3)
    other.data.path = str(text)
    got2 = restore.evaluate_checkpoint(other, str(wd), devices=devices[:1])
    assert got2["eval/loss"] != pytest.approx(got["eval/loss"], rel=1e-3)
    after = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file() and p.name != "eval.jsonl"}
    assert after == before
    evals = [json.loads(x) for x in (wd / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [3, 3] and evals[1]["data"]["path"] == str(text)
    bigger = cfg(num_steps=3)
    bigger.model.d_model = 64
    with pytest.raises(Exception, match="model.d_model=32"):
        restore.evaluate_checkpoint(bigger, str(wd), devices=devices[:1])


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_another_run_s_parameters(tmp_path, devices):
    from nn.errors import InputError
    from trainer import restore

    src = tmp_path / "pretrained"
    loop.train_and_evaluate(cfg(num_steps=3, eval_every=3), str(src), devices[:1])
    trained, _, _ = restore.restore_model(str(src), 3)
    ft = cfg(num_steps=2, eval_every=2, checkpoint_every=1, init_from=f"{src}:3")
    ft.optim.learning_rate = 1e-12  # (almost) no update: the fine-tuned parameters stay the source's
    loop.train_and_evaluate(ft, str(tmp_path / "finetune"), devices[:1])
    got, _, _ = restore.restore_model(str(tmp_path / "finetune"), 1)
    for a, b in zip(jax.tree.leaves(nnx.state(trained, nnx.Param)), jax.tree.leaves(nnx.state(got, nnx.Param))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    wrong = cfg(num_steps=2, init_from=str(src))
    wrong.model.d_ff = 128
    with pytest.raises(InputError, match=r"train.init_from=.*has shape \(32, 64\) in the source run but \(32, 128\)"):
        loop.train_and_evaluate(wrong, str(tmp_path / "wrong"), devices[:1])
    with pytest.raises(InputError, match="holds no checkpoints/ folder"):
        loop.train_and_evaluate(cfg(num_steps=2, init_from=str(tmp_path / "nowhere")), str(tmp_path / "w2"),
                                devices[:1])

