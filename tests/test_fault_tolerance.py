"""Fault tolerance: restore onto another mesh, SIGTERM preemption, SIGKILL mid-save, non-finite steps."""
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import finish_process, read_metrics, smoke_cfg, train_losses
from trainer import loop
from trainer.checkpoint import Checkpointer
from trainer.nan_guard import NonFiniteError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------
# Restore onto a different mesh
# --------------------------------------------------------------------------

def mesh_cfg(shape, rules, **kw):
    c = smoke_cfg(lean=True, log_every=1, checkpoint_every=3, eval_every=1000, **kw)
    c.mesh.shape.update(data=1, fsdp=1, tensor=1)
    c.mesh.shape.update(**shape)
    c.mesh.rules = rules
    return c


@pytest.fixture(scope="module")
def fsdp_checkpoint(tmp_path_factory, devices):
    """3 steps on 8 devices, data=2 x fsdp=4: parameters and Adam moments sharded over fsdp."""
    wd = tmp_path_factory.mktemp("fsdp_saved")
    loop.train_and_evaluate(mesh_cfg({"data": 2, "fsdp": 4}, "fsdp", stop_at=3), str(wd), devices)
    return wd


@pytest.mark.slow
def test_fsdp_checkpoint_continues_on_4_device_dp_and_on_1_device(fsdp_checkpoint, tmp_path, devices):
    """Continued on the same mesh, on 4 devices pure data parallel, on 1 device: the same losses."""
    runs = {"same_mesh": ({"data": 2, "fsdp": 4}, "fsdp", devices),
            "dp4": ({"data": 4}, "dp", devices[:4]),
            "one_device": ({}, "dp", devices[:1])}
    out = {}
    for name, (shape, rules, devs) in runs.items():
        wd = tmp_path / name
        shutil.copytree(fsdp_checkpoint, wd)
        out[name] = loop.train_and_evaluate(mesh_cfg(shape, rules), str(wd), devs)  # no flag needed
        assert sorted(train_losses(wd)) == [1, 2, 3, 4, 5, 6]
    ref = train_losses(tmp_path / "same_mesh")
    for name in ("dp4", "one_device"):
        got = train_losses(tmp_path / name)
        np.testing.assert_allclose([got[s] for s in (4, 5, 6)], [ref[s] for s in (4, 5, 6)], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(out[name]["final"]["eval/loss"], out["same_mesh"]["final"]["eval/loss"], rtol=1e-5)


@pytest.mark.slow
def test_restored_arrays_take_the_new_mesh_sharding(fsdp_checkpoint, devices):
    s = loop.setup(mesh_cfg({"data": 4}, "dp"), devices[:4])
    ckpt = Checkpointer(str(fsdp_checkpoint), keep=2)
    try:
        assert ckpt.latest_step() == 3
        with jax.set_mesh(s.mesh):
            state = ckpt.restore(3, loop.abstract_state(s))
    finally:
        ckpt.close()
    w = state["params"]["blocks"][0]["ffn"]["wi_DF"]
    assert w.sharding.is_fully_replicated and len(w.sharding.device_set) == 4
    assert int(state["step"]) == 3


# --------------------------------------------------------------------------
# Non-finite steps
# --------------------------------------------------------------------------

BAD = "blocks.1.ffn.wo_FD"


@pytest.mark.slow
def test_nan_policy_raise_names_step_and_group_and_keeps_last_good_checkpoint(smoke_run, tmp_path, devices,
                                                                              caplog):
    c = smoke_cfg(lean=True, debug_nan_step=5, debug_nan_param=BAD)  # checkpoints at 3 and 6
    with pytest.raises(NonFiniteError, match=rf"non-finite gradient at step 5, first in parameter group {BAD}; "
                                             r"stopped with the last good checkpoint at step 3"):
        loop.train_and_evaluate(c, str(tmp_path), devices[:1])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
    # A rerun with the fault gone resumes from the good checkpoint and ends where the uninterrupted
    # smoke run ended (the same config but for TensorBoard: evaluated on the same two batches).
    caplog.set_level(logging.INFO, logger="train")
    summary = loop.train_and_evaluate(smoke_cfg(tensorboard=False), str(tmp_path), devices[:1])
    assert any(r.getMessage().endswith("at step 3") and r.getMessage().startswith("resumed from")
               for r in caplog.records)
    assert summary["steps"] == 6
    assert summary["final"] == pytest.approx(smoke_run.summary["final"], rel=1e-6)


@pytest.mark.slow
def test_nan_policy_skip_drops_the_update_and_counts_it_across_a_resume(tmp_path, devices):
    c = smoke_cfg(lean=True, nan_policy="skip", debug_nan_step=2, log_every=1, stop_at=4)
    loop.train_and_evaluate(c, str(tmp_path), devices[:1])
    c.train.stop_at = 0
    summary = loop.train_and_evaluate(c, str(tmp_path), devices[:1])
    skipped = {r["step"]: r["train/skipped_steps"] for r in read_metrics(tmp_path) if "train/skipped_steps" in r}
    assert skipped == {1: 0, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1}  # step 5, 6: after the resume, from the meta
    assert np.isfinite(summary["final"]["eval/loss"])


@pytest.mark.slow
def test_skipped_step_leaves_parameters_and_optimizer_state_unchanged(devices):
    c = smoke_cfg(lean=True, nan_policy="skip", debug_nan_step=2)
    s = loop.setup(c, devices[:1])
    with jax.set_mesh(s.mesh):
        state = loop.init_state(s)
        step_fn = loop.jit_train_step(s, s.task.train_batch(0))
        state, m1 = step_fn(state, loop.to_global(s.task.train_batch(0), s.batch_shardings))
        before = jax.device_get({"params": state["params"], "opt_state": state["opt_state"]})
        state, m2 = step_fn(state, loop.to_global(s.task.train_batch(1), s.batch_shardings))
        after = jax.device_get({"params": state["params"], "opt_state": state["opt_state"]})
    assert not bool(m1["nan_guard/nonfinite"]) and bool(m2["nan_guard/nonfinite"]) and int(state["step"]) == 2
    names = loop.nan_guard.leaf_names(s.abstract_params)
    assert names[int(m2["nan_guard/first_bad_leaf"])] == names[0]  # "" = the first group
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)


