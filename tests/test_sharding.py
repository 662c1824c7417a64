"""Sharded training on 8 fake CPU devices equals the 1-device run; leaves sit where the rules say."""
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from trainer import loop
from conftest import cfg_for, first_losses
from nn.errors import MeshError
from sharding.mesh import make_mesh, mesh_shape_from_config
from sharding.axes import logical_to_spec
from sharding.rules import rules_from_config


@pytest.fixture(scope="module")
def baseline(devices):
    return first_losses(cfg_for({}, "dp"), devices[:1])[2]


MESHES = [
    ({"data": 8}, "dp"),
    ({"data": 2, "fsdp": 4}, "fsdp"),
    ({"data": 2, "tensor": 4}, "tensor"),
]


@pytest.mark.slow
@pytest.mark.parametrize("shape,rules", MESHES, ids=["data8", "fsdp2x4", "tensor2x4"])
def test_sharded_losses_match_single_device(devices, baseline, shape, rules):
    s, state, losses = first_losses(cfg_for(shape, rules), devices)
    np.testing.assert_allclose(losses, baseline, rtol=1e-5)

    # Every parameter and optimizer moment carries the sharding its rule names.
    flat_specs = jax.tree_util.tree_leaves_with_path(s.param_shardings)
    for path, sharding in flat_specs:
        leaf = _get(state["params"], path)
        assert leaf.sharding.spec == sharding.spec, jax.tree_util.keystr(path)
    mu = optax.tree_utils.tree_get(state["opt_state"], "mu")
    for path, sharding in flat_specs:
        assert _get(mu, path).sharding.spec == sharding.spec, ("mu", jax.tree_util.keystr(path))
    if rules == "fsdp":
        assert state["params"]["blocks"][0]["ffn"]["wi_DF"].sharding.spec == P("fsdp", None)
        assert mu["blocks"][0]["ffn"]["wi_DF"].sharding.spec == P("fsdp", None)
    if rules == "tensor":
        assert state["params"]["blocks"][0]["attn"]["wq_DNH"].sharding.spec == P(None, "tensor", None)
        assert state["params"]["blocks"][0]["ffn"]["wo_FD"].sharding.spec == P("tensor", None)
    if rules == "dp":
        assert all(l.sharding.is_fully_replicated for l in jax.tree.leaves(state["params"]))


def _get(tree, path):
    for k in path:
        tree = tree[getattr(k, "key", getattr(k, "idx", None))]
    return tree


def test_rules_map_logical_names_and_drop_absent_axes(devices):
    mesh = make_mesh({"data": 2, "fsdp": 4}, devices)
    rules = rules_from_config("fsdp", mesh)
    assert logical_to_spec(("batch", "length", "embed"), rules) == P(("data", "fsdp"), None, None)
    assert logical_to_spec(("embed", "mlp"), rules) == P("fsdp", None)
    rules_t = rules_from_config("tensor", make_mesh({"data": 8}, devices))
    assert logical_to_spec(("embed", "heads", "head_dim"), rules_t) == P(None, None, None)


def test_mesh_shape_errors_name_the_shape():
    assert mesh_shape_from_config({"data": -1, "tensor": 2}, 8) == {"data": 4, "tensor": 2}
    with pytest.raises(MeshError, match="needs 6 devices, but 8 are available"):
        mesh_shape_from_config({"data": 3, "tensor": 2}, 8)
    with pytest.raises(MeshError, match="unknown axis 'model'"):
        mesh_shape_from_config({"model": 8}, 8)
    with pytest.raises(MeshError, match="cannot fill 8 devices"):
        mesh_shape_from_config({"data": -1, "tensor": 3}, 8)


def test_indivisible_parameter_is_reported_before_compiling(devices):
    c = cfg_for({"data": 2, "tensor": 4}, "tensor")
    c.model.update(n_heads=2, n_kv_heads=2)  # 2 heads over tensor=4
    with pytest.raises(MeshError, match=r"\['attn'\]\['w[qk]_D[NK]H'\].*dimension 2 does not divide over mesh axes tensor of size 4"):
        loop.setup(c, devices)
