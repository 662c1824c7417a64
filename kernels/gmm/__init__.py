"""Pallas grouped matmul (dropless MoE): `gmm(lhs_MD, rhs_EDF, group_sizes_E)` == `jax.lax.ragged_dot`."""
from kernels.gmm.gmm import GmmBlocks, gmm

__all__ = ["GmmBlocks", "gmm"]
