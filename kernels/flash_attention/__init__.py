"""Pallas flash attention (forward + backward) for GPU (Triton), runnable in interpret mode on CPU."""
from kernels.flash_attention.flash_attention import BlockSizes, flash_attention

__all__ = ["BlockSizes", "flash_attention"]
