"""Grouped matmul in plain XLA ops, fast on CPU: block-padded groups and one batched matmul.

Same contract as `jax.lax.ragged_dot(lhs_MK, rhs_EKN, group_sizes_E)`: rows
of `lhs` are sorted by group, group e owns `group_sizes[e]` consecutive rows
and is multiplied by `rhs[e]`; rows past the last group come out zero.

Why: XLA's CPU lowering of `ragged_dot` multiplies every row by every
group's matrix and masks (E times the FLOPs; measured 4x slower than a dense
FFN of equal active FLOPs for E=8 in benchmarks/moe.py). Here each group is
padded to a multiple of `block` rows, so every block of rows belongs to one
group, and the blocks run as one batched matmul against their group's
matrix (the block-sparse idea of MegaBlocks, Gale et al. 2022). Shapes are
static: at most ceil(M / block) + E blocks, i.e. at most E * block padded
rows of extra work. On GPU/TPU, prefer `ragged_dot` or the Pallas kernel.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def blocked_gmm(lhs_MK: jax.Array, rhs_EKN: jax.Array, group_sizes_E: jax.Array, block: int = 64) -> jax.Array:
    M, K = lhs_MK.shape
    E, _, N = rhs_EKN.shape
    nb = -(-M // block) + E  # static bound on the number of blocks after padding
    sizes_E = group_sizes_E.astype(jnp.int32)
    end_E = jnp.cumsum(sizes_E)
    start_E = end_E - sizes_E
    padded_E = (sizes_E + block - 1) // block * block
    pad_end_E = jnp.cumsum(padded_E)
    pad_start_E = pad_end_E - padded_E

    row_M = jnp.arange(M, dtype=jnp.int32)
    group_M = jnp.searchsorted(end_E, row_M, side="right")  # E for rows past the last group
    valid_M = group_M < E
    g_M = jnp.minimum(group_M, E - 1)
    dest_M = jnp.where(valid_M, pad_start_E[g_M] + row_M - start_E[g_M], nb * block)  # out of range: dropped
    x_RK = jnp.zeros((nb * block, K), lhs_MK.dtype).at[dest_M].set(lhs_MK, mode="drop")

    block_start = jnp.arange(nb, dtype=jnp.int32) * block
    group_of_block = jnp.minimum(jnp.searchsorted(pad_end_E, block_start, side="right"), E - 1)
    y_nbN = jnp.einsum("nbK,nKN->nbN", x_RK.reshape(nb, block, K), rhs_EKN[group_of_block])
    y_RN = y_nbN.reshape(nb * block, N)
    out_MN = y_RN[jnp.minimum(dest_M, nb * block - 1)]
    return jnp.where(valid_M[:, None], out_MN, jnp.zeros((), out_MN.dtype))
