"""Performer attention (FAVOR+): softmax attention through positive random features.

Choromanski et al. 2021, "Rethinking Attention with Performers" (ICLR),
replace exp(q.k / sqrt(H)) by phi(q).phi(k) with M random features, so that
attention costs O(n M H) instead of O(n^2 H):

    out = D^-1 phi(Q) (phi(K)^T V),   D = diag(phi(Q) (phi(K)^T 1))      (sec. 2.2, eq. 3)

Pieces, each a pure function (the layer at the bottom only owns the seed):
- `random_features_MH`: orthogonal Gaussian projections (sec. 2.4);
- `query_features` / `key_features`: phi+ of Lemma 1, or the ReLU kernel;
- `performer_attention`: dispatch to the global (bidirectional), chunked
  (causal and/or packed segments) or naive masked path;
- `performer_attention_naive`: phi(Q) phi(K)^T as a masked [T, S] matrix,
  the oracle for the fast paths and the path for KV-cache decoding.

Local shape letters, in addition to the legend in sharding/axes.py:
U number of chunks, L chunk length, X rows of one KV head's matmul (its G
query heads times the query positions), A value width plus the ones column
(H + 1) that carries the normalizer D through the same matmuls.

Masks follow attention/masks.py. What is supported, and how:
- key lengths and segment id 0 (padding): the padded keys' features are set
  to zero, so they add nothing to phi(K)^T V nor to D;
- causal: chunked prefix sums (exact for the approximate kernel);
- packed segments (ids 1, 2, ...), causal or not: per-segment sums carried
  across chunks with a reset at segment boundaries. Segments must be
  contiguous runs, which is what sequence packing produces; an id that
  reappears after a different id is treated as a new segment (the oracle
  would join them). This cannot be checked under jit;
- causal with explicit positions and T == S: causality by index (positions
  are assumed to increase along each segment, as packing makes them);
- causal with T != S (decoding against a KV cache): the naive path with the
  full position mask; O(S M H) per decoded token, since the shared KVCache
  stores K and V rather than the running state phi(K)^T V.
"""
from __future__ import annotations

import weakref

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import MultiHeadAttention, head_dim_of, variant_settings
from nn.context import ForwardContext
from attention.masks import dense_mask_BTS
from attention.registry import register_attention

KERNELS = ("softmax", "relu")
DEFAULT_CHUNK_SIZE = 64
# The random features never depend on the data or on the parameter init:
# they are a function of (this constant, layer id, redraw index) only.
FEATURE_SEED = 0x5EED_FA70
# ReLU features can be all zero for a query; the floor keeps D > 0 (the
# "kernel_epsilon" of the authors' code).
RELU_EPS = 1e-3


# --------------------------------------------------------------------------
# Random features
# --------------------------------------------------------------------------

def feature_key(layer_id: int, redraw_index) -> jax.Array:
    """PRNG key of one draw: a pure function of (fixed seed, layer, redraw index)."""
    key = jax.random.fold_in(jax.random.key(FEATURE_SEED), layer_id)
    return jax.random.fold_in(key, jnp.asarray(redraw_index, jnp.int32))


