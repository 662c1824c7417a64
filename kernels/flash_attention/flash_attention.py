"""`flash_attention`: the public entry point, its custom VJP, block sizes and input normalization.

Same conventions as the project's attention oracle (q_BTNH, k_BSKH, v_BSKH,
N % K == 0; float32 softmax; a query with no visible key outputs zeros), so
the two are interchangeable. Masks arrive as structure:
- `causal` and `window=(left, right)` (None = unbounded side): a query at
  position p sees keys at p - left .. p + right, causal caps right at 0;
- `q_segment_ids_BT` / `kv_segment_ids_BS` (packed sequences; key id 0 is
  padding; one given means both), `kv_lengths_B` (keys at index >= length are
  padding, folded into key segment 0);
- `q_positions_BT` / `kv_positions_BS`: the band is measured in positions.
  Without them positions are indices, and the band also decides which
  blocks are visited at all (causal: half of them; window W: O(n W)).
  With them every block is visited (a decode step is cheap anyway).

Only the output and the base-2 log-sum-exp are saved for the backward
(FlashAttention-2, Dao 2023, Sec. 3.1); the [T, S] probabilities are
recomputed block by block.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from kernels.flash_attention.backward import flash_backward
from kernels.flash_attention.forward import LOG2E, flash_forward
from kernels.flash_attention.masking import MaskSpec


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (powers of two). Forward and dQ tile (query, key); dK/dV tiles (query, key) too."""
    block_q: int = 128
    block_k: int = 128
    block_q_dkv: int = 128
    block_k_dkv: int = 128
    block_q_dq: int = 128
    block_k_dq: int = 128
    num_warps: int = 4   # GPU (Triton) only
    num_stages: int = 2  # GPU (Triton) only

    @classmethod
    def for_backend(cls, backend: str) -> "BlockSizes":
        if backend == "gpu":
            # FlashAttention-2's Triton settings for H = 64..128 on A100/H100: wide query tiles in the
            # forward and dQ, wide key tiles in dK/dV (the loop runs over the other axis). Untuned here.
            return cls(block_q=128, block_k=64, block_q_dkv=32, block_k_dkv=128, block_q_dq=128,
                       block_k_dq=32, num_warps=8, num_stages=2)
        # Interpret mode (CPU): few, large tiles keep the interpreted grid short.
        return cls()

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("block_") and (value < 1 or value & (value - 1)):
                raise ValueError(f"flash_attention block size {f.name}={value} must be a power of two")


@dataclasses.dataclass(frozen=True)
class _Static:
    spec: MaskSpec
    scale: float
    fwd: tuple[int, int]
    dkv: tuple[int, int]
    dq: tuple[int, int]
    interpret: bool
    gpu: bool
    num_warps: int
    num_stages: int

    def compiler_params(self):
        if not self.gpu:
            return None
        from jax.experimental.pallas import triton as plgpu
        return plgpu.CompilerParams(num_warps=self.num_warps, num_stages=self.num_stages)


def _precision(dtype):
    # float32 inputs: full-precision dots (the GPU would otherwise use TF32); bf16 is exact in one pass.
    return lax.Precision.HIGHEST if dtype == jnp.float32 else None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, toks, st: _Static):
    return _flash_fwd(q, k, v, toks, st)[0]


def _flash_fwd(q, k, v, toks, st: _Static):
    o, lse2 = flash_forward(q, k, v, *toks, spec=st.spec, scale=st.scale, bq=st.fwd[0], bk=st.fwd[1],
                            interpret=st.interpret, compiler_params=st.compiler_params(),
                            precision=_precision(q.dtype))
    return (o, lse2), (q, k, v, toks, o, lse2)


def _flash_bwd(st: _Static, res, cotangents):
    q, k, v, toks, o, lse2 = res
    do, dlse2 = cotangents
    # delta_t = sum_h dO O (FlashAttention-2, Alg. 2 line 4), [B, N, Tp] float32. A cotangent on the
    # log-sum-exp adds p * dlse to dS (d lse / d s = p), i.e. subtracts dlse (natural units) from delta.
    delta = jnp.einsum("BTNH,BTNH->BNT", do.astype(jnp.float32), o.astype(jnp.float32))
    delta = delta - dlse2 * LOG2E
    dq, dk, dv = flash_backward(q, k, v, do, lse2, delta, *toks, spec=st.spec, scale=st.scale,
                                blocks_dkv=st.dkv, blocks_dq=st.dq, interpret=st.interpret,
                                compiler_params=st.compiler_params(), precision=_precision(q.dtype))
    return dq, dk, dv, jax.tree.map(lambda _: None, toks)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad_axis1(x, n, fill=0):
    if x is None or n == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, n)
    return jnp.pad(x, widths, constant_values=fill)


def _fit(block: int, length: int) -> int:
    """A tile no longer than the (power-of-two rounded, >= 16) sequence: short inputs stay one tile."""
    return min(block, max(16, 1 << max(0, (length - 1).bit_length())))


