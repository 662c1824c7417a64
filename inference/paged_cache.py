"""Paged KV cache (Kwon et al. 2023, "Efficient Memory Management for LLM
Serving with PagedAttention", section 4.2): a fixed pool of physical KV
blocks of `block_size` tokens, and per sequence a block table mapping its
logical block i (positions [i*bs, (i+1)*bs)) to a physical block.

Two halves:
- `BlockAllocator` (host side, plain Python): which physical blocks are
  free, which sequence owns which; blocks are handed out on demand as a
  sequence grows and returned when it finishes. It never gives a block to
  two sequences and raises `PoolExhausted` instead of over-committing.
- `PagedKVCache` (device side, a pytree per attention layer): the pools
  `[num_blocks + 1, block_size, K, H]` plus the block tables and lengths of
  the rows in the batch. It has the interface of the contiguous
  `attention.kv_cache.KVCache` (write / attend / with_lengths), so the
  model's layers and `models.decode.generate` run on it unchanged.

The pool has one extra physical block, index `num_blocks`, that belongs to
nobody: unused block-table entries point at it, so writes from padding and
from idle batch rows land there instead of in a live sequence's block.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from attention.dense import DenseAttention
from attention.masks import default_positions
from nn.errors import InferenceError
from inference.paged_attention import gather_kv, paged_decode_attention


class PoolExhausted(InferenceError):
    """Not enough free blocks for a request; the scheduler preempts or waits."""


def check_block_size(block_size) -> int:
    if not isinstance(block_size, (int, np.integer)) or block_size < 1 or block_size & (block_size - 1):
        raise InferenceError(f"block_size={block_size!r} must be a positive power of two")
    return int(block_size)


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-int(num_tokens) // block_size)


class BlockAllocator:
    """Free list over `num_blocks` physical blocks; per-sequence block lists (the block tables)."""

    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = check_block_size(block_size)
        if not isinstance(num_blocks, (int, np.integer)) or num_blocks < 1:
            raise InferenceError(f"num_blocks={num_blocks!r} must be a positive integer")
        self.num_blocks = int(num_blocks)
        # Popped from the end: low block ids first, which keeps tests readable.
        self._free = list(range(self.num_blocks - 1, -1, -1))
        self._tables: dict[object, list[int]] = {}

    @classmethod
    def for_pool(cls, pool_tokens: int, block_size: int) -> "BlockAllocator":
        """A pool of `pool_tokens` KV positions cut into blocks; the block size must divide it."""
        block_size = check_block_size(block_size)
        if not isinstance(pool_tokens, (int, np.integer)) or pool_tokens < 1:
            raise InferenceError(f"pool_tokens={pool_tokens!r} must be a positive integer")
        if pool_tokens % block_size:
            raise InferenceError(f"block_size={block_size} does not divide the pool of {pool_tokens} tokens")
        return cls(pool_tokens // block_size, block_size)

    # --- queries ---------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def table(self, seq_id) -> list[int]:
        return list(self._tables.get(seq_id, ()))

    def sequences(self) -> list:
        return list(self._tables)

    def blocks_needed(self, seq_id, num_tokens: int) -> int:
        """Extra blocks `seq_id` needs to hold `num_tokens` positions."""
        return max(blocks_for(num_tokens, self.block_size) - len(self._tables.get(seq_id, ())), 0)

    def can_hold(self, seq_id, num_tokens: int) -> bool:
        return self.blocks_needed(seq_id, num_tokens) <= self.num_free

    def check_fits(self, num_tokens: int, what: str = "one sequence") -> None:
        """Raises if even the empty pool could not hold `num_tokens` positions."""
        need = blocks_for(num_tokens, self.block_size)
        if need > self.num_blocks:
            raise InferenceError(
                f"the pool of {self.num_blocks} blocks x {self.block_size} tokens is smaller than {what} "
                f"needs ({num_tokens} tokens = {need} blocks)"
            )

    # --- changes ---------------------------------------------------------------
    def ensure(self, seq_id, num_tokens: int) -> list[int]:
        """Grows `seq_id`'s table to cover `num_tokens` positions; all or nothing. Returns new blocks."""
        need = self.blocks_needed(seq_id, num_tokens)
        if need > len(self._free):
            raise PoolExhausted(
                f"sequence {seq_id!r} needs {need} more blocks for {num_tokens} tokens but only "
                f"{len(self._free)} of {self.num_blocks} are free"
            )
        new = [self._free.pop() for _ in range(need)]
        self._tables.setdefault(seq_id, []).extend(new)
        return new

    def free(self, seq_id) -> int:
        """Returns all of `seq_id`'s blocks to the pool; returns how many."""
        blocks = self._tables.pop(seq_id, [])
        self._free.extend(reversed(blocks))
        return len(blocks)

    def table_array(self, seq_ids, width: int) -> np.ndarray:
        """[len(seq_ids), width] int32 block tables; unused entries (and None rows) point at the spare block."""
        out = np.full((len(seq_ids), width), self.num_blocks, np.int32)
        for r, sid in enumerate(seq_ids):
            blocks = self._tables.get(sid, []) if sid is not None else []
            if len(blocks) > width:
                raise InferenceError(f"sequence {sid!r} holds {len(blocks)} blocks, more than the table width {width}")
            out[r, : len(blocks)] = blocks
        return out


