"""Runs one training command as N local processes: a multi-host run on one machine.

    python -m trainer.launch --num_processes 2 --devices_per_process 4 -- \\
        --config experiments/configs/lm_tiny.py:smoke --workdir /tmp/mp \\
        --config.mesh.shape.data=2 --config.mesh.shape.fsdp=4

Each process gets `--coordinator_address=127.0.0.1:<free port>
--num_processes=N --process_id=i` and, on CPU, its own fake devices
(`--xla_force_host_platform_device_count`), so the global mesh spans
processes exactly as it spans hosts on a pod; collectives go through gloo.
The tests and `benchmarks/checkpoint.py` use it; on a real cluster the
scheduler (srun, mpirun, the TPU VM) starts the processes instead.

If any process fails, the others are stopped at once (they would otherwise
wait in a collective until JAX's heartbeat timeout), and nothing outlives
`run` (even on a timeout or an exception): every process is started in its
own session and its whole group is killed.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    returncodes: list[int]
    outputs: list[str]  # stdout + stderr of each process
    timed_out: bool


def _kill(procs: list[subprocess.Popen], sig=signal.SIGKILL) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)  # the process and anything it started
            except ProcessLookupError:
                pass


def start(args: list[str], num_processes: int, devices_per_process: int, logdir: str,
          extra_env: dict | None = None) -> list[subprocess.Popen]:
    """Starts the processes of one run; output of process i goes to `logdir/process_i.log`."""
    port = free_port()
    os.makedirs(logdir, exist_ok=True)
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), "CI": "1",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}", **(extra_env or {})}
    procs = []
    try:
        for i in range(num_processes):
            cmd = [sys.executable, os.path.join(ROOT, "train.py"), *args,
                   f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}", f"--process_id={i}"]
            log = open(os.path.join(logdir, f"process_{i}.log"), "w")
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
            log.close()
    except BaseException:
        _kill(procs)
        raise
    return procs


def wait(procs: list[subprocess.Popen], timeout: float) -> tuple[list[int], bool]:
    """Waits for all; stops the rest when one fails or the time is up. Always leaves none running."""
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.05)
    finally:
        _kill(procs)
        for p in procs:
            p.wait()
    return [p.returncode for p in procs], timed_out


def run(args: list[str], num_processes: int, devices_per_process: int, logdir: str, timeout: float = 300,
        extra_env: dict | None = None) -> Result:
    procs = start(args, num_processes, devices_per_process, logdir, extra_env)
    codes, timed_out = wait(procs, timeout)
    outputs = []
    for i in range(num_processes):
        with open(os.path.join(logdir, f"process_{i}.log"), encoding="utf-8", errors="replace") as f:
            outputs.append(f.read())
    return Result(codes, outputs, timed_out)


def last_error_line(output: str) -> str:
    """The line that says why a process failed: its `error: ...` line, else the last exception line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) or head == "Killed":
            return line
    return lines[-1] if lines else "(no output)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_processes", type=int, default=2)
    p.add_argument("--devices_per_process", type=int, default=4)
    p.add_argument("--logdir", default=None, help="default: <workdir>/launch_logs")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments for train.py, after --")
    a = p.parse_args(argv)
    train_args = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
    workdir = next((x.split("=", 1)[1] for x in train_args if x.startswith("--workdir=")), None)
    if workdir is None and "--workdir" in train_args:
        workdir = train_args[train_args.index("--workdir") + 1]
    logdir = a.logdir or os.path.join(workdir or ".", "launch_logs")
    r = run(train_args, a.num_processes, a.devices_per_process, logdir, a.timeout)
    print(r.outputs[0].rstrip().splitlines()[-1] if r.outputs[0].strip() else "")
    for i, code in enumerate(r.returncodes):
        if code != 0:
            print(f"process {i} exited with {code}{' (timed out)' if r.timed_out else ''}: "
                  f"{last_error_line(r.outputs[i])} (log: {os.path.join(logdir, f'process_{i}.log')})",
                  file=sys.stderr)
    return max((abs(c) for c in r.returncodes), default=0)


if __name__ == "__main__":
    sys.exit(main())
