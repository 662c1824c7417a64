"""Longformer attention (Beltagy et al. 2020): dilated sliding window + global tokens.

Window semantics (W = `model.longformer.window`, d = the head's dilation rate, in token
indices of the row; Sec. 3.1 "Sliding Window" / "Dilated Sliding Window"):
- non-causal: query i sees key j iff (i - j) % d == 0 and |i - j| <= d * W/2
  (W/2 dilated steps each side, W + 1 keys; W must be even);
- causal:     query i sees key j iff (i - j) % d == 0 and 0 <= i - j <= d * W
  (W dilated steps back, W + 1 keys).
With d = 1 this is `reference_attention(..., window=(W/2, W/2))`, resp.
`window=(W, 0)` with `causal=True`. The band is measured in indices, not in
`positions`: within a packed segment the two agree (positions count up by
one), and segments never see each other anyway; positions only drive RoPE.

Global tokens (Sec. 3.1 "Global Attention", "Linear Projections for Global
Attention"): a global token attends to every key and every query attends to
it. Queries of global tokens use their own projection Q_g and attend over
K_g/V_g of all tokens; every query sees the global tokens' ordinary K/V in
the same softmax as its window (logits concatenated, so normalization is
exact), and a global key is dropped from the window part so it is counted
once. Causal, segment and padding masks apply to global pairs too (causal
global tokens see only the past). The layer marks the first `num_global`
positions of each row; `longformer_attention` takes any boolean
`is_global_BT` plus the static slot count A, so a per-example mask from the
batch can be wired in later (`global_indices` turns it into gather indices).

Cost is O(T (W + A)): each head's sequence is split into its d interleaved
sub-sequences (indices r, r + d, r + 2d, ...), where the dilated band becomes
a plain band; those are cut into blocks of L (= W/2 non-causal, W causal)
queries, and each block attends to itself and its neighbour blocks
(3 blocks non-causal, 2 causal), masked within the band.

KV-cache decoding (`longformer_cached_attention`) gives each new query the
same keys as the full causal forward: a dense mask over the cache (one row
per decoded token, so O(S) per token like dense decoding); with global tokens
the cache (`GlobalKVCache`) also keeps K_g/V_g for global queries.

Local axis letters (beyond sharding/axes.py): A global token slots, U blocks
(all sub-sequences), L queries per block, J keys per block, R dilation rate.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import MultiHeadAttention, head_dim_of, variant_settings
from attention import flash
from attention.flash import resolve_impl, window_attention_pallas
from attention.kv_cache import KVCache
from nn.linear import linear
from attention.masks import default_positions
from attention.registry import register_attention
from attention.rope import apply_rope
from sharding import axes as ax

_NEG = -1e30  # finite: a fully masked row stays NaN-free; its weights are zeroed by the mask


class GlobalInputs(NamedTuple):
    """Global-token inputs of `longformer_attention` (A = number of global slots, static)."""
    is_global_BT: jax.Array  # bool: which tokens are global
    idx_BA: jax.Array        # int32: index of each slot's token (slots past the row's count: any non-global index)
    qg_BANH: jax.Array       # global queries, Q_g x of the slot tokens
    kg_BSKH: jax.Array       # K_g x of all tokens
    vg_BSKH: jax.Array       # V_g x of all tokens


class _Glob(NamedTuple):
    """What the window part needs about the global keys: their indices, visibility and segments."""
    idx_BA: jax.Array
    ok_BA: jax.Array   # slot holds a global token that is not padding
    seg_BA: jax.Array


def band(window: int, causal: bool) -> tuple[int, int]:
    """(left, right) reach of the window in dilated steps; see the module docstring."""
    return (window, 0) if causal else (window // 2, window // 2)


def block_geometry(window: int, causal: bool, sub_len: int) -> tuple[int, int, int, int]:
    """(L, U, back, ahead): block length, blocks per sub-sequence, neighbour blocks each side.

    L = the longest reach (W/2 or W) so one neighbour block per side covers the
    band; for short sequences L shrinks to the sequence and the neighbour count
    is capped, which degrades gracefully to dense attention within the row.
    """
    left, right = band(window, causal)
    L = max(1, min(max(left, right), sub_len))
    U = -(-sub_len // L)
    return L, U, min(-(-left // L), U - 1), min(-(-right // L), U - 1)


def global_indices(is_global_BT: jax.Array, num_slots: int) -> jax.Array:
    """[B, A] indices of the global tokens of each row, first ones first.

    A stable sort puts global indices first; unused slots get distinct
    non-global indices, so scattering outputs back never collides.
    """
    order_BT = jnp.argsort(~is_global_BT, axis=1, stable=True)
    return order_BT[:, :num_slots].astype(jnp.int32)


def _pad_seq(x, n, fill):
    """Pads axis 1 with n trailing `fill` entries."""
    if n == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, n)
    return jnp.pad(x, widths, constant_values=fill)


def _query_blocks(x_BT_, rate, U, L, fill):
    """[B, T, ...] -> [B, R, U, L, ...]: sub-sequence r holds indices r, r + R, ... (dilation)."""
    B, T = x_BT_.shape[:2]
    x = _pad_seq(x_BT_, rate * U * L - T, fill)
    x = x.reshape(B, U, L, rate, *x_BT_.shape[2:])  # index t = (u L + a) R + r
    return jnp.moveaxis(x, 3, 1)


def _key_blocks(x_BS_, rate, U, L, back, ahead, fill):
    """[B, S, ...] -> [B, R, U, J, ...]: for each query block, its block and `back`/`ahead` neighbours."""
    x = _query_blocks(x_BS_, rate, U, L, fill)
    B, rest = x.shape[0], x.shape[4:]
    x = x.reshape(B, rate, U * L, *rest)
    widths = [(0, 0)] * x.ndim
    widths[2] = (back * L, ahead * L)
    x = jnp.pad(x, widths, constant_values=fill)
    shifted = [x[:, :, o * L:o * L + U * L].reshape(B, rate, U, L, *rest) for o in range(back + ahead + 1)]
    return jnp.concatenate(shifted, axis=3)  # J = (back + ahead + 1) L


def _masked_softmax(logits, mask):
    """Softmax over the last axis restricted to `mask`; rows with no visible key give zeros."""
    logits = jnp.where(mask, logits, _NEG)
    w = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True)) * mask
    denom = jnp.sum(w, axis=-1, keepdims=True)
    return w / jnp.where(denom == 0, 1.0, denom)


def _head_groups(dilation_N: Sequence[int], G: int):
    """Per distinct rate: (rate, query heads, the KV head of each group row, query heads per row).

    Query heads of one rate that fill whole KV groups evenly share each KV head
    (no repeat); otherwise that rate's KV heads are repeated per query head.
    """
    out = []
    for rate in sorted(set(dilation_N)):
        heads = [n for n, r in enumerate(dilation_N) if r == rate]
        kv = sorted({n // G for n in heads})
        counts = {k: sum(1 for n in heads if n // G == k) for k in kv}
        if len(set(counts.values())) == 1:
            out.append((rate, heads, kv, len(heads) // len(kv)))
        else:
            out.append((rate, heads, [n // G for n in heads], 1))
    return out


def _window_attention(q_BTNH, k_BSKH, v_BSKH, *, rate, Gd, window, causal, seg_q_BT, seg_k_BS,
                      key_ok_BS, t_BT, glob, scale):
    """Blocked dilated-window attention for heads of one dilation rate (+ the global keys)."""
    B, T, Nd, H = q_BTNH.shape
    Kd = k_BSKH.shape[2]
    L, U, back, ahead = block_geometry(window, causal, -(-T // rate))
    left, right = band(window, causal)
    J = (back + ahead + 1) * L
    # Query head n = k * Gd + g; rows of one (B, K, block) matmul are its (g, a) pairs.
    q = _query_blocks(q_BTNH.reshape(B, T, Kd, Gd, H), rate, U, L, 0)  # B R U L K G H
    q_BKUXH = q.transpose(0, 4, 1, 2, 5, 3, 6).reshape(B, Kd, rate * U, Gd * L, H)
    k_BKUJH = _key_blocks(k_BSKH, rate, U, L, back, ahead, 0).transpose(0, 4, 1, 2, 3, 5).reshape(B, Kd, rate * U, J, H)
    v_BKUJH = _key_blocks(v_BSKH, rate, U, L, back, ahead, 0).transpose(0, 4, 1, 2, 3, 5).reshape(B, Kd, rate * U, J, H)
    logits = jnp.einsum("BKUXH,BKUJH->BKUXJ", q_BKUXH, k_BKUJH, preferred_element_type=jnp.float32) * scale

    # Band in sub-sequence steps: query a of block u vs key b of neighbour o: delta = a - b - (o - back) L.
    a_L = jnp.arange(L)[:, None]
    j_J = jnp.arange(J)[None, :]
    delta_LJ = a_L - j_J % L - (j_J // L - back) * L
    band_LJ = (delta_LJ <= left) & (-delta_LJ <= right)
    seg_q = _query_blocks(seg_q_BT, rate, U, L, 0)  # B R U L
    seg_k = _key_blocks(seg_k_BS, rate, U, L, back, ahead, -1)  # B R U J
    ok_k = _key_blocks(key_ok_BS, rate, U, L, back, ahead, False)  # padding blocks are never visible
    mask = band_LJ & ok_k[:, :, :, None, :] & (seg_q[..., None] == seg_k[:, :, :, None, :])  # B R U L J
    mask = mask.reshape(B, 1, rate * U, 1, L, J)

    if glob is not None:
        # Every query also sees the global tokens' ordinary keys, in the same softmax (Sec. 3.1).
        A = glob.idx_BA.shape[1]
        kA_BKAH = jnp.take_along_axis(k_BSKH, glob.idx_BA[:, :, None, None], axis=1).transpose(0, 2, 1, 3)
        vA_BKAH = jnp.take_along_axis(v_BSKH, glob.idx_BA[:, :, None, None], axis=1).transpose(0, 2, 1, 3)
        logits_A = jnp.einsum("BKUXH,BKAH->BKUXA", q_BKUXH, kA_BKAH, preferred_element_type=jnp.float32) * scale
        t_q = _query_blocks(t_BT, rate, U, L, -1)  # B R U L: padded queries see nothing
        mask_A = (glob.ok_BA[:, None, None, None, :] & (seg_q[..., None] == glob.seg_BA[:, None, None, None, :])
                  & (t_q[..., None] >= 0))
        if causal:
            mask_A &= glob.idx_BA[:, None, None, None, :] <= t_q[..., None]
        mask = jnp.concatenate([jnp.broadcast_to(mask, (B, 1, rate * U, 1, L, J)),
                                mask_A.reshape(B, 1, rate * U, 1, L, A)], axis=-1)
        logits = jnp.concatenate([logits, logits_A], axis=-1)

    w = _masked_softmax(logits.reshape(B, Kd, rate * U, Gd, L, -1), mask).reshape(B, Kd, rate * U, Gd * L, -1)
    w = w.astype(v_BSKH.dtype)
    out = jnp.einsum("BKUXJ,BKUJH->BKUXH", w[..., :J], v_BKUJH)
    if glob is not None:
        out = out + jnp.einsum("BKUXA,BKAH->BKUXH", w[..., J:], vA_BKAH)
    out = out.reshape(B, Kd, rate, U, Gd, L, H).transpose(0, 3, 5, 2, 1, 4, 6)  # B U L R K G H
    return out.reshape(B, rate * U * L, Nd, H)[:, :T]


def _window_attention_kernel(q_BTNH, k_BSKH, v_BSKH, *, rate, window, causal, seg_q_BT, seg_k_BS, key_ok_BS,
                             t_BT, glob, scale):
    """`_window_attention` through the flash kernel: the band in sub-sequence steps, invisible keys as segment 0."""
    left, right = band(window, causal)
    global_keys = None
    if glob is not None:
        take = lambda x_BSKH: jnp.take_along_axis(x_BSKH, glob.idx_BA[:, :, None, None], axis=1)  # noqa: E731
        mask_BTA = glob.ok_BA[:, None, :] & (seg_q_BT[:, :, None] == glob.seg_BA[:, None, :])
        if causal:
            mask_BTA &= glob.idx_BA[:, None, :] <= t_BT[:, :, None]
        global_keys = (take(k_BSKH), take(v_BSKH), mask_BTA)
    return window_attention_pallas(
        q_BTNH, k_BSKH, v_BSKH, rate=rate, left=left, right=right, seg_q_BT=seg_q_BT,
        seg_k_BS=jnp.where(key_ok_BS, seg_k_BS, 0), scale=scale, global_keys=global_keys)


def longformer_attention(
    q_BTNH, k_BSKH, v_BSKH, *, window: int, causal: bool, dilation: int | Sequence[int] = 1,
    q_segment_ids_BT=None, kv_segment_ids_BS=None, kv_lengths_B=None,
    global_inputs: GlobalInputs | None = None, scale: float | None = None, impl: str = "xla",
) -> jax.Array:
    """Self-attention (S == T) with a dilated sliding window and optional global tokens.

    Masks follow attention/masks.py: segment id 0 is padding, keys at index
    >= kv_lengths_B are padding, and packed segments never see each other.
    A query with no visible key outputs zeros. Logits and softmax in float32.
    `impl` ("xla" | "pallas" | "auto", `model.attention_impl`) runs the window
    part blocked in XLA below or through the flash kernel (attention/flash.py).
    """
    B, T, N, H = q_BTNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    assert S == T, f"longformer_attention is self-attention: {T} queries vs {S} keys"
    G = N // K
    scale = H**-0.5 if scale is None else scale
    dilation_N = (dilation,) * N if isinstance(dilation, int) else tuple(int(r) for r in dilation)
    assert len(dilation_N) == N, (dilation_N, N)

    ones = jnp.ones((B, T), jnp.int32)
    seg_q = ones if q_segment_ids_BT is None else q_segment_ids_BT.astype(jnp.int32)
    seg_k = ones if kv_segment_ids_BS is None else kv_segment_ids_BS.astype(jnp.int32)
    t_BT = default_positions(B, T)
    key_ok_BS = seg_k != 0
    if kv_lengths_B is not None:
        key_ok_BS &= t_BT < kv_lengths_B[:, None]

    glob = None
    if global_inputs is not None:
        idx_BA = global_inputs.idx_BA
        take = lambda x_BT: jnp.take_along_axis(x_BT, idx_BA, axis=1)  # noqa: E731
        glob = _Glob(idx_BA, take(global_inputs.is_global_BT & key_ok_BS), take(seg_k))
        # A global key joins every query through the global part, so the window drops it.
        key_ok_local_BS = key_ok_BS & ~global_inputs.is_global_BT
    else:
        key_ok_local_BS = key_ok_BS

    # On TPU the kernel is splash attention, which cannot merge with the global keys' softmax (attention/flash.py).
    use_kernel = resolve_impl(impl) == "pallas" and not (global_inputs is not None and flash.backend() == "tpu")
    outs, order = [], []
    for rate, heads, kv, Gd in _head_groups(dilation_N, G):
        whole = len(heads) == N
        q_sel = q_BTNH if whole else jnp.take(q_BTNH, jnp.array(heads), axis=2)
        k_sel = k_BSKH if whole else jnp.take(k_BSKH, jnp.array(kv), axis=2)
        v_sel = v_BSKH if whole else jnp.take(v_BSKH, jnp.array(kv), axis=2)
        if use_kernel:
            outs.append(_window_attention_kernel(
                q_sel, k_sel, v_sel, rate=rate, window=window, causal=causal, seg_q_BT=seg_q, seg_k_BS=seg_k,
                key_ok_BS=key_ok_local_BS, t_BT=t_BT, glob=glob, scale=scale))
            order += heads
            continue
        outs.append(_window_attention(
            q_sel, k_sel, v_sel, rate=rate, Gd=Gd, window=window, causal=causal,
            seg_q_BT=seg_q, seg_k_BS=seg_k, key_ok_BS=key_ok_local_BS, t_BT=t_BT, glob=glob, scale=scale))
        order += heads
    out_BTNH = outs[0] if len(outs) == 1 else jnp.take(jnp.concatenate(outs, axis=2), jnp.argsort(jnp.array(order)), axis=2)

    if global_inputs is not None:
        out_BTNH = _global_rows(out_BTNH, global_inputs, seg_q, seg_k, key_ok_BS, t_BT, causal, scale)
    return out_BTNH.astype(q_BTNH.dtype)


def _global_rows(out_BTNH, gi: GlobalInputs, seg_q, seg_k, key_ok_BS, t_BT, causal, scale):
    """Global queries (Q_g) attend to all keys through K_g/V_g; their rows replace the window output."""
    B, T, N, H = out_BTNH.shape
    A, K = gi.idx_BA.shape[1], gi.kg_BSKH.shape[2]
    G = N // K
    qg_BKXH = gi.qg_BANH.reshape(B, A, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * A, H)
    logits = jnp.einsum("BKXH,BKSH->BKXS", qg_BKXH, gi.kg_BSKH.transpose(0, 2, 1, 3),
                        preferred_element_type=jnp.float32) * scale
    seg_A = jnp.take_along_axis(seg_q, gi.idx_BA, axis=1)
    mask_BAS = key_ok_BS[:, None, :] & (seg_A[:, :, None] == seg_k[:, None, :])
    if causal:
        mask_BAS &= t_BT[:, None, :] <= gi.idx_BA[:, :, None]
    w = _masked_softmax(logits.reshape(B, K, G, A, T), mask_BAS[:, None, None]).astype(gi.vg_BSKH.dtype)
    og = jnp.einsum("BKXS,BKSH->BKXH", w.reshape(B, K, G * A, T), gi.vg_BSKH.transpose(0, 2, 1, 3))
    og_BANH = og.reshape(B, K, G, A, H).transpose(0, 3, 1, 2, 4).reshape(B, A, N, H)
    is_glob_BA = jnp.take_along_axis(gi.is_global_BT, gi.idx_BA, axis=1)
    b_BA = jnp.arange(B)[:, None]
    old_BANH = out_BTNH[b_BA, gi.idx_BA]
    # Unused slots point at distinct non-global tokens and write back their own rows.
    return out_BTNH.at[b_BA, gi.idx_BA].set(jnp.where(is_glob_BA[:, :, None, None], og_BANH.astype(out_BTNH.dtype), old_BANH))


@flax.struct.dataclass
class GlobalKVCache(KVCache):
    """KV cache that also keeps K_g/V_g, which later global queries attend over (Sec. 3.1)."""
    kg_BSKH: jax.Array
    vg_BSKH: jax.Array

    @classmethod
    def init(cls, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype=jnp.float32) -> "GlobalKVCache":
        base = KVCache.init(batch, max_len, kv_heads, head_dim, dtype)
        return cls(k_BSKH=base.k_BSKH, v_BSKH=base.v_BSKH, lengths_B=base.lengths_B,
                   kg_BSKH=base.k_BSKH, vg_BSKH=base.v_BSKH)

    def write_global(self, k_BTKH, v_BTKH, kg_BTKH, vg_BTKH) -> "GlobalKVCache":
        """Appends T positions of both key/value sets (lengths advance by T)."""
        g = KVCache(self.kg_BSKH, self.vg_BSKH, self.lengths_B).write(kg_BTKH, vg_BTKH)
        s = KVCache(self.k_BSKH, self.v_BSKH, self.lengths_B).write(k_BTKH, v_BTKH)
        return GlobalKVCache(k_BSKH=s.k_BSKH, v_BSKH=s.v_BSKH, lengths_B=s.lengths_B,
                             kg_BSKH=g.k_BSKH, vg_BSKH=g.v_BSKH)


def _cached_softmax_attention(q_BTNH, k_BSKH, v_BSKH, mask_BNTS, scale):
    """Masked softmax attention with grouped-query heads folded into rows (no K/V repeat)."""
    B, T, N, H = q_BTNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    G = N // K
    q_BKXH = q_BTNH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, H)
    logits = jnp.einsum("BKXH,BKSH->BKXS", q_BKXH, k_BSKH.transpose(0, 2, 1, 3),
                        preferred_element_type=jnp.float32) * scale
    mask = jnp.broadcast_to(mask_BNTS, (B, N, T, S)).reshape(B, K, G, T, S)
    w = _masked_softmax(logits.reshape(B, K, G, T, S), mask).astype(v_BSKH.dtype)
    out = jnp.einsum("BKXS,BKSH->BKXH", w.reshape(B, K, G * T, S), v_BSKH.transpose(0, 2, 1, 3))
    return out.reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


def longformer_cached_attention(q_BTNH, k_BSKH, v_BSKH, *, q_positions_BT, kv_lengths_B, window: int,
                                causal: bool, dilation_N: Sequence[int], num_global: int = 0,
                                qg_BTNH=None, kg_BSKH=None, vg_BSKH=None, scale: float | None = None):
    """Decoding over a KV cache: the same keys as the full causal forward, from the cache.

    Keys are cache slots 0..S-1 at positions equal to their index; the first
    `num_global` positions are global. A query sees the past keys of its
    dilated window plus the global keys; a global query (position <
    num_global) uses Q_g over K_g/V_g of all past keys. The mask is dense over
    the cache, [B, N, T, S]: a decode step has T = 1 (or a short prefill), so
    this costs what dense decoding costs and needs no blocking.
    """
    H = q_BTNH.shape[-1]
    S = k_BSKH.shape[1]
    scale = H**-0.5 if scale is None else scale
    left = band(window, causal)[0]
    rate_N = jnp.array(dilation_N, jnp.int32)[None, :, None, None]
    s_S = jnp.arange(S)
    delta_B1TS = (q_positions_BT[:, :, None] - s_S[None, None, :])[:, None]
    past_B1TS = (delta_B1TS >= 0) & (s_S < kv_lengths_B[:, None, None, None])
    window_BNTS = (delta_B1TS <= left * rate_N) & (delta_B1TS % rate_N == 0)
    out_BTNH = _cached_softmax_attention(q_BTNH, k_BSKH, v_BSKH, past_B1TS & (window_BNTS | (s_S < num_global)), scale)
    if num_global:
        out_g_BTNH = _cached_softmax_attention(qg_BTNH, kg_BSKH, vg_BSKH, past_B1TS, scale)
        is_global_BT11 = (q_positions_BT < num_global)[:, :, None, None]
        out_BTNH = jnp.where(is_global_BT11, out_g_BTNH, out_BTNH)
    return out_BTNH.astype(q_BTNH.dtype)


def dilation_per_head(cfg) -> tuple[int, ...]:
    """`model.longformer.dilation` as one rate per query head.

    A single rate (an int, or a 1-tuple such as the default `(1,)`) applies to
    all heads; "1,2" is accepted too.
    """
    d = cfg.longformer.dilation
    if isinstance(d, str):
        d = tuple(int(x) for x in d.split(",") if x.strip())
    if isinstance(d, int):
        d = (d,)
    d = tuple(d)
    return d * cfg.n_heads if len(d) == 1 else d


@register_attention("longformer")
class LongformerAttention(MultiHeadAttention):
    """Dilated sliding-window attention with global tokens (Beltagy et al. 2020, Sec. 3.1)."""

    supports_pallas = True  # model.attention_impl="pallas" runs the flash kernel (attention/flash.py)

    @staticmethod
    def default_config() -> dict:
        """`model.longformer.*`, gathered into the model config by models/config.py."""
        return dict(
            window=256,     # sliding window W: W/2 each side, or W back when causal
            num_global=0,   # the first G positions are global tokens
            dilation=(1,),  # dilation rates: one for all heads, or one per head, e.g. (1, 1, 2, 2)
        )

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.validate_config(cfg)
        super().__init__(cfg, rngs=rngs)
        self.window = int(cfg.longformer.window)
        self.num_global = int(cfg.longformer.num_global)
        self.dilation_N = dilation_per_head(cfg)
        if self.num_global:
            # Separate projections for global attention (Sec. 3.1, "Linear Projections for Global Attention").
            D, N, K, H = cfg.d_model, self.num_heads, self.num_kv_heads, self.head_dim
            init = jax.nn.initializers.normal(cfg.init_std)
            self.wq_g_DNH = nnx.Param(init(rngs.params(), (D, N, H)), logical_axes=(ax.EMBED, ax.HEADS, ax.HEAD_DIM))
            self.wk_g_DKH = nnx.Param(init(rngs.params(), (D, K, H)), logical_axes=(ax.EMBED, ax.KV_HEADS, ax.HEAD_DIM))
            self.wv_g_DKH = nnx.Param(init(rngs.params(), (D, K, H)), logical_axes=(ax.EMBED, ax.KV_HEADS, ax.HEAD_DIM))

    @staticmethod
    def param_count(cfg) -> int:
        base = MultiHeadAttention.param_count(cfg)
        if not cfg.longformer.num_global:
            return base
        return base + cfg.d_model * head_dim_of(cfg) * (cfg.n_heads + 2 * cfg.n_kv_heads)

    @staticmethod
    def core_flops_per_token(cfg, seq_len: int) -> float:
        """Forward FLOPs per query token as computed: J blocked keys (masked ones included) + A global keys
        per head, plus the A global query rows over all T keys amortized over the T tokens."""
        H, N = head_dim_of(cfg), cfg.n_heads
        A, W = min(int(cfg.longformer.num_global), seq_len), int(cfg.longformer.window)
        total = 0.0
        for rate in dilation_per_head(cfg):
            L, U, back, ahead = block_geometry(W, bool(cfg.causal), -(-seq_len // rate))
            total += 4.0 * H * ((back + ahead + 1) * L + A)
        return total + 4.0 * N * H * A

    @staticmethod
    def validate_config(cfg) -> None:
        lf = variant_settings(cfg, "longformer", LongformerAttention.default_config())
        w = lf.get("window")
        if not isinstance(w, int) or isinstance(w, bool) or w <= 0 or (not cfg.causal and w % 2):
            need = "a positive integer" if cfg.causal else "a positive even integer (W/2 keys each side)"
            raise ValueError(f"model.longformer.window={w!r} must be {need}")
        g = lf.get("num_global")
        if not isinstance(g, int) or isinstance(g, bool) or g < 0:
            raise ValueError(f"model.longformer.num_global={g!r} must be a non-negative integer")
        d = lf.get("dilation")
        try:
            rates = dilation_per_head(cfg)
        except (TypeError, ValueError):
            raise ValueError(f"model.longformer.dilation={d!r} must be an int or one int per head") from None
        if len(rates) != cfg.n_heads:
            raise ValueError(f"model.longformer.dilation={d!r} must have one rate per head "
                             f"(model.n_heads={cfg.n_heads})")
        if any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in rates):
            raise ValueError(f"model.longformer.dilation={d!r} must hold integers >= 1")

    @staticmethod
    def seq_len_note(cfg, seq_len: int) -> str | None:
        """A window that covers every sequence is allowed (the result is exact) but costs more than dense."""
        lf = variant_settings(cfg, "longformer", LongformerAttention.default_config())
        reach = sum(band(lf["window"], cfg.causal)) * max(dilation_per_head(cfg))
        if reach >= seq_len:
            return (f"model.longformer.window={lf['window']} reaches every position of data.seq_len={seq_len}: "
                    f"this is dense attention at Longformer's cost (choose a window below the sequence length)")
        return None

    def core(self, q_BTNH, k_BSKH, v_BSKH, *, ctx=None, causal, q_segment_ids_BT=None, kv_segment_ids_BS=None,
             kv_lengths_B=None, global_inputs=None, **unused_positions):
        # Positions are not needed: the band is measured in indices (module docstring).
        return longformer_attention(
            q_BTNH, k_BSKH, v_BSKH, window=self.window, causal=causal, dilation=self.dilation_N,
            q_segment_ids_BT=q_segment_ids_BT, kv_segment_ids_BS=kv_segment_ids_BS,
            kv_lengths_B=kv_lengths_B, global_inputs=global_inputs, impl=self.impl)

    def __call__(self, x_BTD, *, positions_BT=None, segment_ids_BT=None, kv_lengths_B=None,
                 cache: KVCache | None = None, ctx=None):
        # MultiHeadAttention.__call__ with the global projections and a global-aware cache.
        B, T, _ = x_BTD.shape
        x_BTD = x_BTD.astype(self.dtype)
        positions_BT = self.positions(B, T, positions_BT, cache)
        q_BTNH, k_BTKH, v_BTKH = self.project_qkv(x_BTD, positions_BT)

        if cache is None:
            out_BTNH = self.core(q_BTNH, k_BTKH, v_BTKH, ctx=ctx, causal=self.causal,
                                 q_segment_ids_BT=segment_ids_BT, kv_segment_ids_BS=segment_ids_BT,
                                 kv_lengths_B=kv_lengths_B, global_inputs=self._global_inputs(x_BTD, positions_BT))
            new_cache = None
        else:
            if segment_ids_BT is not None:
                raise ValueError("segment ids are not supported together with a KV cache")
            glob = {}
            if self.num_global:
                if not isinstance(cache, GlobalKVCache):
                    raise TypeError("longformer attention with model.longformer.num_global > 0 needs the cache "
                                    "from init_cache()")
                qg_BTNH, kg_BTKH, vg_BTKH = self._global_projections(x_BTD, positions_BT)
                new_cache = cache.write_global(k_BTKH, v_BTKH, kg_BTKH, vg_BTKH)
                glob = dict(num_global=self.num_global, qg_BTNH=qg_BTNH, kg_BSKH=new_cache.kg_BSKH,
                            vg_BSKH=new_cache.vg_BSKH)
            else:
                new_cache = cache.write(k_BTKH, v_BTKH)
            out_BTNH = longformer_cached_attention(
                q_BTNH, new_cache.k_BSKH, new_cache.v_BSKH, q_positions_BT=positions_BT,
                kv_lengths_B=new_cache.lengths_B, window=self.window, causal=self.causal,
                dilation_N=self.dilation_N, **glob)
        return self.project_out(out_BTNH), new_cache

    def _global_inputs(self, x_BTD, positions_BT) -> GlobalInputs | None:
        """The first `num_global` tokens of each row are global (a batch-given mask plugs in here later)."""
        B, T, _ = x_BTD.shape
        A = min(self.num_global, T)
        if A == 0:
            return None
        is_global_BT = jnp.broadcast_to(jnp.arange(T) < A, (B, T))
        idx_BA = jnp.broadcast_to(jnp.arange(A, dtype=jnp.int32), (B, A))
        qg_BANH, kg_BTKH, vg_BTKH = self._global_projections(x_BTD, positions_BT, num_queries=A)
        return GlobalInputs(is_global_BT, idx_BA, qg_BANH, kg_BTKH, vg_BTKH)

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        if not self.num_global:
            return super().init_cache(batch, max_len)
        return GlobalKVCache.init(batch, max_len, self.num_kv_heads, self.head_dim, self.dtype)

    def _global_projections(self, x_BTD, positions_BT, num_queries: int | None = None):
        """Q_g x of the first `num_queries` tokens (all if None), K_g x and V_g x of all tokens, with RoPE."""
        n = x_BTD.shape[1] if num_queries is None else num_queries
        qg_BANH = linear(x_BTD[:, :n], self.wq_g_DNH[...].astype(self.dtype))  # BAD,DNH->BANH
        kg_BTKH = linear(x_BTD, self.wk_g_DKH[...].astype(self.dtype))  # BTD,DKH->BTKH
        vg_BTKH = linear(x_BTD, self.wv_g_DKH[...].astype(self.dtype))  # BTD,DKH->BTKH
        qg_BANH, kg_BTKH = self.normalize_qk(qg_BANH, kg_BTKH)  # QK-norm shares its scales with the local heads
        if self.use_rope:
            qg_BANH = apply_rope(qg_BANH, positions_BT[:, :n], self.rope_base)
            kg_BTKH = apply_rope(kg_BTKH, positions_BT, self.rope_base)
        return qg_BANH, kg_BTKH, vg_BTKH
