"""Expert parallelism: experts sharded over a mesh axis, tokens sent to them.

When the active logical rules map the `expert` axis to a mesh axis of size
ep > 1, each device holds E / ep experts and its own slice of the batch
(the batch is sharded over the expert axis too, as in MaxText). The two
dispatch modes then communicate explicitly, inside `jax.shard_map`:

- capacity: every device builds its [E, g, C, D] expert buffers locally; an
  all-to-all over the expert axis sends chunk j of the E axis to device j
  and gathers the groups of all peers, [E / ep, ep * g, C, D]; the local
  experts run; a second all-to-all sends the outputs home (GShard).
- dropless: the token count per expert is data-dependent, so instead of a
  ragged all-to-all the devices all-gather the expert group's tokens, each
  runs its own experts on the routes that reach them (grouped matmul), and a
  reduce-scatter sums the contributions back to the tokens' owners (the
  "all-gather dispatcher" of Megatron-Core). Same result, no capacity.

Both are exact: the losses and gradients equal the single-device ones.
"""
from __future__ import annotations

import functools

import jax
from jax.sharding import PartitionSpec as P

from moe.dispatch import capacity_moe, combine_from_experts, dispatch_to_experts, dropless_moe, expert_ffn
from sharding import axes as ax
from sharding.axes import current_rules


def expert_mesh_axis() -> str | None:
    """The mesh axis experts are sharded over under the active rules, or None."""
    rules = current_rules()
    target = None if rules is None else rules.get(ax.EXPERT)
    if target is None:
        return None
    if not isinstance(target, str):
        target = target[0] if len(target) == 1 else None
    return target


def _batch_spec() -> P:
    target = current_rules().get(ax.BATCH)
    return P(target)


def _weight_specs(w: dict, axis: str) -> dict:
    return {k: P(axis) for k in w}


def capacity_moe_ep(x_GSD, dispatch_GSEC, combine_GSEC, w: dict, activation: str, axis: str):
    """`capacity_moe` with experts sharded over mesh axis `axis` (all-to-all dispatch)."""
    batch = _batch_spec()

    def local(x_gSD, dispatch_gSEC, combine_gSEC, w_local):
        x_EgCD = dispatch_to_experts(x_gSD, dispatch_gSEC)
        # Chunk j of the expert axis goes to device j; peers' groups are stacked on the group axis.
        x_ehCD = jax.lax.all_to_all(x_EgCD, axis, split_axis=0, concat_axis=1, tiled=True)
        y_ehCD = expert_ffn(x_ehCD, w_local, activation)
        y_EgCD = jax.lax.all_to_all(y_ehCD, axis, split_axis=1, concat_axis=0, tiled=True)
        return combine_from_experts(y_EgCD, combine_gSEC)

    return jax.shard_map(
        local, in_specs=(batch, batch, batch, _weight_specs(w, axis)), out_specs=batch, check_vma=False,
    )(x_GSD, dispatch_GSEC, combine_GSEC, w)


def dropless_moe_ep(x_XD, expert_XK, gate_XK, w: dict, activation: str, axis: str, gmm=jax.lax.ragged_dot):
    """`dropless_moe` with experts sharded over mesh axis `axis` (all-gather / reduce-scatter)."""
    batch = _batch_spec()

    def local(x_xD, expert_xK, gate_xK, w_local):
        e_local = w_local["in"].shape[0]
        offset = jax.lax.axis_index(axis) * e_local
        gather = functools.partial(jax.lax.all_gather, axis_name=axis, axis=0, tiled=True)
        y_hD = dropless_moe(gather(x_xD), gather(expert_xK), gather(gate_xK), w_local, activation,
                            expert_offset=offset, gmm=gmm)
        return jax.lax.psum_scatter(y_hD, axis, scatter_dimension=0, tiled=True)

    return jax.shard_map(
        local, in_specs=(batch, batch, batch, _weight_specs(w, axis)), out_specs=batch, check_vma=False,
    )(x_XD, expert_XK, gate_XK, w)


__all__ = ["expert_mesh_axis", "capacity_moe_ep", "dropless_moe_ep", "capacity_moe"]