def flash_attention(
    q_BTNH: jax.Array,
    k_BSKH: jax.Array,
    v_BSKH: jax.Array,
    *,
    causal: bool = False,
    window: tuple[int | None, int | None] | None = None,
    q_segment_ids_BT: jax.Array | None = None,
    kv_segment_ids_BS: jax.Array | None = None,
    kv_lengths_B: jax.Array | None = None,
    q_positions_BT: jax.Array | None = None,
    kv_positions_BS: jax.Array | None = None,
    scale: float | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool | None = None,
    backend: str | None = None,
    return_lse: bool = False,
):
    """Softmax attention by Pallas flash kernels; differentiable in q, k, v. Returns [B, T, N, H] in q's dtype.

    `interpret=None` runs interpret mode on CPU and compiles (Triton) on GPU.
    With `return_lse=True` it returns (out_BTNH, lse_BNT float32): the natural
    log-sum-exp of each row's visible scaled logits, differentiable too, so a
    caller can merge this softmax with another one exactly. Rows that see no
    key get a huge negative lse (they carry no weight in a merge).
    Call it under `jax.jit` (interpret mode is very slow eagerly). `backend`
    ("cpu" | "gpu") overrides `jax.default_backend()`, e.g. to lower the Triton
    kernels for a GPU from a CPU-only machine.
    """
    B, T, N, H = q_BTNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    if N % K:
        raise ValueError(f"flash_attention: query heads {N} must be a multiple of KV heads {K}")
    if k_BSKH.shape != v_BSKH.shape or k_BSKH.shape[0] != B or k_BSKH.shape[3] != H:
        raise ValueError(f"flash_attention: k {k_BSKH.shape} / v {v_BSKH.shape} do not match q {q_BTNH.shape}")
    backend = jax.default_backend() if backend is None else backend
    interpret = backend == "cpu" if interpret is None else bool(interpret)
    bs = block_sizes or BlockSizes.for_backend("gpu" if backend == "gpu" and not interpret else "cpu")
    bs.validate()
    scale = H**-0.5 if scale is None else float(scale)

    left, right = (None, None) if window is None else window
    if causal:
        right = 0 if right is None else min(right, 0)

    # Key lengths become key segment 0; one segment array given means the same for both sides.
    q_seg, k_seg = q_segment_ids_BT, kv_segment_ids_BS
    if q_seg is None:
        q_seg = k_seg
    if k_seg is None:
        k_seg = q_seg
    if kv_lengths_B is not None:
        valid_BS = jnp.arange(S)[None, :] < kv_lengths_B[:, None]
        if k_seg is None:
            q_seg, k_seg = jnp.ones((B, T), jnp.int32), valid_BS.astype(jnp.int32)
        else:
            k_seg = jnp.where(valid_BS, k_seg, 0)
    has_seg = q_seg is not None
    has_pos = q_positions_BT is not None or kv_positions_BS is not None
    q_pos, k_pos = q_positions_BT, kv_positions_BS
    if has_pos:
        q_pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T)) if q_pos is None else q_pos
        k_pos = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S)) if k_pos is None else k_pos

    fwd = (_fit(bs.block_q, T), _fit(bs.block_k, S))
    dkv = (_fit(bs.block_q_dkv, T), _fit(bs.block_k_dkv, S))
    dq = (_fit(bs.block_q_dq, T), _fit(bs.block_k_dq, S))
    tq = max(fwd[0], dkv[0], dq[0])  # powers of two: the largest is a multiple of all
    tk = max(fwd[1], dkv[1], dq[1])
    Tp, Sp = -(-T // tq) * tq, -(-S // tk) * tk
    # Triton dots need power-of-two tiles of at least 16: zero head columns change neither logits nor outputs.
    Hp = H if interpret else max(16, 1 << (H - 1).bit_length())

    def pad(x, n):
        x = _pad_axis1(x, n)
        return x if Hp == H else jnp.pad(x, [(0, 0)] * 3 + [(0, Hp - H)])

    q, k, v = pad(q_BTNH, Tp - T), pad(k_BSKH, Sp - S), pad(v_BSKH, Sp - S)
    toks = []
    if has_seg:
        toks += [_pad_axis1(q_seg.astype(jnp.int32), Tp - T), _pad_axis1(k_seg.astype(jnp.int32), Sp - S)]
    if has_pos:
        toks += [_pad_axis1(q_pos.astype(jnp.int32), Tp - T), _pad_axis1(k_pos.astype(jnp.int32), Sp - S)]
    toks = tuple(toks) + (None,) * (4 - len(toks))
    if has_pos and not has_seg:
        toks = (None, None) + toks[:2]

    st = _Static(spec=MaskSpec(left=left, right=right, has_segments=has_seg, has_positions=has_pos, kv_len=S),
                 scale=scale, fwd=fwd, dkv=dkv, dq=dq, interpret=interpret, gpu=backend == "gpu" and not interpret,
                 num_warps=bs.num_warps, num_stages=bs.num_stages)
    out, lse2 = _flash(q, k, v, toks, st)
    out = out[:, :T, :, :H]
    if not return_lse:
        return out
    # Empty rows saved lse2 = +1e30 for the backward; report them as weightless instead.
    lse2 = lse2[:, :, :T]
    return out, jnp.where(lse2 >= 1e29, -1e30, lse2) / LOG2E


__all__ = ["BlockSizes", "flash_attention", "LOG2E"]
