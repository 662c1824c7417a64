"""Model FLOPs utilisation: the task's training FLOPs per second over the chips' peak.

`train/mfu` = (training FLOPs per token, from the task's accounting,
`Task.train_flops_per_token`) x (tokens per second) / (peak FLOP/s of all the
chips the run uses). The peak comes from the table below, by the device's
`device_kind` and the model's compute dtype: bfloat16 peaks for
`model.dtype="bfloat16"` and on TPUs (whose float32 matmuls run as bfloat16
passes at the default precision), TF32 peaks for float32 on NVIDIA GPUs (JAX's
default matmul precision there). On CPU or a device not in the table, the peak
is a float matmul timed once at start-up (well under a second): an
achievable rate rather than a datasheet one, shared by all devices of the
process. Dense (not 2:4-sparse) figures; the peak used is logged once.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp

T = 1e12


@dataclasses.dataclass(frozen=True)
class Peak:
    flops_per_s: float   # of one chip (datasheet) or of one process (measured)
    per: str             # "chip" or "process"
    source: str          # what the figure is: the table row and its document, or the measurement


# (substrings of the lower-cased device_kind, all of which must match, {compute: dense FLOP/s per chip}, source)
# Most specific first: "tpu v5 lite" (v5e) before "tpu v5" (v5p), "h100 pcie" before "h100".
PEAKS: tuple[tuple[tuple[str, ...], dict[str, float], str], ...] = (
    # https://cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16 per chip (Trillium)
    (("tpu v6",), {"bf16": 918 * T}, "TPU v6e datasheet, cloud.google.com/tpu/docs/v6e"),
    # https://cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16 per chip (device_kind "TPU v5 lite")
    (("tpu v5 lite",), {"bf16": 197 * T}, "TPU v5e datasheet, cloud.google.com/tpu/docs/v5e"),
    (("tpu v5e",), {"bf16": 197 * T}, "TPU v5e datasheet, cloud.google.com/tpu/docs/v5e"),
    # https://cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16 per chip (device_kind "TPU v5" or "TPU v5p")
    (("tpu v5",), {"bf16": 459 * T}, "TPU v5p datasheet, cloud.google.com/tpu/docs/v5p"),
    # https://cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16 per chip
    (("tpu v4",), {"bf16": 275 * T}, "TPU v4 datasheet, cloud.google.com/tpu/docs/v4"),
    # H200 datasheet, https://www.nvidia.com/en-us/data-center/h200/: SXM 1,979 (bf16) / 989 (tf32) TFLOPs
    # with 2:4 sparsity, so 989.5 / 494.5 dense; NVL 1,671 / 835 sparse, 835.5 / 417.5 dense.
    (("h200", "nvl"), {"bf16": 835.5 * T, "tf32": 417.5 * T}, "H200 NVL datasheet, nvidia.com/en-us/data-center/h200"),
    (("h200",), {"bf16": 989.5 * T, "tf32": 494.5 * T}, "H200 SXM datasheet, nvidia.com/en-us/data-center/h200"),
    # H100 datasheet, https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet:
    # SXM 1,979 / 989 sparse (989.5 / 494.5 dense), PCIe 1,513 / 756 sparse, NVL 1,671 / 835 sparse.
    (("h100", "pcie"), {"bf16": 756.5 * T, "tf32": 378 * T}, "H100 PCIe datasheet, resources.nvidia.com"),
    (("h100", "nvl"), {"bf16": 835.5 * T, "tf32": 417.5 * T}, "H100 NVL datasheet, resources.nvidia.com"),
    (("h100",), {"bf16": 989.5 * T, "tf32": 494.5 * T}, "H100 SXM datasheet, resources.nvidia.com"),
    # A100 datasheet, https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/
    # nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf: 312 (bf16) / 156 (tf32) TFLOPs dense, SXM and PCIe.
    (("a100",), {"bf16": 312 * T, "tf32": 156 * T}, "A100 datasheet, nvidia.com"),
)


def table_peak(device_kind: str, platform: str, compute_dtype: str) -> Peak | None:
    """The datasheet peak of one chip for this compute dtype, or None when the device is not in the table."""
    kind = device_kind.lower()
    key = "bf16" if compute_dtype == "bfloat16" or platform == "tpu" else "tf32"
    for needles, peaks, source in PEAKS:
        if all(n in kind for n in needles) and key in peaks:
            return Peak(peaks[key], "chip", f"{device_kind} {key} {peaks[key] / T:g} TFLOP/s ({source})")
    return None


@functools.lru_cache(maxsize=None)
def measured_peak(compute_dtype: str = "float32", n: int = 512, budget_s: float = 0.2) -> Peak:
    """A jitted [n, n] x [n, n] matmul timed for about `budget_s` on the default device (cached per process)."""
    dtype = jnp.bfloat16 if compute_dtype == "bfloat16" else jnp.float32
    a = jnp.ones((n, n), dtype)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()  # compile and warm up
    reps, t0 = 0, time.perf_counter()
    while True:
        matmul(a).block_until_ready()
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= budget_s or reps >= 1000:
            break
    rate = 2.0 * n ** 3 * reps / elapsed
    return Peak(rate, "process", f"measured {n}x{n} {compute_dtype} matmul: {rate / 1e9:.3g} GFLOP/s per process")


def total_peak(devices, compute_dtype: str) -> tuple[float, str]:
    """(peak FLOP/s of the whole run, a one-line description) for the run's devices (all of one kind)."""
    d = devices[0]
    peak = table_peak(d.device_kind, d.platform, compute_dtype)
    if peak is not None:
        return peak.flops_per_s * len(devices), f"{len(devices)} x {peak.source}"
    peak = measured_peak(compute_dtype)
    processes = len({x.process_index for x in devices})
    return peak.flops_per_s * processes, f"{processes} x {peak.source} (device {d.device_kind!r} not in the table)"


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops_per_s: float) -> float:
    return flops_per_token * tokens_per_s / peak_flops_per_s
