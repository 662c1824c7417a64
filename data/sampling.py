"""Which row of which source every global row of every step reads: pure functions of (seed, index).

- `permute(i, n, key)`: a bijection of [0, n) (a 4-round Feistel network on the
  next even power of two, cycle-walking back into range), vectorized and with
  O(1) memory: the epoch's shuffle of n rows without materializing it, as
  grain's index shuffle does, but for a whole batch of indices at once.
- `mixture_sources(g, weights, seed)`: source of global row g. Rows come in
  blocks of `BLOCK`; every block holds exactly round(BLOCK * w_k) rows of
  source k (largest remainder), in an order shuffled per block. Counts are
  therefore exact at block granularity, and the index of g within its source's
  own stream is a closed form (block * count_k + rank within the block).
- `source_rows(...)`: within source k, the i-th row read is row
  permute(i mod R_k, R_k, (seed, k, epoch)) of that source: every row once per
  epoch, a fresh order every epoch.
"""
from __future__ import annotations

import numpy as np

BLOCK = 4096
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a well-mixed 64-bit hash (uint64 wrap-around is intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _key(*parts: int) -> np.uint64:
    k = np.zeros(1, np.uint64)
    for p in parts:
        k = _mix(k ^ np.uint64(int(p) & 0xFFFFFFFFFFFFFFFF))
    return k[0]


def permute(i: np.ndarray, n: int, key: np.uint64) -> np.ndarray:
    """A pseudo-random bijection of [0, n) applied to `i` (vectorized)."""
    i = np.asarray(i, np.uint64)
    if n <= 1:
        return i.astype(np.int64)
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    sh = np.uint64(half)

    def enc(x):
        left, right = x >> sh, x & mask
        for r in range(4):
            left, right = right, left ^ (_mix(right ^ key ^ np.uint64(r * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF)) & mask)
        return (left << sh) | right

    y = enc(i)
    out_of_range = y >= np.uint64(n)
    while out_of_range.any():  # cycle-walking: at most a few rounds (the domain is < 4 n)
        y[out_of_range] = enc(y[out_of_range])
        out_of_range = y >= np.uint64(n)
    return y.astype(np.int64)


def block_counts(weights: list[float]) -> np.ndarray:
    """Rows of each source in every block of BLOCK: largest-remainder apportionment of the weights."""
    w = np.asarray(weights, np.float64) / np.sum(weights)
    exact = w * BLOCK
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[: BLOCK - counts.sum()]] += 1
    return counts


def mixture_index(g: np.ndarray, weights: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, index within that source's stream) of global rows g."""
    g = np.asarray(g, np.int64)
    if len(weights) == 1:
        return np.zeros_like(g), g
    counts = block_counts(weights)
    labels = np.repeat(np.arange(len(weights)), counts)  # BLOCK labels
    src, idx = np.empty_like(g), np.empty_like(g)
    for b in np.unique(g // BLOCK):
        order = labels[permute(np.arange(BLOCK), BLOCK, _key(seed, 0x6D6978, b))]  # this block's label order
        onehot = order[:, None] == np.arange(len(weights))[None, :]
        rank = (np.cumsum(onehot, axis=0) - 1)[np.arange(BLOCK), order]  # rank of each slot among its source's
        sel = g // BLOCK == b
        pos = g[sel] % BLOCK
        src[sel] = order[pos]
        idx[sel] = b * counts[order[pos]] + rank[pos]
    return src, idx


def source_rows(i: np.ndarray, num_rows: int, seed: int, source: int) -> np.ndarray:
    """Row of a source with num_rows rows that its i-th read gets: a fresh permutation per epoch."""
    i = np.asarray(i, np.int64)
    epoch, within = np.divmod(i, num_rows)
    out = np.empty_like(i)
    for e in np.unique(epoch):
        sel = epoch == e
        out[sel] = permute(within[sel], num_rows, _key(seed, source, e))
    return out
