"""Analytic parameter and FLOPs counts, per config.

Conventions (stated because studies compare models by these numbers):
- a matmul of [m, k] x [k, n] costs 2 m k n FLOPs;
- the training step costs 3x the forward pass (backward = 2x forward:
  gradients with respect to both activations and weights);
- attention scores are counted over the full context T for every token
  (QK^T and AV: 4 T N H per layer), since the XLA path computes the whole
  T x T matrix even when causal; variants that do less work (sliding window,
  linear attention) supply their own count through `core_flops_per_token`;
- elementwise work (norms, softmax, activations, optimizer) is left out:
  it is a few percent at these sizes, and the test against XLA's
  `cost_analysis()` bounds it.
"""
from __future__ import annotations

from attention.registry import get_attention
from models.ffn import get_ffn
from models.lm import ffn_for_layer


def param_count(cfg, head: str = "lm") -> int:
    """Exact number of parameters of DecoderLM (`head="lm"`) or EncoderClassifier."""
    D = cfg.d_model
    attn = get_attention(cfg.attention).param_count(cfg)
    n = cfg.vocab_size * D + D  # embedding + final norm
    for layer in range(cfg.n_layers):
        n += attn + 2 * D + get_ffn(ffn_for_layer(cfg, layer)).param_count(cfg)  # 2 D: the block's norms
    if head == "lm":
        n += 0 if cfg.tie_embeddings else D * cfg.vocab_size
    else:
        n += D * cfg.num_classes
    return n


def forward_flops_per_token(cfg, seq_len: int, head: str = "lm") -> float:
    attn_cls = get_attention(cfg.attention)
    per_layer_attn = 2 * attn_cls.param_count(cfg) + attn_cls.core_flops_per_token(cfg, seq_len)
    total = 0.0
    for layer in range(cfg.n_layers):
        total += per_layer_attn + get_ffn(ffn_for_layer(cfg, layer)).flops_per_token(cfg)
    if head == "lm":
        total += 2 * cfg.d_model * cfg.vocab_size
    return float(total)


def train_flops_per_token(cfg, seq_len: int, head: str = "lm") -> float:
    """Forward + backward FLOPs per token."""
    return 3.0 * forward_flops_per_token(cfg, seq_len, head)
