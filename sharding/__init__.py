"""Device meshes, logical axis names and the rules that map one to the other.

Models name logical axes only (see `axes.py`); the mesh and the rules that
turn logical names into mesh axes live here and in configs.
"""
from sharding.axes import LEGEND, constrain, logical_rules, logical_to_spec
from sharding.mesh import make_mesh, mesh_shape_from_config
from sharding.rules import RULE_PRESETS, rules_from_config, tree_shardings

__all__ = [
    "LEGEND", "constrain", "logical_rules", "make_mesh",
    "mesh_shape_from_config", "RULE_PRESETS", "logical_to_spec",
    "rules_from_config", "tree_shardings",
]
