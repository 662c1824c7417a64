"""What a forward pass may know besides its inputs.

Layers whose behaviour depends on the training step or on training-time
randomness (Performer feature redraws, MoE router noise and its annealing)
read it from here; deterministic layers ignore it. Randomness comes from the
train loop's RNG folded with the step, never from the data.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class ForwardContext:
    train: bool = False
    step: jax.Array | None = None  # int32 scalar: the optimizer step being computed
    rng: jax.Array | None = None   # typed PRNG key for training-time noise
    layer: Any = None              # layer index when the layers run under a scan (a traced int32), else None

    def layer_rng(self, layer: int) -> jax.Array | None:
        return None if self.rng is None else jax.random.fold_in(self.rng, layer)


EVAL = ForwardContext()
