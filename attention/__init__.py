"""Attention: the reference oracle, variants by registry, masks, RoPE, KV cache.

Importing this package registers every built-in variant.
"""
from attention import dense, longformer, performer  # noqa: F401  (register the variants)
from attention.kv_cache import KVCache
from attention.reference import reference_attention
from attention.registry import ATTENTION_REGISTRY, get_attention, register_attention

__all__ = ["KVCache", "reference_attention", "ATTENTION_REGISTRY", "get_attention", "register_attention"]
