"""Baselines the train-step benchmark measures against, in the same process.

- `bare_jax_gpt_step`: a plain-JAX GPT of the same shape (no Flax, no
  sharding, no logging): what "the framework costs next to nothing" is
  measured against.
- `torch_gpt_step`: a nanoGPT-style PyTorch GPT of the same shape, when
  torch is installed (it is not a dependency of the package).

Both use the same shape conventions as our DecoderLM: pre-norm blocks,
GELU MLP of width d_ff, tied embeddings, byte vocabulary. They use learned
absolute positions (as nanoGPT) instead of RoPE: a few elementwise ops per
token, immaterial to the FLOPs count.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax


def init_bare_params(key, V, D, L, F, T):
    ks = iter(jax.random.split(key, 4 + 6 * L))
    n = lambda shape, std=0.02: std * jax.random.normal(next(ks), shape)  # noqa: E731
    params = {"wte": n((V, D)), "wpe": n((T, D)), "lnf": jnp.ones(D), "blocks": []}
    for _ in range(L):
        params["blocks"].append({
            "ln1": jnp.ones(D), "wqkv": n((D, 3 * D)), "wo": n((D, D), 0.02 / math.sqrt(2 * L)),
            "ln2": jnp.ones(D), "wi": n((D, F)), "wo2": n((F, D), 0.02 / math.sqrt(2 * L)),
        })
    return params


def _rms(x, w):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * w


def bare_forward(params, x_BT, n_heads):
    B, T = x_BT.shape
    h = params["wte"][x_BT] + params["wpe"][:T]
    D = h.shape[-1]
    H = D // n_heads
    causal = jnp.tril(jnp.ones((T, T), bool))
    for blk in params["blocks"]:
        qkv = _rms(h, blk["ln1"]) @ blk["wqkv"]
        q, k, v = jnp.split(qkv, 3, axis=-1)
        q, k, v = (t.reshape(B, T, n_heads, H) for t in (q, k, v))
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(H)
        att = jax.nn.softmax(jnp.where(causal, att, -1e30), axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(B, T, D)
        h = h + y @ blk["wo"]
        h = h + jax.nn.gelu(_rms(h, blk["ln2"]) @ blk["wi"]) @ blk["wo2"]
    return _rms(h, params["lnf"]) @ params["wte"].T


def make_bare_jax_step(V, D, L, F, T, n_heads, lr=1e-3):
    tx = optax.adamw(lr)

    def loss_fn(params, x, y):
        logits = bare_forward(params, x, n_heads)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = init_bare_params(jax.random.key(0), V, D, L, F, T)
    return jax.jit(step, donate_argnums=(0, 1)), params, tx.init(params)


def make_torch_step(V, D, L, F, T, n_heads, lr=1e-3, threads=None):
    """A nanoGPT-style train step in PyTorch; None when torch is not installed."""
    try:
        import torch
        import torch.nn as nn
        import torch.nn.functional as Fn
    except ImportError:
        return None
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.RMSNorm(D, eps=1e-6), nn.RMSNorm(D, eps=1e-6)
            self.qkv, self.proj = nn.Linear(D, 3 * D, bias=False), nn.Linear(D, D, bias=False)
            self.fc, self.fc2 = nn.Linear(D, F, bias=False), nn.Linear(F, D, bias=False)

        def forward(self, x):
            B_, T_, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
            q, k, v = (t.view(B_, T_, n_heads, D // n_heads).transpose(1, 2) for t in (q, k, v))
            y = Fn.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(B_, T_, D))
            return x + self.fc2(Fn.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, D), nn.Embedding(T, D)
            self.blocks = nn.ModuleList([Block() for _ in range(L)])
            self.lnf = nn.RMSNorm(D, eps=1e-6)

        def forward(self, idx):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for b in self.blocks:
                x = b(x)
            return self.lnf(x) @ self.wte.weight.T

    model = GPT()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)

    def step(x_np, y_np):
        x, y = torch.from_numpy(x_np).long(), torch.from_numpy(y_np).long()
        logits = model(x)
        loss = Fn.cross_entropy(logits.view(-1, V), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def matmul_peak_flops(n: int = 2048, repeats: int = 7) -> float:
    """Median float32 FLOP/s of an n x n x n matmul under jit: the MFU denominator."""
    import time

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times))
