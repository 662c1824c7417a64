"""Mixture-of-Experts: routing, dispatch (capacity and dropless), losses, the MoE FFN layer."""