def random_features_MH(key: jax.Array, num_features: int, head_dim: int) -> jax.Array:
    """Orthogonal random features w_1..w_M (Choromanski et al. 2021, sec. 2.4).

    Rows come in blocks of H mutually orthogonal directions (QR of a Gaussian
    matrix), and each row is rescaled by the norm of an independent H-dim
    Gaussian vector (chi_H distributed), so every row is marginally N(0, I_H)
    as Lemma 1 requires while rows within a block stay exactly orthogonal,
    which lowers the estimator's variance (Theorem 2).
    """
    M, H = num_features, head_dim
    n_blocks = -(-M // H)
    g_key, n_key = jax.random.split(key)
    g_LHH = jax.random.normal(g_key, (n_blocks, H, H), jnp.float32)
    q_LHH, r_LHH = jnp.linalg.qr(g_LHH)
    # Sign fix: QR's Q is Haar distributed only once its columns are made
    # unique by a positive diagonal of R (Mezzadri 2007).
    q_LHH = q_LHH * jnp.sign(jnp.diagonal(r_LHH, axis1=-2, axis2=-1))[:, None, :]
    dirs_MH = jnp.swapaxes(q_LHH, -1, -2).reshape(n_blocks * H, H)[:M]  # orthonormal rows, block by block
    norms_M = jnp.linalg.norm(jax.random.normal(n_key, (M, H), jnp.float32), axis=-1)
    return jax.lax.stop_gradient(dirs_MH * norms_M[:, None])


# --------------------------------------------------------------------------
# Feature maps phi
# --------------------------------------------------------------------------

def _project(x_H, w_MH):
    """(x H^-1/4) w^T and |x H^-1/4|^2 / 2: splitting 1/sqrt(H) between q and k (sec. 2.2)."""
    H = x_H.shape[-1]
    x_H = x_H.astype(jnp.float32) * H**-0.25
    proj_M = jnp.matmul(x_H, w_MH.T)  # [..., H] x [H, M]: one plain GEMM
    half_sq_1 = 0.5 * jnp.sum(x_H * x_H, axis=-1, keepdims=True)
    return proj_M, half_sq_1


def query_features(q_H: jax.Array, w_MH: jax.Array, *, kernel: str = "softmax", eps: float | None = None):
    """phi(q) over the last axis, float32 [..., M].

    softmax (Lemma 1, phi+): M^-1/2 exp(w.q - |q|^2/2 - c_q). The stabilizer
    c_q is the row's own max over features: a factor exp(-c_q) common to one
    query's numerator and denominator cancels in D^-1 phi(Q)(...), so any
    per-row constant is exact; the max keeps the largest feature at M^-1/2
    (no overflow, no all-underflow row).
    """
    M = w_MH.shape[0]
    proj_M, half_sq_1 = _project(q_H, w_MH)
    if kernel == "relu":
        return M**-0.5 * jax.nn.relu(proj_M) + (RELU_EPS if eps is None else eps)
    logits_M = proj_M - half_sq_1
    c_1 = jax.lax.stop_gradient(jnp.max(logits_M, axis=-1, keepdims=True))
    return M**-0.5 * jnp.exp(logits_M - c_1) + (0.0 if eps is None else eps)


def key_features(k_BK_H: jax.Array, w_MH: jax.Array, valid_BK_1: jax.Array | None = None, *,
                 kernel: str = "softmax", eps: float | None = None):
    """phi(k) for keys laid out [B, K, ..., H] -> float32 [B, K, ..., M]; invalid keys get zero features.

    softmax: M^-1/2 exp(w.k - |k|^2/2 - c_k) where c_k is one constant per
    (batch row, KV head): the max over all valid keys and features. A key
    constant multiplies every term of a query's numerator and denominator
    alike, so it cancels exactly; a per-key max would not (it would reweight
    keys). Invalid keys are left out of the max so padding cannot push the
    valid keys into underflow. In causal mode the max also covers later keys;
    it enters only through this cancelling constant (and stop_gradient), so
    no information flows backwards in time.

    eps defaults to 0 for softmax (unlike the "+ eps" of the authors' code):
    an additive eps does not cancel, which would make the output depend on
    c_k, i.e. on which keys are in view (cached decoding would then differ
    from the full forward); positive features need no floor, and D is
    guarded where it is divided instead.
    """
    M = w_MH.shape[0]
    proj_M, half_sq_1 = _project(k_BK_H, w_MH)
    if kernel == "relu":
        feats = M**-0.5 * jax.nn.relu(proj_M) + (RELU_EPS if eps is None else eps)
    else:
        logits_M = proj_M - half_sq_1
        masked = logits_M if valid_BK_1 is None else jnp.where(valid_BK_1, logits_M, -jnp.inf)
        c = jnp.max(masked, axis=tuple(range(2, masked.ndim)), keepdims=True)
        c = jax.lax.stop_gradient(jnp.where(jnp.isfinite(c), c, 0.0))  # all keys padded: any constant
        feats = M**-0.5 * jnp.exp(logits_M - c) + (0.0 if eps is None else eps)
    return feats if valid_BK_1 is None else jnp.where(valid_BK_1, feats, 0.0)


def _normalize(o_XA, dtype):
    """Split [numerator | D] and divide; a query that sees no key (D = 0) outputs zeros, like the oracle.

    Such a query's numerator is 0 too (its keys' features are masked), so
    dividing by 1 there gives 0 with finite gradients; clamping D to a tiny
    value instead would send 0 / tiny^2 = NaN into the backward pass.
    """
    num_XH, den_X1 = o_XA[..., :-1], o_XA[..., -1:]
    return (num_XH / jnp.where(den_X1 > 0, den_X1, 1.0)).astype(dtype)


def _with_ones(v_BSKH):
    """[V | 1]: phi(K)^T [V | 1] carries phi(K)^T V and the normalizer's phi(K)^T 1 in one matmul."""
    v = v_BSKH.astype(jnp.float32)
    return jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), jnp.float32)], axis=-1)


