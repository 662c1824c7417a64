"""Multi-process training on one machine: 2 processes x 4 fake CPU devices through jax.distributed.

The launches are real `python train.py` processes joined on 127.0.0.1 with
gloo collectives (trainer/launch.py), over a data=2 x fsdp=4 mesh of the 8
global devices: the data axis spans the processes, as it spans hosts on a pod.
"""
import json
import os

import numpy as np
import pytest

from trainer import loop
from experiments.configs import lm_tiny
from trainer import launch
from trainer.distributed import DistributedArgs, distributed_args
from nn.errors import ConfigError

OVERRIDES = {"mesh.shape.data": 2, "mesh.shape.fsdp": 4, "train.num_steps": 10, "train.log_every": 1,
             "train.eval_every": 5, "train.checkpoint_every": 5}


def cli_args(workdir, **extra):
    flags = {**OVERRIDES, **extra}
    return ["--config", "experiments/configs/lm_tiny.py:smoke", "--workdir", str(workdir),
            *(f"--config.{k}={v}" for k, v in flags.items())]


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def curve(workdir, key):
    return [(r["step"], r[key]) for r in records(workdir) if key in r]


def launch_ok(args, tmp_path, name):
    r = launch.run(args, num_processes=2, devices_per_process=4, logdir=str(tmp_path / name), timeout=240)
    assert not r.timed_out and r.returncodes == [0, 0], "\n----\n".join(o[-3000:] for o in r.outputs)
    return r


def test_distributed_args_from_flags_env_and_clusters():
    assert distributed_args(None, None, None, {}) is None
    assert distributed_args("10.0.0.1:1234", 4, 3, {}) == DistributedArgs("10.0.0.1:1234", 4, 3, "flags")
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert distributed_args(None, None, None, env) == DistributedArgs("h:1", 2, 1, "env")
    assert distributed_args("h:1", 1, 0, {}) is None  # one process: nothing to join
    slurm = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "16"}
    assert distributed_args(None, None, None, slurm) == DistributedArgs(source="slurm")
    assert distributed_args(None, None, None, {**slurm, "SLURM_NTASKS": "1"}) is None
    assert distributed_args(None, None, None, {"OMPI_COMM_WORLD_SIZE": "4"}).source == "openmpi"
    assert distributed_args(None, None, None, {"TPU_WORKER_HOSTNAMES": "a,b,c,d"}).source == "tpu"
    assert distributed_args(None, None, None, {"TPU_WORKER_HOSTNAMES": "localhost"}) is None
    assert distributed_args(None, None, None, {}, mode="on") == DistributedArgs(source="cluster")
    assert distributed_args("h:1", 2, 0, slurm, mode="off") is None
    with pytest.raises(ConfigError, match="process_id is missing"):
        distributed_args("h:1", 2, None, {})
    with pytest.raises(ConfigError, match=r"process_id=2 must be in \[0, 2\)"):
        distributed_args("h:1", 2, 2, {})
    with pytest.raises(ConfigError, match="coordinator_address='h' must be host:port"):
        distributed_args("h", 2, 0, {})
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES='two' must be an integer"):
        distributed_args(None, None, None, {**env, "JAX_NUM_PROCESSES": "two"})


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_then_they_resume_and_match_one_process(tmp_path, devices):
    """The notice reaches process 1 only; JAX's preemption sync point makes both save step n and exit 0.

    A new 2-process launch restores step n and trains 5 more steps: every metric equals one process
    training the same config on the same 8 devices (to float32 reduction-order tolerance).
    """
    import signal
    import time

    mp = tmp_path / "two_processes"
    # Long enough that the notice lands mid-run; the relaunch stops 5 steps after the save (train.stop_at:
    # the schedule still spans num_steps).
    run = {"train.num_steps": 300, "train.eval_every": 1000, "train.checkpoint_every": 1000,
           "train.tensorboard": False, "sample.num_tokens": 0}
    procs = launch.start(cli_args(mp, **run), num_processes=2, devices_per_process=4,
                         logdir=str(tmp_path / "launch1"))
    try:
        deadline = time.monotonic() + 240
        metrics = mp / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "no step 3"
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGTERM)
    finally:
        codes, timed_out = launch.wait(procs, timeout=240)
    logs = [(tmp_path / "launch1" / f"process_{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0] and not timed_out, "\n----\n".join(x[-3000:] for x in logs)
    assert "process 1 of 2 joined" in logs[1] and "8 global devices" in logs[1]
    last = [line for line in logs[0].splitlines() if line.startswith("preempted: ")]
    assert len(last) == 1, logs[0][-3000:]
    n = int(last[0].split("at step ")[1].split()[0])
    assert os.listdir(mp / "checkpoints") == [str(n)]
    assert max(s for s, _ in curve(mp, "train/loss")) == n

    run["train.stop_at"] = n + 5
    second = launch_ok(cli_args(mp, **run), tmp_path, "launch2")
    assert f"at step {n}" in second.outputs[0]
    assert f"done: {n + 5} steps" in second.outputs[0] and "done:" not in second.outputs[1]  # only process 0 talks

    # Reference: the same config in this process over its 8 devices.
    cfg = lm_tiny.get_config("smoke")
    for k, v in {**OVERRIDES, **run}.items():
        section, *rest = k.split(".")
        node = cfg[section]
        for r in rest[:-1]:
            node = node[r]
        node[rest[-1]] = v
    ref = tmp_path / "one_process"
    loop.train_and_evaluate(cfg, str(ref), devices)

    # Only process 0 wrote metrics: every step exactly once, across both launches.
    assert [s for s, _ in curve(mp, "train/loss")] == list(range(1, n + 6))
    for key in ("train/loss", "train/grad_norm", "train/lr", "eval/loss"):
        a, b = curve(mp, key), curve(ref, key)
        assert [s for s, _ in a] == [s for s, _ in b] and a, key
        # The cross-process all-reduce (gloo) sums in another order than the in-process one:
        # equal to float32 reduction-order tolerance, not bit for bit.
        np.testing.assert_allclose([v for _, v in a], [v for _, v in b], rtol=1e-5, err_msg=key)

    # (That a fresh process gives bit-identical metrics is test_fault_tolerance.py::test_sigterm_saves_exits_0_and_the_next_launch_resumes_exactly.)
