"""What a layer reports besides its output: `LayerAux`.

Every FFN (and any layer with auxiliary outputs) returns `(y_BTD, LayerAux)`;
models pass one `LayerAux` per layer up to the task, whose `collect_aux`
(tasks/base.py) folds them into the objective and the metrics. Which
entries enter the objective is said by the field they sit in, not by their
names:

- `losses`:    weighted loss terms (scalars); the task adds the mean over the
               layers that report each one to the objective, and logs it;
- `metrics`:   scalars logged only, in training and at evaluation;
- `breakdown`: scalars logged in training only: fine-grained parts of a
               metric (e.g. the MoE layer's load per expert), too many to
               average over eval batches.

A name lives in one field only, namespaced by the layer kind (`moe/z_loss`);
the task logs it as the layer mean under that name and per layer under
`name/layer_{i}`. A NamedTuple of dicts, so it is a pytree.
"""
from __future__ import annotations

from typing import NamedTuple

import jax


class LayerAux(NamedTuple):
    losses: dict[str, jax.Array]     # weighted terms that enter the objective
    metrics: dict[str, jax.Array]    # logged only (training and evaluation)
    breakdown: dict[str, jax.Array]  # logged in training only

    @classmethod
    def none(cls) -> "LayerAux":
        """No auxiliary outputs (a dense MLP)."""
        return cls({}, {}, {})
