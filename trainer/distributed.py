"""Joining a multi-process run through `jax.distributed`.

One training run may span many processes (one per host on a TPU pod, one
per GPU or per node on a GPU cluster). Every process runs the same
`train.py`; `jax.distributed.initialize` connects them through a
coordinator (process 0) so that `jax.devices()` lists the devices of all
processes and one `jax.jit` program runs over the global mesh.

How a process learns its place, in order:

1. explicit flags `--coordinator_address/--num_processes/--process_id`;
2. the environment variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
   `JAX_PROCESS_ID` (for launchers that set variables rather than flags);
3. a detected cluster: Slurm (`srun`, more than one task), Open MPI
   (`mpirun`, more than one rank) or a multi-host Cloud TPU slice whose
   workers are listed in the environment (GKE: `TPU_WORKER_HOSTNAMES`,
   `TPU_PROCESS_ADDRESSES`). There `jax.distributed.initialize()` is called
   with no arguments and JAX reads the coordinator, process count and id
   from the cluster itself;
4. none of these: a single-process run, nothing is initialized.

`--distributed=on` forces step 3 where the environment says nothing (a TPU
VM pod slice on GCE, where JAX asks the metadata server); `--distributed=off`
never initializes.

On CPU, cross-process collectives go through gloo (set explicitly here,
although it is JAX's default, so a changed default cannot silently break
the local multi-process test).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

import jax

from nn.errors import ConfigError

log = logging.getLogger("train")

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


@dataclass(frozen=True)
class DistributedArgs:
    """What to pass to `jax.distributed.initialize`; all None = let JAX detect the cluster."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    source: str = "flags"  # flags | env | slurm | openmpi | tpu | cluster (forced, JAX detects)


def _int(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} must be an integer") from None


def detected_cluster(environ: Mapping[str, str]) -> str | None:
    """The multi-process cluster this process was launched in, if any.

    Only launches of more than one process count: a single `srun` task or a
    one-host TPU VM trains without `jax.distributed`.
    """
    if "SLURM_JOB_ID" in environ and "SLURM_PROCID" in environ:
        if _int(environ.get("SLURM_NTASKS", environ.get("SLURM_STEP_NUM_TASKS", "1")), "SLURM_NTASKS") > 1:
            return "slurm"
    if "OMPI_COMM_WORLD_SIZE" in environ and _int(environ["OMPI_COMM_WORLD_SIZE"], "OMPI_COMM_WORLD_SIZE") > 1:
        return "openmpi"
    # Cloud TPU VMs list every host of the slice (GKE and queued resources).
    hosts = environ.get("TPU_PROCESS_ADDRESSES", "") or environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return "tpu"
    return None


MODES = ("auto", "on", "off")


def distributed_args(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
                     environ: Mapping[str, str] = os.environ, mode: str = "auto") -> DistributedArgs | None:
    """Decides whether and how to join a multi-process run (pure; see the module doc)."""
    if mode not in MODES:
        raise ConfigError(f"distributed={mode!r} must be one of {list(MODES)}")
    if mode == "off":
        return None
    given = [v is not None and v != "" for v in (coordinator_address, num_processes, process_id)]
    source = "flags"
    if not any(given):
        coordinator_address = environ.get(ENV_ADDRESS) or None
        num_processes = environ.get(ENV_COUNT) or None
        process_id = environ.get(ENV_ID) or None
        given = [v is not None for v in (coordinator_address, num_processes, process_id)]
        source = "env"
    if any(given):
        names = ("coordinator_address", "num_processes", "process_id") if source == "flags" else (
            ENV_ADDRESS, ENV_COUNT, ENV_ID)
        missing = [n for n, g in zip(names, given) if not g]
        if missing:
            raise ConfigError(f"{missing[0]} is missing: a multi-process launch needs all of {', '.join(names)}")
        n = _int(num_processes, names[1])
        i = _int(process_id, names[2])
        if n < 1:
            raise ConfigError(f"{names[1]}={n} must be >= 1")
        if not 0 <= i < n:
            raise ConfigError(f"{names[2]}={i} must be in [0, {n})")
        if ":" not in str(coordinator_address):
            raise ConfigError(f"{names[0]}={coordinator_address!r} must be host:port")
        if n == 1:
            return None
        return DistributedArgs(str(coordinator_address), n, i, source)
    cluster = detected_cluster(environ) or ("cluster" if mode == "on" else None)
    return DistributedArgs(source=cluster) if cluster else None


def initialize(args: DistributedArgs | None) -> None:
    """Joins the run (before any JAX computation); a no-op for a single process."""
    if args is None:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    log.info("process %d of %d joined (%s; coordinator %s); %d local of %d global devices",
             jax.process_index(), jax.process_count(), args.source, args.coordinator_address or "auto",
             jax.local_device_count(), jax.device_count())