def _valid_keys_BS(B, S, kv_lengths_B, kv_segment_ids_BS):
    valid_BS = None
    if kv_lengths_B is not None:
        valid_BS = jnp.arange(S)[None, :] < kv_lengths_B[:, None]
    if kv_segment_ids_BS is not None:
        seg_valid_BS = kv_segment_ids_BS != 0
        valid_BS = seg_valid_BS if valid_BS is None else valid_BS & seg_valid_BS
    return valid_BS


def _rows_BKXH(q_BTNH, K):
    """Query head n = k * G + g: each KV head's rows are its (g, t) pairs, so GQA never repeats K or V."""
    B, T, N, H = q_BTNH.shape
    return q_BTNH.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4).reshape(B, K, (N // K) * T, H)


def _unrows_BTNH(o_BKXH, T):
    B, K, X, H = o_BKXH.shape
    G = X // T
    return o_BKXH.reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4).reshape(B, T, K * G, H)


# --------------------------------------------------------------------------
# Attention paths
# --------------------------------------------------------------------------

def performer_attention_naive(
    q_BTNH, k_BSKH, v_BSKH, w_MH, *, kernel="softmax", eps=None, causal=False, q_positions_BT=None,
    kv_positions_BS=None, q_segment_ids_BT=None, kv_segment_ids_BS=None, kv_lengths_B=None,
):
    """phi(Q) phi(K)^T as a [T, S] matrix, masked, then normalized: O(T S M), the obvious version."""
    B, T, N, H = q_BTNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    valid_BS = _valid_keys_BS(B, S, kv_lengths_B, kv_segment_ids_BS)
    valid_BKS1 = None if valid_BS is None else valid_BS[:, None, :, None]
    qf_BKXM = query_features(_rows_BKXH(q_BTNH, K), w_MH, kernel=kernel, eps=eps)
    kf_BKSM = key_features(k_BSKH.transpose(0, 2, 1, 3), w_MH, valid_BKS1, kernel=kernel, eps=eps)
    a_BKXS = jnp.einsum("BKXM,BKSM->BKXS", qf_BKXM, kf_BKSM)
    mask_BTS = dense_mask_BTS(
        batch=B, q_len=T, kv_len=S, causal=causal, q_positions_BT=q_positions_BT, kv_positions_BS=kv_positions_BS,
        q_segment_ids_BT=q_segment_ids_BT, kv_segment_ids_BS=kv_segment_ids_BS, kv_lengths_B=kv_lengths_B,
    )
    if mask_BTS is not None:
        a_BKGTS = a_BKXS.reshape(B, K, N // K, T, S)
        a_BKXS = jnp.where(mask_BTS[:, None, None], a_BKGTS, 0.0).reshape(B, K, -1, S)
    v_BKSA = _with_ones(v_BSKH).transpose(0, 2, 1, 3)
    o_BKXA = jnp.einsum("BKXS,BKSA->BKXA", a_BKXS, v_BKSA)
    return _unrows_BTNH(_normalize(o_BKXA, q_BTNH.dtype), T)


def _global(q_BTNH, k_BSKH, v_BSKH, w_MH, valid_BS, kernel, eps):
    """Bidirectional, one segment: phi(K)^T [V | 1] first ([M, H + 1] per KV head), never the T x S matrix."""
    T, K = q_BTNH.shape[1], k_BSKH.shape[2]
    valid_BKS1 = None if valid_BS is None else valid_BS[:, None, :, None]
    qf_BKXM = query_features(_rows_BKXH(q_BTNH, K), w_MH, kernel=kernel, eps=eps)
    kf_BKSM = key_features(k_BSKH.transpose(0, 2, 1, 3), w_MH, valid_BKS1, kernel=kernel, eps=eps)
    state_BKMA = jnp.einsum("BKSM,BKSA->BKMA", kf_BKSM, _with_ones(v_BSKH).transpose(0, 2, 1, 3))
    o_BKXA = jnp.einsum("BKXM,BKMA->BKXA", qf_BKXM, state_BKMA)
    return _unrows_BTNH(_normalize(o_BKXA, q_BTNH.dtype), T)


def _carry_in(states_BKUMA, ids_BU):
    """Exclusive segment-aware prefix over chunks: state entering chunk u from chunks < u.

    out_u = [ids_u == ids_{u-1}] out_{u-1} + states_u (ids = the segment at
    each chunk's last position, states = that segment's keys in the chunk),
    a gated linear recurrence run as an associative scan (O(log U) depth).
    Returns (out_{u-1}, ids_{u-1}); chunk 0 gets zeros and id -1 (matches no query).
    """
    keep_BU = jnp.concatenate([jnp.zeros_like(ids_BU[:, :1], bool), ids_BU[:, 1:] == ids_BU[:, :-1]], axis=1)
    keep = keep_BU[:, None, :, None, None].astype(jnp.float32)

    def combine(left, right):
        (a1, b1), (a2, b2) = left, right
        return a1 * a2, b1 * a2 + b2

    _, out_BKUMA = jax.lax.associative_scan(combine, (keep, states_BKUMA), axis=2)
    prev_BKUMA = jnp.concatenate([jnp.zeros_like(out_BKUMA[:, :, :1]), out_BKUMA[:, :, :-1]], axis=2)
    prev_ids_BU = jnp.concatenate([jnp.full_like(ids_BU[:, :1], -1), ids_BU[:, :-1]], axis=1)
    return prev_BKUMA, prev_ids_BU


def _chunked(q_BTNH, k_BSKH, v_BSKH, w_MH, valid_BS, seg_BT, causal, chunk_size, kernel, eps):
    """Chunks of L positions: exact (masked) products inside a chunk, running sums of phi(K)^T [V | 1] across.

    Memory O(T M H / L) for the per-chunk states plus O(T L) for the in-chunk
    scores, instead of O(T^2); every product is a batched GEMM over (B, K, U).
    Causal: queries read the states of earlier chunks (exclusive prefix).
    Packed segments: the prefix resets at segment boundaries; bidirectional
    segments add the same recurrence run from the right.
    """
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    G = N // K
    L = max(1, min(chunk_size, T))
    U = -(-T // L)
    pad = U * L - T
    if valid_BS is None and pad:
        valid_BS = jnp.ones((B, T), bool)
    if pad:  # padded tail: invalid keys (zero features), segment id 0, outputs sliced off
        q_BTNH, k_BSKH, v_BSKH = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q_BTNH, k_BSKH, v_BSKH))
        valid_BS = jnp.pad(valid_BS, ((0, 0), (0, pad)))
        seg_BT = None if seg_BT is None else jnp.pad(seg_BT, ((0, 0), (0, pad)))
    # q: B (U L) (K G) H -> B K U (G L) H; k, v: B (U L) K H -> B K U L H
    q_BKUXH = q_BTNH.reshape(B, U, L, K, G, H).transpose(0, 3, 1, 4, 2, 5).reshape(B, K, U, G * L, H)
    k_BKULH = k_BSKH.reshape(B, U, L, K, H).transpose(0, 3, 1, 2, 4)
    v_BKULA = _with_ones(v_BSKH).reshape(B, U, L, K, H + 1).transpose(0, 3, 1, 2, 4)
    valid_BKUL1 = None if valid_BS is None else valid_BS.reshape(B, 1, U, L, 1)
    qf_BKUXM = query_features(q_BKUXH, w_MH, kernel=kernel, eps=eps)
    kf_BKULM = key_features(k_BKULH, w_MH, valid_BKUL1, kernel=kernel, eps=eps)

    # Inside a chunk: the [G L, L] block of phi(Q) phi(K)^T, masked (causal, same segment).
    mask_BULL = None
    if causal:
        mask_BULL = jnp.tril(jnp.ones((L, L), bool))[None, None]
    seg_BUL = None if seg_BT is None else seg_BT.reshape(B, U, L)
    if seg_BUL is not None:
        same_BULL = seg_BUL[:, :, :, None] == seg_BUL[:, :, None, :]
        mask_BULL = same_BULL if mask_BULL is None else mask_BULL & same_BULL
    a_BKUXL = jnp.einsum("BKUXM,BKULM->BKUXL", qf_BKUXM, kf_BKULM)
    if mask_BULL is not None:
        a_BKUGLL = a_BKUXL.reshape(B, K, U, G, L, L)
        a_BKUXL = jnp.where(mask_BULL[:, None, :, None], a_BKUGLL, 0.0).reshape(B, K, U, G * L, L)
    o_BKUXA = jnp.einsum("BKUXL,BKULA->BKUXA", a_BKUXL, v_BKULA)

    # Across chunks.
    if seg_BUL is None:
        if causal:  # exclusive prefix sum of the chunk states
            states_BKUMA = jnp.einsum("BKULM,BKULA->BKUMA", kf_BKULM, v_BKULA)
            prev_BKUMA = jnp.cumsum(states_BKUMA, axis=2) - states_BKUMA
            o_BKUXA = o_BKUXA + jnp.einsum("BKUXM,BKUMA->BKUXA", qf_BKUXM, prev_BKUMA)
        return _unrows_chunks(_normalize(o_BKUXA, q_BTNH.dtype), T, G)

    def from_left(kf, v, seg):
        """Contribution of earlier chunks' keys in the query's segment (contiguous segments)."""
        last_BU = seg[:, :, -1]
        tail_BKULM = jnp.where((seg == last_BU[:, :, None])[:, None, :, :, None], kf, 0.0)
        states_BKUMA = jnp.einsum("BKULM,BKULA->BKUMA", tail_BKULM, v)
        prev_BKUMA, prev_ids_BU = _carry_in(states_BKUMA, last_BU)
        gate_BUL = seg == prev_ids_BU[:, :, None]  # the query's segment runs into the previous chunk
        gate_BKUX1 = jnp.broadcast_to(gate_BUL[:, None, :, None, :], (B, 1, U, G, L)).reshape(B, 1, U, G * L, 1)
        return gate_BKUX1, prev_BKUMA

    gate, prev = from_left(kf_BKULM, v_BKULA, seg_BUL)
    o_BKUXA = o_BKUXA + jnp.where(gate, jnp.einsum("BKUXM,BKUMA->BKUXA", qf_BKUXM, prev), 0.0)
    if not causal:  # the same recurrence from the right: reverse chunks and positions
        gate_r, next_r = from_left(kf_BKULM[:, :, ::-1, ::-1], v_BKULA[:, :, ::-1, ::-1], seg_BUL[:, ::-1, ::-1])
        gate_r = gate_r[:, :, ::-1].reshape(B, 1, U, G, L)[..., ::-1].reshape(B, 1, U, G * L, 1)
        o_BKUXA = o_BKUXA + jnp.where(gate_r, jnp.einsum("BKUXM,BKUMA->BKUXA", qf_BKUXM, next_r[:, :, ::-1]), 0.0)
    return _unrows_chunks(_normalize(o_BKUXA, q_BTNH.dtype), T, G)


def _unrows_chunks(o_BKUXH, T, G):
    """B K U (G L) H -> B (U L) (K G) H, padded tail dropped."""
    B, K, U, X, H = o_BKUXH.shape
    L = X // G
    out = o_BKUXH.reshape(B, K, U, G, L, H).transpose(0, 2, 4, 1, 3, 5).reshape(B, U * L, K * G, H)
    return out[:, :T]


def performer_attention(
    q_BTNH, k_BSKH, v_BSKH, w_MH, *, kernel="softmax", eps=None, causal=False, q_positions_BT=None,
    kv_positions_BS=None, q_segment_ids_BT=None, kv_segment_ids_BS=None, kv_lengths_B=None,
    chunk_size=DEFAULT_CHUNK_SIZE,
):
    """FAVOR+ attention with masks given as structure (see the module docstring for what is supported).

    Inputs in any float dtype; features, sums and products in float32;
    output in q's dtype. A query that sees no key outputs zeros.
    """
    B, T, N, H = q_BTNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    if N % K:
        raise ValueError(f"query heads {N} must be a multiple of KV heads {K}")
    if kernel not in KERNELS:
        raise ValueError(f"performer kernel {kernel!r} must be one of {KERNELS}")
    mask = dict(causal=causal, q_positions_BT=q_positions_BT, kv_positions_BS=kv_positions_BS,
                q_segment_ids_BT=q_segment_ids_BT, kv_segment_ids_BS=kv_segment_ids_BS, kv_lengths_B=kv_lengths_B)
    segments = q_segment_ids_BT is not None or kv_segment_ids_BS is not None
    if causal and T != S:  # decoding: queries at given positions against a KV cache
        return performer_attention_naive(q_BTNH, k_BSKH, v_BSKH, w_MH, kernel=kernel, eps=eps, **mask)
    valid_BS = _valid_keys_BS(B, S, kv_lengths_B, kv_segment_ids_BS)
    if not causal and not segments:
        return _global(q_BTNH, k_BSKH, v_BSKH, w_MH, valid_BS, kernel, eps)
    if T != S:
        raise NotImplementedError(f"performer: segment ids need self-attention (T == S), got T={T}, S={S}")
    seg_BT = None
    if segments:
        seg_BT = q_segment_ids_BT if q_segment_ids_BT is not None else kv_segment_ids_BS
    return _chunked(q_BTNH, k_BSKH, v_BSKH, w_MH, valid_BS, seg_BT, causal, chunk_size, kernel, eps)


# --------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------

_layers_built: "weakref.WeakKeyDictionary[nnx.Rngs, int]" = weakref.WeakKeyDictionary()


def _next_layer_id(rngs: nnx.Rngs) -> int:
    """Construction order of Performer layers sharing one `rngs`, i.e. the layer index in a model.

    A Python int, so it is static (part of the graphdef, not a Variable the
    optimizer would see) and identical whether the model is built concretely,
    under nnx.eval_shape or under jit, where drawing an int from `rngs`
    would need a concrete key.
    """
    n = _layers_built.get(rngs, 0)
    _layers_built[rngs] = n + 1
    return n


def _positive_int(p, field, allow_zero=False):
    value = p.get(field)
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"model.performer.{field}={value!r} must be a "
                         f"{'non-negative' if allow_zero else 'positive'} integer")
    return value