@flax.struct.dataclass
class PagedKVCache:
    """One layer's paged cache: shared pools, plus block tables and lengths of the batch rows."""

    k_pool_PbKH: jax.Array  # [num_blocks + 1, block_size, K, H]; the last block is the spare
    v_pool_PbKH: jax.Array
    block_tables_BL: jax.Array  # int32 [B, L]: logical block -> physical block
    lengths_B: jax.Array  # int32: filled positions per row
    impl: str = flax.struct.field(pytree_node=False, default="blocked")  # see paged_attention.PAGED_IMPLS

    @staticmethod
    def init_pool(num_blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype=jnp.float32):
        shape = (num_blocks + 1, block_size, kv_heads, head_dim)
        return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)  # two buffers: both are donated

    @property
    def block_size(self) -> int:
        return self.k_pool_PbKH.shape[1]

    @property
    def max_len(self) -> int:
        return self.block_tables_BL.shape[1] * self.block_size

    @property
    def spare_block(self) -> int:
        return self.k_pool_PbKH.shape[0] - 1

    def write(self, k_BTKH: jax.Array, v_BTKH: jax.Array) -> "PagedKVCache":
        """Scatters T new positions per row into the blocks its table names (lengths advance by T)."""
        B, T = k_BTKH.shape[:2]
        bs, L = self.block_size, self.block_tables_BL.shape[1]
        pos_BT = self.lengths_B[:, None] + default_positions(B, T)
        logical_BT = pos_BT // bs
        phys_BT = jnp.take_along_axis(self.block_tables_BL, jnp.minimum(logical_BT, L - 1), axis=1)
        # Positions past the table (padding of a long prefill) go to the spare block.
        phys_BT = jnp.where(logical_BT < L, phys_BT, self.spare_block)
        off_BT = pos_BT % bs
        k = self.k_pool_PbKH.at[phys_BT, off_BT].set(k_BTKH.astype(self.k_pool_PbKH.dtype))
        v = self.v_pool_PbKH.at[phys_BT, off_BT].set(v_BTKH.astype(self.v_pool_PbKH.dtype))
        return self.replace(k_pool_PbKH=k, v_pool_PbKH=v, lengths_B=self.lengths_B + T)

    def attend(self, core, q_BTNH: jax.Array, q_positions_BT: jax.Array, *, ctx=None) -> jax.Array:
        """One-token decode goes through paged decode attention; a prefill gathers and runs `core`."""
        if q_BTNH.shape[1] == 1:
            out_BNH = paged_decode_attention(
                q_BTNH[:, 0], self.k_pool_PbKH, self.v_pool_PbKH, self.block_tables_BL, self.lengths_B,
                impl=self.impl,
            )
            return out_BNH[:, None]
        k_BSKH, v_BSKH = gather_kv(self.k_pool_PbKH, self.v_pool_PbKH, self.block_tables_BL)
        B, S = k_BSKH.shape[:2]
        return core(
            q_BTNH, k_BSKH, v_BSKH, ctx=ctx, causal=True,
            q_positions_BT=q_positions_BT, kv_positions_BS=default_positions(B, S), kv_lengths_B=self.lengths_B,
        )

    def with_lengths(self, lengths_B: jax.Array) -> "PagedKVCache":
        return self.replace(lengths_B=lengths_B.astype(jnp.int32))


def paged_caches(pools, block_tables_BL, lengths_B, impl: str = "blocked") -> list[PagedKVCache]:
    """Per-layer caches over `pools` (a list of (k_pool, v_pool)) sharing one set of block tables."""
    return [PagedKVCache(k, v, block_tables_BL, lengths_B, impl) for k, v in pools]


def init_pools(model, num_blocks: int, block_size: int):
    """Zeroed (k_pool, v_pool) per layer of a DecoderLM with standard attention layers."""
    pools = []
    for blk in model.block_modules():
        attn = blk.attn
        if not isinstance(attn, DenseAttention):
            raise InferenceError(f"the paged KV cache needs dense attention layers, not {type(attn).__name__}")
        pools.append(PagedKVCache.init_pool(num_blocks, block_size, attn.num_kv_heads, attn.head_dim, attn.dtype))
    return pools


def pools_of(caches) -> list:
    return [(c.k_pool_PbKH, c.v_pool_PbKH) for c in caches]