def test_nan_policy_and_injection_are_checked(devices):
    from nn.errors import ConfigError

    with pytest.raises(ConfigError, match="train.nan_policy='ignore' must be one of"):
        loop.setup(smoke_cfg(lean=True, nan_policy="ignore"), devices[:1])
    with pytest.raises(ConfigError, match="train.debug_nan_param='nope' is not a parameter"):
        loop.setup(smoke_cfg(lean=True, debug_nan_step=1, debug_nan_param="nope"), devices[:1])


# --------------------------------------------------------------------------
# Real processes: SIGTERM preemption, SIGKILL during an async save
# --------------------------------------------------------------------------

def _cmd(workdir, *flags):
    return [sys.executable, "train.py", "--config", "experiments/configs/lm_tiny.py:smoke", "--workdir", str(workdir),
            "--config.train.log_every=1", "--config.train.tensorboard=False", "--config.sample.num_tokens=0", *flags]


ENV = {**os.environ, "XLA_FLAGS": "", "CI": "1"}


def _wait_for(predicate, proc, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"train.py exited with {proc.returncode} before {what}: "
                                 f"{proc.stdout.read()[-3000:] if proc.stdout else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


@pytest.mark.slow
def test_sigterm_saves_exits_0_and_the_next_launch_resumes_exactly(tmp_path):
    wd, ref = tmp_path / "run", tmp_path / "reference"
    flags = ("--config.train.num_steps=300", "--config.train.eval_every=1000", "--config.train.checkpoint_every=1000")
    # An uninterrupted reference of 40 steps runs alongside (a fresh process too, so bit-for-bit comparable).
    reference = subprocess.Popen(_cmd(ref, *flags, "--config.train.stop_at=40"), cwd=ROOT, env=ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc = subprocess.Popen(_cmd(wd, *flags), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        metrics = wd / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, proc, 240, "step 3")
        proc.send_signal(signal.SIGTERM)
        out = finish_process(proc)
        ref_out = finish_process(reference)
    finally:
        for p in (proc, reference):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert proc.returncode == 0, out[-3000:]
    assert reference.returncode == 0, ref_out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("preempted: saved checkpoint at step ") and last.endswith("rerun the same command to resume")
    n = int(last.split("at step ")[1].split()[0])
    assert 3 <= n <= 37 and sorted(os.listdir(wd / "checkpoints")) == [str(n)]
    assert max(train_losses(wd)) == n  # the metrics of the last step were flushed
    assert not (wd / "summary.json").exists()  # the run is not finished

    # The next launch, a new process, continues to the reference's step 40: every training loss and
    # the evaluation at step 40 equal the uninterrupted run's, bit for bit.
    out = subprocess.run(_cmd(wd, *flags, "--config.train.stop_at=40"), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"at step {n}" in out.stderr
    got, want = train_losses(wd), train_losses(ref)
    assert sorted(got) == sorted(want) == list(range(1, 41))
    assert got == want  # exact float equality
    evals = lambda d: [(r["step"], r["eval/loss"]) for r in read_metrics(d) if "eval/loss" in r]  # noqa: E731
    assert evals(ref)[-1][0] == 40 and evals(ref)[-1] in evals(wd)


@pytest.mark.slow
def test_sigkill_during_async_save_keeps_the_previous_checkpoint(tmp_path):
    """A 12.7M-parameter smoke model: its async save (150 MB of state) takes long enough to be cut."""
    wd = tmp_path / "run"
    ck = wd / "checkpoints"
    big = ("--config.model.d_model=512", "--config.model.n_layers=4", "--config.model.n_heads=8",
           "--config.model.n_kv_heads=8", "--config.model.d_ff=2048", "--config.train.num_steps=100",
           "--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=1",
           "--config.train.eval_every=1000", "--config.train.async_checkpointing=True")
    proc = subprocess.Popen(_cmd(wd, *big), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        def saving_4():
            names = os.listdir(ck) if ck.is_dir() else []
            return "2" in names and any(n.startswith("4.orbax-checkpoint-tmp") for n in names)

        _wait_for(saving_4, proc, 240, "the save of step 4 to start")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    names = sorted(os.listdir(ck))
    # The kill hit the save: step 4 is an unfinished temporary folder, step 2 is whole.
    assert "4" not in names and "2" in names and any(n.startswith("4.orbax-checkpoint-tmp") for n in names), names
    killed = train_losses(wd)

    out = subprocess.run(_cmd(wd, *big, "--config.train.stop_at=3"), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "at step 2" in out.stderr
    assert sorted(os.listdir(ck)) == ["3"]  # leftovers removed, only the new checkpoint kept
    # Step 3 from the restored step-2 checkpoint equals step 3 of the killed run, bit for bit.
    assert train_losses(wd)[3] == killed[3]
