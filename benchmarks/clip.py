"""CLIP training-step throughput and MFU, and the cost of the sharded contrastive loss.

    python -m benchmarks.clip                      # ViT-S/8 tower at 64x64, batch 32; loss on 8 fake devices
    python -m benchmarks.clip --layers 4 --repeats 3
    python -m benchmarks.clip --smoke              # seconds (the tests run this)

1. Train step: our full CLIP train step (the loop's jitted `train_step`: both
   towers, softmax loss, AdamW, clamp) on one device with a ViT-S-like image
   tower (width 384, 6 heads, MLP 1536, patch 8 at 64x64 -> 64 patches + CLS;
   12 layers as in ViT-S unless `--layers`) and a text tower of the same width
   (`--text-layers`, 32 byte tokens). Prints images/s and MFU = analytic
   training FLOPs (clip/model.py, 2mkn per matmul, 3x forward) / time /
   the float32 matmul peak (2048^3) measured in this process right after
   each timed repeat, so both see the same load on a shared machine.
2. Sharded loss: forward + backward of the softmax and sigmoid losses for a
   global batch B on 8 fake CPU devices, as `jax.shard_map` local loss +
   all-gather (clip/loss.py) and as the plain global-view loss under the same
   sharding (XLA partitions it), relative to the single-device loss on one
   device. The 8 fake devices share this machine's cores, so the ratio shows
   the overhead of splitting, not a multi-chip speed-up.
Medians over repeats, contenders interleaved.
"""
from __future__ import annotations

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

from trainer import loop  # noqa: E402
from benchmarks.baselines import matmul_peak_flops  # noqa: E402
from clip import loss as closs  # noqa: E402
from clip.model import l2_normalize  # noqa: E402
from experiments.configs import clip_shapes  # noqa: E402


def vit_s_config(layers: int, text_layers: int, batch: int):
    c = clip_shapes.get_config()
    S = dict(d_model=384, n_heads=6, n_kv_heads=6, d_ff=1536)
    c.vision.update(image_size=64, patch_size=8, n_layers=layers, **S)
    c.model.update(n_layers=text_layers, **S)
    c.clip.update(image_proj_dim=384, text_proj_dim=384)
    c.data.update(seq_len=32, batch_size=batch)
    return c


def smoke_config():
    return clip_shapes.get_config("smoke")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_train_step(cfg, steps: int, repeats: int, peak_fn) -> dict:
    """Each repeat times `steps` train steps and then the matmul peak, so both see the same machine
    load (these machines are shared); MFU is the median over repeats of step FLOP/s / that peak."""
    s = loop.setup(cfg, jax.devices()[:1])
    B = int(cfg.data.batch_size)
    flops = s.task.train_flops_per_token() * B
    with jax.set_mesh(s.mesh):
        state = loop.init_state(s)
        batches = [loop.to_global(s.task.train_batch(i), s.batch_shardings) for i in range(2)]
        fn = loop.jit_train_step(s, s.task.train_batch(0))
        state, m = fn(state, batches[0])  # compile
        jax.block_until_ready(m)
        holder = {"state": state}

        def run():
            for i in range(steps):
                holder["state"], m = fn(holder["state"], batches[i % 2])
            jax.block_until_ready(m)

        dts, peaks = [], []
        for _ in range(repeats):
            dts.append(median_time(run, 1) / steps)
            peaks.append(peak_fn())
    dt = float(np.median(dts))
    return {"params": s.task.param_count(), "batch": B, "step_ms": 1e3 * dt, "images_per_s": B / dt,
            "gflops_per_s": flops / dt / 1e9, "peak_gflops": float(np.median(peaks)) / 1e9,
            "mfu": float(np.median([flops / d / p for d, p in zip(dts, peaks)]))}


def bench_sharded_loss(B: int, Z: int, repeats: int) -> dict:
    devices = jax.devices()
    if len(devices) < 8:
        return {}
    k1, k2 = jax.random.split(jax.random.key(0))
    img = l2_normalize(jax.random.normal(k1, (B, Z)))
    txt = l2_normalize(img + jax.random.normal(k2, (B, Z)))
    t, b = jnp.float32(2.0), jnp.float32(-10.0)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,), devices=devices[:8])
    out = {}
    for kind in ("softmax", "sigmoid"):
        def grad_of(axes):
            f = lambda i, x: closs.contrastive_loss(kind, i, x, t, b, batch_axes=axes)[0]  # noqa: E731
            return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))

        single, sharded, global_view = grad_of(None), grad_of(("data",)), grad_of(None)
        one = (jax.device_put(img, devices[0]), jax.device_put(txt, devices[0]))
        spec = NamedSharding(mesh, P("data"))
        eight = (jax.device_put(img, spec), jax.device_put(txt, spec))

        def on_mesh(fn):
            def run():
                with jax.set_mesh(mesh):
                    jax.block_until_ready(fn(*eight))
            return run

        runs = {"single": lambda: jax.block_until_ready(single(*one)),
                "sharded": on_mesh(sharded), "global_view_8dev": on_mesh(global_view)}
        for r in runs.values():
            r()  # compile
        times = {k: [] for k in runs}
        for _ in range(repeats):
            for k, r in runs.items():
                times[k].append(median_time(r, 3))
        med = {k: float(np.median(v)) for k, v in times.items()}
        out[kind] = {**{f"{k}_ms": 1e3 * v for k, v in med.items()},
                     "sharded_vs_single": med["sharded"] / med["single"],
                     "global_view_vs_single": med["global_view_8dev"] / med["single"]}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12, help="image tower layers (ViT-S: 12)")
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="train steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--loss-batch", type=int, default=1024)
    p.add_argument("--loss-width", type=int, default=512)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (for tests)")
    a = p.parse_args(argv)
    if a.smoke:
        cfg, a.steps, a.repeats, a.loss_batch, a.loss_width = smoke_config(), 1, 1, 64, 16
        peak_fn = lambda: matmul_peak_flops(256, 3)  # noqa: E731
    else:
        cfg = vit_s_config(a.layers, a.text_layers, a.batch)
        peak_fn = lambda: matmul_peak_flops(2048, 3)  # noqa: E731
    r = bench_train_step(cfg, a.steps, a.repeats, peak_fn)
    print(f"float32 matmul peak (2048^3, measured after each timed repeat): {r['peak_gflops']:.1f} GFLOP/s "
          f"(median) on {jax.devices()[0].device_kind}")
    v = cfg.vision
    print(f"train step ({v.n_layers}-layer width-{v.d_model} ViT/{v.patch_size} at {v.image_size}x{v.image_size} + "
          f"{cfg.model.n_layers}-layer text tower, {r['params']:,} params, batch {r['batch']}): "
          f"{r['step_ms']:.0f} ms, {r['images_per_s']:.1f} images/s, {r['gflops_per_s']:.1f} GFLOP/s, "
          f"MFU {100 * r['mfu']:.1f}%")
    for kind, x in bench_sharded_loss(a.loss_batch, a.loss_width, a.repeats).items():
        print(f"{kind} loss fwd+bwd, B={a.loss_batch}, Z={a.loss_width}: single device {x['single_ms']:.2f} ms; "
              f"8 fake devices: shard_map local loss {x['sharded_ms']:.2f} ms ({x['sharded_vs_single']:.2f}x), "
              f"global view {x['global_view_8dev_ms']:.2f} ms ({x['global_view_vs_single']:.2f}x)")


if __name__ == "__main__":
    main()
