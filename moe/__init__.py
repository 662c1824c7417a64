"""Mixture-of-Experts: routing, dispatch (capacity and dropless), losses, the MoE FFN layer.

Importing the package registers `model.ffn = "moe"` (moe/layer.py) in the
FFN registry of `models.ffn`; `tasks/` imports it, so every run can name it.
"""
from moe.layer import MoEFFN

__all__ = ["MoEFFN"]