@register_attention("performer")
class PerformerAttention(MultiHeadAttention):
    """FAVOR+ attention (Choromanski et al. 2021) with periodically redrawn orthogonal random features.

    Config: `model.performer.*`, see `default_config`.
    """

    @staticmethod
    def default_config() -> dict:
        """`model.performer.*`, gathered into the model config by models/config.py."""
        return dict(
            num_features=256,               # random features M
            redraw_every=1000,              # redraw features every k training steps (0: never)
            kernel="softmax",               # softmax (FAVOR+ positive features) | relu
            chunk_size=DEFAULT_CHUNK_SIZE,  # causal prefix-sum chunk length
        )

    def __init__(self, cfg, *, rngs: nnx.Rngs, layer_id: int | None = None):
        super().__init__(cfg, rngs=rngs)
        self.validate_config(cfg)
        p = cfg.performer
        self.num_features = int(p.num_features)
        self.redraw_every = int(p.redraw_every)
        self.kernel = str(p.kernel)
        self.chunk_size = int(p.chunk_size)
        self.layer_id = _next_layer_id(rngs) if layer_id is None else int(layer_id)

    def redraw_index(self, ctx: ForwardContext | None):
        """step // redraw_every while training; 0 at evaluation.

        Evaluation and decoding (ctx None or train=False) use draw 0: they know
        no step, and a fixed draw makes them a function of the parameters
        alone, so one checkpoint gives one set of eval numbers and cached
        decoding matches the full forward. Training across redraws is what
        makes the model indifferent to which draw it sees (sec. 4.2).
        """
        if ctx is None or not ctx.train or ctx.step is None or self.redraw_every == 0:
            return jnp.zeros((), jnp.int32)
        return jnp.asarray(ctx.step, jnp.int32) // self.redraw_every

    def features_MH(self, ctx: ForwardContext | None = None) -> jax.Array:
        """The draw of this layer; under a layer scan (models/stack.py) the layer index is `ctx.layer`."""
        layer = self.layer_id if ctx is None or ctx.layer is None else ctx.layer
        key = feature_key(layer, self.redraw_index(ctx))
        return random_features_MH(key, self.num_features, self.head_dim)

    def core(self, q_BTNH, k_BSKH, v_BSKH, *, ctx=None, **mask):
        return performer_attention(q_BTNH, k_BSKH, v_BSKH, self.features_MH(ctx), kernel=self.kernel,
                                   chunk_size=self.chunk_size, **mask)

    @staticmethod
    def core_flops_per_token(cfg, seq_len: int) -> float:
        """Forward matmul FLOPs of the core per query token (2 m k n per matmul; exp etc. left out).

        With A = H + 1 (values plus the normalizer's ones column):
          features:  2 M H per query head and per KV head (phi(q), phi(k));
          state:     2 M A per KV head (phi(k)^T [v | 1], one key per token);
          readout:   2 M A per query head (phi(q) . state);
          causal:    + 2 L (M + A) per query head for the in-chunk block of
                     L = min(chunk, seq_len) keys (computed whole, then masked).
        Independent of seq_len except through L: that is the point.
        """
        N, K, H = cfg.n_heads, cfg.n_kv_heads, head_dim_of(cfg)
        M, A = int(cfg.performer.num_features), head_dim_of(cfg) + 1
        flops = 2 * M * H * (N + K) + 2 * M * A * (N + K)
        if cfg.causal:
            L = min(int(cfg.performer.chunk_size), seq_len)
            flops += 2 * L * (M + A) * N
        return float(flops)

    @staticmethod
    def validate_config(cfg) -> None:
        p = variant_settings(cfg, "performer", PerformerAttention.default_config())
        _positive_int(p, "num_features")
        _positive_int(p, "redraw_every", allow_zero=True)
        _positive_int(p, "chunk_size")
        if p.get("kernel") not in KERNELS:
            raise ValueError(f"model.performer.kernel={p.get('kernel')!r} must be one of {list(KERNELS)}")
