"""Pieces of the generic train loop: optimizer, checkpoints, metric writers."""
