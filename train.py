"""Command line for the train loop (trainer/loop.py): one config, one workdir.

    python train.py --config experiments/configs/lm_tiny.py --workdir runs/lm_tiny
    python train.py --config experiments/configs/lm_tiny.py:smoke --workdir /tmp/x --config.train.num_steps=20

Everything else (setup, the jitted train step, evaluation, checkpoints and
resume) lives in `trainer/`; tests, studies and notebooks call
`trainer.loop.train_and_evaluate(config, workdir)` directly.
"""
from __future__ import annotations

import logging
import sys

import jax

from trainer import loop
from trainer.distributed import distributed_args, initialize as initialize_distributed
from trainer.nan_guard import NonFiniteError
from trainer.preemption import Preempted

log = logging.getLogger("train")


def main(argv=None) -> int:
    from absl import app, flags
    from ml_collections import config_flags

    flags_ = flags.FLAGS
    config_flags.DEFINE_config_file("config", None, "Experiment config file, optionally with :arg.")
    flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and TensorBoard files go.")
    # Multi-process runs (trainer/distributed.py): not needed under Slurm, Open MPI or on a TPU pod,
    # where the cluster is detected; JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID also work.
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, shared by every process.")
    flags.DEFINE_integer("num_processes", None, "Number of processes in the run.")
    flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes-1.")
    flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                      "auto: join a multi-process run when flags, JAX_* variables or a cluster say so; "
                      "on: always call jax.distributed.initialize (e.g. a TPU VM pod slice); off: never.")
    flags.mark_flags_as_required(["config", "workdir"])

    def run(_):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
        for noisy in ("absl", "orbax", "jax"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            initialize_distributed(distributed_args(flags_.coordinator_address, flags_.num_processes,
                                                    flags_.process_id, mode=flags_.distributed))
            if jax.process_index() > 0:
                log.setLevel(logging.WARNING)  # only process 0 reports progress
            summary = loop.train_and_evaluate(flags_.config, flags_.workdir)
        except loop.INPUT_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except NonFiniteError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except Preempted as e:
            if jax.process_index() == 0:
                print(e)
            return
        final = " ".join(f"{k}={v:.4f}" for k, v in summary["final"].items())
        if jax.process_index() == 0:
            print(f"done: {summary['steps']} steps in {summary['wall_time_s']:.1f}s; {final}")

    app.run(run, argv=argv)
    return 0


if __name__ == "__main__":
    main()
