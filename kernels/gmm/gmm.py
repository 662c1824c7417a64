"""Grouped matmul for dropless MoE: `gmm(lhs_MD, rhs_EDF, group_sizes_E)` as a Pallas kernel with a custom VJP.

Semantics are exactly `jax.lax.ragged_dot(lhs_MD, rhs_EDF, group_sizes_E)`:
rows are sorted by group (expert), group e owns the consecutive rows
[offset_e, offset_e + group_sizes_E[e]), and those rows are multiplied by
rhs_EDF[e]; rows past sum(group_sizes_E) come out as zeros. Group sizes are
traced (dynamic); only M, D, F, E are static.

Tiling (after megablox's grouped matmul, Gale et al. 2022 "MegaBlocks"):
- forward `out = gmm(lhs, rhs)`: grid (M / bm, F / bn). A program owns one
  output tile, loops over the groups that intersect its bm rows (at most
  M / bm + E - 1 (tile, group) pairs in total), and for each group
  accumulates (its rows of lhs) @ rhs[g] over D in float32. Every output
  tile is written once, so no atomics and no revisits are needed.
- d lhs = gmm(d out, rhs^T): the same kernel reading rhs transposed in the
  tile loads (no transposed copy of the weights).
- d rhs = tgmm(lhs, d out): grid (E, D / bd, F / bn); group e loops over the
  row tiles its rows span and accumulates lhs[rows]^T d out[rows].
The per-tile group ranges are computed outside the kernel from the group
offsets (a few E-sized ops in XLA).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl


@dataclasses.dataclass(frozen=True)
class GmmBlocks:
    """Tile sizes (powers of two): rows, contraction, output columns."""
    block_m: int = 128
    block_k: int = 128
    block_n: int = 128

    def validate(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"gmm block size {f.name}={v} must be a power of two")


def _dot(a, b, *, trans_a=False, trans_b=False, precision=None):
    ca, cb = (0 if trans_a else 1), (1 if trans_b else 0)
    return lax.dot_general(a, b, (((ca,), (cb,)), ((), ())), preferred_element_type=jnp.float32,
                           precision=precision)


def _row_mask(start, end, row0, n):
    rows = row0 + lax.broadcasted_iota(jnp.int32, (n, 1), 0)
    return (rows >= start) & (rows < end)


def _gmm_kernel(offsets_ref, g_lo_ref, g_hi_ref, lhs_ref, rhs_ref, out_ref, *, bm, bk, n_k, transpose_rhs,
                precision):
    i = pl.program_id(0)
    bn = out_ref.shape[-1]

    def group(g, acc):
        rows = _row_mask(offsets_ref[g], offsets_ref[g + 1], i * bm, bm)

        def depth(kk, acc):
            ks = pl.ds(pl.multiple_of(kk * bk, bk), bk)
            x = lhs_ref[:, ks]
            x = jnp.where(rows, x, jnp.zeros_like(x))
            if transpose_rhs:  # rhs_ref: [E, F-tile rows, D] read as [bn, bk], used transposed
                return acc + _dot(x, rhs_ref[g, :, ks], trans_b=True, precision=precision)
            return acc + _dot(x, rhs_ref[g, ks, :], precision=precision)

        return lax.fori_loop(0, n_k, depth, acc)

    acc = lax.fori_loop(g_lo_ref[i], g_hi_ref[i], group, jnp.zeros((bm, bn), jnp.float32))
    out_ref[...] = acc.astype(out_ref.dtype)


def _tgmm_kernel(offsets_ref, t_lo_ref, t_hi_ref, lhs_ref, dout_ref, drhs_ref, *, bm, precision):
    e = pl.program_id(0)
    start, end = offsets_ref[e], offsets_ref[e + 1]
    bd, bn = drhs_ref.shape

    def tile(t, acc):
        rs = pl.ds(pl.multiple_of(t * bm, bm), bm)
        rows = _row_mask(start, end, t * bm, bm)
        x = lhs_ref[rs, :]
        x = jnp.where(rows, x, jnp.zeros_like(x))
        return acc + _dot(x, dout_ref[rs, :], trans_a=True, precision=precision)

    acc = lax.fori_loop(t_lo_ref[e], t_hi_ref[e], tile, jnp.zeros((bd, bn), jnp.float32))
    drhs_ref[...] = acc.astype(drhs_ref.dtype)


@dataclasses.dataclass(frozen=True)
class _Static:
    blocks: GmmBlocks
    interpret: bool
    compiler_params: object = None


def _precision(dtype):
    return lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _offsets(group_sizes_E, M):
    """[E + 1] group boundaries, clipped to the M rows."""
    ends = jnp.minimum(jnp.cumsum(group_sizes_E.astype(jnp.int32)), M)
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), ends])


def _tile_group_ranges(offsets, M, bm):
    """For each row tile, the groups [lo, hi) whose rows intersect it."""
    t0 = jnp.arange(M // bm, dtype=jnp.int32) * bm
    lo = jnp.searchsorted(offsets[1:], t0, side="right").astype(jnp.int32)  # first group ending after t0
    hi = jnp.searchsorted(offsets[:-1], t0 + bm, side="left").astype(jnp.int32)  # groups starting before the end
    return lo, jnp.maximum(hi, lo)


def _gmm_call(lhs, rhs, offsets, st: _Static, transpose_rhs: bool, out_dtype):
    """lhs [Mp, Dp] @ rhs[group] ([E, Dp, Fp], or [E, Fp, Dp] read transposed) -> [Mp, Fp]."""
    b = st.blocks
    Mp, Dp = lhs.shape
    E = rhs.shape[0]
    Fp = rhs.shape[1] if transpose_rhs else rhs.shape[2]
    bn = min(b.block_n, Fp)
    lo, hi = _tile_group_ranges(offsets, Mp, b.block_m)
    rhs_spec = (pl.BlockSpec((E, bn, Dp), lambda i, j: (0, j, 0)) if transpose_rhs
                else pl.BlockSpec((E, Dp, bn), lambda i, j: (0, 0, j)))
    kernel = functools.partial(_gmm_kernel, bm=b.block_m, bk=min(b.block_k, Dp), n_k=Dp // min(b.block_k, Dp),
                               transpose_rhs=transpose_rhs, precision=_precision(lhs.dtype))
    small = lambda n: pl.BlockSpec((n,), lambda i, j: (0,))  # noqa: E731
    return pl.pallas_call(
        kernel,
        grid=(Mp // b.block_m, Fp // bn),
        in_specs=[small(E + 1), small(Mp // b.block_m), small(Mp // b.block_m),
                  pl.BlockSpec((b.block_m, Dp), lambda i, j: (i, 0)), rhs_spec],
        out_specs=pl.BlockSpec((b.block_m, bn), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((Mp, Fp), out_dtype),
        interpret=st.interpret,
        compiler_params=st.compiler_params,
        name="gmm",
    )(offsets, lo, hi, lhs, rhs)


def _tgmm_call(lhs, dout, offsets, E, st: _Static, out_dtype):
    """Per group e: lhs[rows of e]^T @ dout[rows of e] -> [E, Dp, Fp]."""
    b = st.blocks
    Mp, Dp = lhs.shape
    Fp = dout.shape[1]
    bm, bd, bn = b.block_m, min(b.block_k, Dp), min(b.block_n, Fp)
    t_lo = offsets[:-1] // bm
    t_hi = jnp.maximum((offsets[1:] + bm - 1) // bm, t_lo)
    small = lambda n: pl.BlockSpec((n,), lambda e, i, j: (0,))  # noqa: E731
    return pl.pallas_call(
        functools.partial(_tgmm_kernel, bm=bm, precision=_precision(lhs.dtype)),
        grid=(E, Dp // bd, Fp // bn),
        in_specs=[small(E + 1), small(E), small(E),
                  pl.BlockSpec((Mp, bd), lambda e, i, j: (0, i)), pl.BlockSpec((Mp, bn), lambda e, i, j: (0, j))],
        out_specs=pl.BlockSpec((None, bd, bn), lambda e, i, j: (e, i, j)),
        out_shape=jax.ShapeDtypeStruct((E, Dp, Fp), out_dtype),
        interpret=st.interpret,
        compiler_params=st.compiler_params,
        name="tgmm",
    )(offsets, t_lo.astype(jnp.int32), t_hi.astype(jnp.int32), lhs, dout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _gmm(lhs, rhs, offsets, st):
    return _gmm_call(lhs, rhs, offsets, st, False, lhs.dtype)


def _gmm_fwd(lhs, rhs, offsets, st):
    return _gmm(lhs, rhs, offsets, st), (lhs, rhs, offsets)


def _gmm_bwd(st, res, dout):
    lhs, rhs, offsets = res
    dlhs = _gmm_call(dout, rhs, offsets, st, True, lhs.dtype)  # dout @ rhs[g]^T per row
    drhs = _tgmm_call(lhs, dout, offsets, rhs.shape[0], st, rhs.dtype)
    return dlhs, drhs, None


_gmm.defvjp(_gmm_fwd, _gmm_bwd)


def _pad_to(x, axis, mult):
    n = -x.shape[axis] % mult
    if n == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, n)
    return jnp.pad(x, widths)


def _fit(block, n):
    return min(block, max(16, 1 << max(0, (n - 1).bit_length())))


def gmm(
    lhs_MD: jax.Array,
    rhs_EDF: jax.Array,
    group_sizes_E: jax.Array,
    *,
    blocks: GmmBlocks | None = None,
    interpret: bool | None = None,
    backend: str | None = None,
) -> jax.Array:
    """Grouped matmul, equal to `jax.lax.ragged_dot(lhs_MD, rhs_EDF, group_sizes_E)`; differentiable in lhs and rhs.

    lhs_MD: rows sorted by group; rhs_EDF: one [D, F] matrix per group;
    group_sizes_E: int32 row counts (traced; rows past their sum give zeros).
    Returns [M, F] in lhs's dtype, accumulated in float32. `interpret=None`
    runs interpret mode on CPU and compiles (Triton) on GPU; `blocks` sets the
    tile sizes (shrunk to the problem when it is smaller). Call under `jax.jit`.
    """
    M, D = lhs_MD.shape
    E, D2, F = rhs_EDF.shape
    if D2 != D or group_sizes_E.shape != (E,):
        raise ValueError(f"gmm: lhs {lhs_MD.shape}, rhs {rhs_EDF.shape}, group_sizes {group_sizes_E.shape} "
                         "do not match ([M, D], [E, D, F], [E])")
    if lhs_MD.dtype != rhs_EDF.dtype:
        raise ValueError(f"gmm: lhs dtype {lhs_MD.dtype} != rhs dtype {rhs_EDF.dtype}")
    backend = jax.default_backend() if backend is None else backend
    interpret = backend == "cpu" if interpret is None else bool(interpret)
    b = blocks or GmmBlocks()
    b.validate()
    b = GmmBlocks(_fit(b.block_m, M), _fit(b.block_k, D), _fit(b.block_n, F))
    compiler_params = None
    if backend == "gpu" and not interpret:
        from jax.experimental.pallas import triton as plgpu
        compiler_params = plgpu.CompilerParams(num_warps=4, num_stages=2)
    st = _Static(blocks=b, interpret=interpret, compiler_params=compiler_params)
    # D and F swap roles (contraction <-> output columns) in the backward, so both are padded to a
    # multiple of both tile sizes (powers of two: the larger one). Zero padding changes no product.
    mult = max(b.block_k, b.block_n)
    lhs = _pad_to(_pad_to(lhs_MD, 0, b.block_m), 1, mult)
    rhs = _pad_to(_pad_to(rhs_EDF, 1, mult), 2, mult)
    out = _gmm(lhs, rhs, _offsets(group_sizes_E, M), st)
    return out[:M, :F]
