"""Pallas paged-attention decode kernel (tested in interpret mode against inference/paged_attention.py)."""
