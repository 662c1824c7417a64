"""Grouped matmul in plain XLA ops, fast on CPU: block-padded groups and one batched matmul.

Same contract as `jax.lax.ragged_dot(lhs_MK, rhs_EKN, group_sizes_E)`: rows
of `lhs` are sorted by group, group e owns `group_sizes[e]` consecutive rows
and is multiplied by `rhs[e]`; rows past the last group come out zero.

Why: XLA's CPU lowering of `ragged_dot` multiplies every row by every
group's matrix and masks (E times the FLOPs; several times slower than a
dense FFN of equal active FLOPs, see benchmarks/moe.py). Here each group is
padded to a multiple of `block` rows, so every block of rows belongs to one
group, and the blocks run as one batched matmul against their group's
matrix (the block-sparse idea of MegaBlocks, Gale et al. 2022). Shapes are
static: at most ceil(M / block) + E blocks, so at most E * block rows of
padding work.

XLA's CPU scatter is slow, and autodiff turns every gather into a scatter.
The row moves here are permutations with a known inverse, so their
gradients are gathers too (`_move_rows`), and the per-block weight gather's
gradient is a small one-hot matmul instead of a scatter-add.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def auto_block(rows: int, groups: int) -> int:
    """A power of two near rows / (4 groups), in [8, 256]: at most 1/4 of the rows in padding blocks."""
    target = max(rows // (4 * max(groups, 1)), 1)
    return int(min(256, max(8, 1 << (target.bit_length() - 1))))


@functools.partial(jax.custom_vjp, nondiff_argnums=())
def _move_rows(x_RK, src_Q, inv_R):
    """out[q] = x[src[q]] where src[q] >= 0, else 0; `inv` is the inverse map (inv[src[q]] = q)."""
    return _gather_or_zero(x_RK, src_Q)


def _gather_or_zero(x_RK, idx_Q):
    ok_Q = idx_Q >= 0
    return jnp.where(ok_Q[:, None], x_RK[jnp.maximum(idx_Q, 0)], jnp.zeros((), x_RK.dtype))


def _move_rows_fwd(x_RK, src_Q, inv_R):
    return _gather_or_zero(x_RK, src_Q), (src_Q, inv_R)


def _move_rows_bwd(res, g_QK):
    src_Q, inv_R = res
    # The map is injective on its valid entries, so the transpose is the inverse gather.
    return _gather_or_zero(g_QK, inv_R), None, None


_move_rows.defvjp(_move_rows_fwd, _move_rows_bwd)


@jax.custom_vjp
def _weights_per_block(rhs_EKN, group_n):
    return rhs_EKN[group_n]


def _weights_per_block_fwd(rhs_EKN, group_n):
    return rhs_EKN[group_n], (group_n, rhs_EKN.shape[0])


def _weights_per_block_bwd(res, g_nKN):
    group_n, E = res
    onehot_nE = jax.nn.one_hot(group_n, E, dtype=g_nKN.dtype)
    return jnp.einsum("nE,nKN->EKN", onehot_nE, g_nKN), None


_weights_per_block.defvjp(_weights_per_block_fwd, _weights_per_block_bwd)


def blocked_gmm(lhs_MK: jax.Array, rhs_EKN: jax.Array, group_sizes_E: jax.Array, block: int = 0) -> jax.Array:
    """`block=0` picks `auto_block(M, E)`."""
    M, K = lhs_MK.shape
    E, _, N = rhs_EKN.shape
    block = block or auto_block(M, E)
    nb = -(-M // block) + E  # static bound on the number of blocks after padding
    R = nb * block
    sizes_E = group_sizes_E.astype(jnp.int32)
    end_E = jnp.cumsum(sizes_E)
    start_E = end_E - sizes_E
    padded_E = (sizes_E + block - 1) // block * block
    pad_end_E = jnp.cumsum(padded_E)
    pad_start_E = pad_end_E - padded_E

    # Row m of lhs goes to padded row dest[m]; padded row r holds lhs row src[r] (-1: padding).
    row_M = jnp.arange(M, dtype=jnp.int32)
    group_M = jnp.searchsorted(end_E, row_M, side="right")
    g_M = jnp.minimum(group_M, E - 1)
    dest_M = jnp.where(group_M < E, pad_start_E[g_M] + row_M - start_E[g_M], -1)
    pad_R = jnp.arange(R, dtype=jnp.int32)
    group_R = jnp.searchsorted(pad_end_E, pad_R, side="right")
    g_R = jnp.minimum(group_R, E - 1)
    offset_R = pad_R - pad_start_E[g_R]
    src_R = jnp.where((group_R < E) & (offset_R < sizes_E[g_R]), start_E[g_R] + offset_R, -1)

    x_RK = _move_rows(lhs_MK, src_R, dest_M)
    group_of_block = g_R[::block]
    y_nbN = jnp.einsum("nbK,nKN->nbN", x_RK.reshape(nb, block, K), _weights_per_block(rhs_EKN, group_of_block))
    return _move_rows(y_nbN.reshape(R, N), dest_M, src_R)
