"""Device mesh from the config: named axes, `-1` fills the remaining devices."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh
from nn.errors import MeshError

MESH_AXES = ("data", "fsdp", "tensor", "expert")



def mesh_shape_from_config(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolves `-1` and checks that the axes multiply to the device count."""
    shape = {str(k): int(v) for k, v in dict(shape).items()}
    unknown = [k for k in shape if k not in MESH_AXES]
    if unknown:
        raise MeshError(f"mesh.shape has unknown axis {unknown[0]!r}; known axes are {list(MESH_AXES)}")
    for k, v in shape.items():
        if v == 0 or v < -1:
            raise MeshError(f"mesh.shape.{k}={v} must be a positive size or -1")
    fill = [k for k, v in shape.items() if v == -1]
    if len(fill) > 1:
        raise MeshError(f"mesh.shape has more than one -1 axis: {fill}")
    fixed = math.prod(v for v in shape.values() if v != -1)
    if fill:
        if num_devices % fixed:
            raise MeshError(
                f"mesh.shape={shape} cannot fill {num_devices} devices: the fixed axes multiply to {fixed}"
            )
        shape[fill[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise MeshError(f"mesh.shape={shape} needs {fixed} devices, but {num_devices} are available")
    return shape


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with Auto axis types over `devices` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    resolved = mesh_shape_from_config(shape, len(devices))
    names = tuple(resolved)
    sizes = tuple(resolved[n] for n in names)
    # Auto axes: our code relies on sharding propagation between constraints.
    return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)
