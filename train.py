"""Command line for the train loop (trainer/loop.py): one config, one workdir.

    python train.py --config experiments/configs/lm_tiny.py --workdir runs/lm_tiny
    python train.py --config experiments/configs/lm_tiny.py:smoke --workdir /tmp/x --config.train.num_steps=20
    python train.py --config experiments/configs/lm_tiny.py --workdir runs/lm_tiny --mode=eval --config.data.path=new/
    python train.py --config experiments/configs/lm_tiny.py --workdir runs/ft --init_from=runs/lm_tiny:600

`--config path[:arg]` loads the file's `get_config(arg)`; `--config.a.b=value`
overrides one field (parsed by the field's type). `--mode=eval` evaluates the
workdir's checkpoint (`--step`, default the latest) without training and
writes `eval.jsonl` beside the run's metrics; `--init_from=<workdir>[:step]`
starts a new run from another run's parameters (not its optimizer state).

Every input error (an unknown field, a value of the wrong type, a config
file that is missing or does not parse, a workdir that cannot be used, ...)
is one line `error: ...` and exit status 2, before anything compiles and
without writing anything. Everything else (setup, the jitted train step,
evaluation, checkpoints and resume) lives in `trainer/`; tests, studies and
notebooks call `trainer.loop.train_and_evaluate(config, workdir)` directly.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from nn.errors import ConfigError, InputError

log = logging.getLogger("train")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage dump and exit -> the house's one-line input error
        raise ConfigError(f"{message} (see python train.py --help)")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    """(flags, [(dotted field, value text)]) from the command line; InputError on bad input."""
    p = _Parser(prog="python train.py", description=__doc__.split("\n")[0], allow_abbrev=False,
                epilog="Config fields: --config.<section>.<field>=<value> (see experiments/configs/defaults.py).")
    p.add_argument("--config", required=True, help="experiment config file, optionally with :arg")
    p.add_argument("--workdir", required=True, help="where checkpoints, metrics and TensorBoard files go")
    p.add_argument("--mode", choices=("train", "eval"), default="train")
    p.add_argument("--step", type=int, default=None, help="--mode=eval: checkpoint step (default: the latest)")
    p.add_argument("--init_from", default="", help="<workdir>[:step]: start from another run's parameters")
    # Multi-process runs (trainer/distributed.py): not needed under Slurm, Open MPI or on a TPU pod,
    # where the cluster is detected; JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID also work.
    p.add_argument("--coordinator_address", default=None, help="host:port of process 0, shared by every process")
    p.add_argument("--num_processes", type=int, default=None, help="number of processes in the run")
    p.add_argument("--process_id", type=int, default=None, help="this process's index, 0 .. num_processes-1")
    p.add_argument("--distributed", choices=("auto", "on", "off"), default="auto",
                   help="auto: join a multi-process run when flags, JAX_* variables or a cluster say so; "
                        "on: always call jax.distributed.initialize (e.g. a TPU VM pod slice); off: never")
    args, rest = p.parse_known_args(argv)
    overrides = []
    i = 0
    while i < len(rest):
        item = rest[i]
        if not item.startswith("--config."):
            raise ConfigError(f"unknown argument {item!r} (config fields are set as --config.<field>=<value>)")
        name, eq, value = item[len("--config."):].partition("=")
        if not eq:  # `--config.a.b value`
            if i + 1 >= len(rest):
                raise ConfigError(f"--config.{name} has no value")
            value, i = rest[i + 1], i + 1
        overrides.append((name, value))
        i += 1
    return args, overrides


def check_workdir(workdir: str) -> None:
    """A workdir a run can write to; nothing is created here."""
    if not workdir.strip():
        raise InputError("--workdir is empty; name a folder for checkpoints and metrics")
    if "://" in workdir:
        return  # gs://, s3://, ...: opened through etils.epath and Orbax (docs/training.md); not probed here
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise InputError(f"--workdir={workdir!r} is an existing file, not a folder")
    probe = os.path.abspath(workdir)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"--workdir={workdir!r} cannot be written ({probe} is not a writable folder)")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("absl", "orbax", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, overrides = parse_args(argv)
        check_workdir(args.workdir)
        from trainer.config_files import load_config_file, override

        config = load_config_file(args.config)
        for name, value in overrides:
            override(config, name, value)
        if args.init_from:
            override(config, "train.init_from", args.init_from, where="--init_from")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import jax

    from trainer import loop, restore
    from trainer.distributed import distributed_args, initialize as initialize_distributed
    from trainer.nan_guard import NonFiniteError
    from trainer.preemption import Preempted

    try:
        initialize_distributed(distributed_args(args.coordinator_address, args.num_processes, args.process_id,
                                                mode=args.distributed))
        if jax.process_index() > 0:
            log.setLevel(logging.WARNING)  # only process 0 reports progress
        if args.mode == "eval":
            metrics = restore.evaluate_checkpoint(config, args.workdir, step=args.step)
            if jax.process_index() == 0:
                print("eval: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
            return 0
        summary = loop.train_and_evaluate(config, args.workdir)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        if jax.process_index() == 0:
            print(e)
        return 0
    if jax.process_index() == 0:
        final = " ".join(f"{k}={v:.4f}" for k, v in summary["final"].items())
        if summary.get("already_finished"):
            print(f"already finished: {args.workdir} holds a run of {summary['steps']} steps; {final}")
        else:
            print(f"done: {summary['steps']} steps in {summary['wall_time_s']:.1f}s; {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
