"""What a task gives the generic train loop.

A task owns its model construction, loss and metrics, data and evaluation;
`train.py` owns everything else (mesh, sharding, optimizer, checkpoints,
logging). The LM task is the first; the classifier and CLIP plug in the
same way, registered in `tasks/__init__.py`.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from models import variants
from nn.layer_aux import LayerAux


class Task:
    """Base class; subclasses fill in every method that raises here."""

    name: str = ""
    flops_head: str = "lm"  # which output head `models.flops` should count

    def __init__(self, config, process_index: int = 0, process_count: int = 1):
        self.config = config
        self.process_index = process_index
        self.process_count = process_count

    # --- model -------------------------------------------------------------
    def build_model(self, rngs):
        raise NotImplementedError

    def loss(self, model, batch: Mapping[str, jax.Array], ctx) -> tuple[jax.Array, dict]:
        """Mean loss of a (micro)batch and a flat dict of scalar metrics.

        `ctx` is an `nn.context.ForwardContext` (train flag, step, RNG)
        to hand to the model.
        """
        raise NotImplementedError

    def accumulate(self, merge, params, micro_batches, make_ctx):
        """((loss, metrics), grads) of one step over `micro_batches` (each array [A, B/A, ...]), for a
        task whose loss is not a mean of per-example terms; None: the loop's default, the mean of the
        micro-batches' losses and gradients (exact for such a mean). `merge(params)` gives the model,
        `make_ctx(i)` micro-batch i's ForwardContext. CLIP overrides it (tasks/clip.py: GradCache)."""
        return None

    # --- data --------------------------------------------------------------
    def batch_axes(self) -> dict[str, tuple]:
        """Logical axis names of each batch array (the loop maps them to the mesh)."""
        raise NotImplementedError

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the global training batch for `step`."""
        raise NotImplementedError

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        raise NotImplementedError

    # --- evaluation --------------------------------------------------------
    def eval_sums(self, model, batch) -> dict[str, jax.Array]:
        """Sums over the batch (e.g. total loss, total weight); added across batches."""
        raise NotImplementedError

    def eval_metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def eval_extras(self, model, step: int) -> dict[str, Any]:
        """Anything beyond metrics logged at evaluation (e.g. a text sample)."""
        return {}

    # --- hooks with defaults (override where the default does not describe the task) ----
    def post_update(self, params):
        """Pure-dict params after each optimizer update -> params (e.g. CLIP clamps its logit scale)."""
        return params

    # --- accounting: the run summary, throughput and study budgets -------------------------------
    # Class methods of the config, so a study can size every run without building its task (which
    # loads or generates data). A task overrides the `*_of` methods; the loop reads the instance forms.
    @classmethod
    def tokens_per_step_of(cls, config) -> int:
        """What one optimizer step consumes, in the task's own unit; default: batch x seq_len tokens."""
        return int(config.data.batch_size) * int(config.data.seq_len)

    @classmethod
    def train_flops_per_token_of(cls, config) -> float:
        """Training FLOPs per unit of `tokens_per_step`; default: `models.flops` for `config.model`."""
        from models.flops import train_flops_per_token

        return train_flops_per_token(config.model, int(config.data.seq_len), cls.flops_head)

    @classmethod
    def param_count_of(cls, config) -> int:
        """Parameter count; default: `models.flops` for `config.model`."""
        from models.flops import param_count

        return param_count(config.model, cls.flops_head)

    @property
    def tokens_per_step(self) -> int:
        return self.tokens_per_step_of(self.config)

    def train_flops_per_token(self) -> float:
        return self.train_flops_per_token_of(self.config)

    def param_count(self) -> int:
        return self.param_count_of(self.config)

    # --- statistics carried across steps -------------------------------------
    def init_stats(self) -> dict:
        """Arrays the train state carries from step to step for metrics that need history.

        Default: whatever the model's layer variants declare (models/variants.py;
        e.g. a window of past per-layer statistics), empty when none does.
        """
        return variants.init_stats(self.config.model)

    def update_stats(self, stats: dict, metrics: Mapping[str, jax.Array]) -> tuple[dict, dict]:
        """(new stats, extra metrics), inside the jitted step, from this step's metrics."""
        return variants.update_stats(stats, metrics, self.config.model)


def _by_name(aux_per_layer: Sequence[LayerAux]) -> dict[str, tuple[str, list[tuple[int, jax.Array]]]]:
    """{name: (LayerAux field, [(layer, value), ...])}, names sorted; a name must keep one field."""
    out: dict[str, tuple[str, list]] = {}
    for i, aux in enumerate(aux_per_layer):
        for field in LayerAux._fields:
            for name, value in getattr(aux, field).items():
                kind, values = out.setdefault(name, (field, []))
                if kind != field:
                    raise ValueError(f"auxiliary output {name!r} is reported both in {kind} and in {field}")
                values.append((i, value))
    return dict(sorted(out.items()))


def _layer_mean(values: list[tuple[int, jax.Array]]) -> jax.Array:
    return sum(v for _, v in values) / len(values)


def collect_aux(aux_per_layer: Sequence[LayerAux]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Folds per-layer auxiliary outputs (one `nn.layer_aux.LayerAux` per layer) into (extra loss, metrics).

    The mean of each `losses` entry over the layers that report it is added
    to the objective. Every entry of every field is reported under its own
    name, averaged over those layers, and per layer (`name/layer_3`).
    """
    extra = jnp.zeros((), jnp.float32)
    metrics: dict[str, jax.Array] = {}
    for name, (field, values) in _by_name(aux_per_layer).items():
        mean = _layer_mean(values)
        metrics[name] = mean
        for i, v in values:
            metrics[f"{name}/layer_{i}"] = v
        if field == "losses":
            extra = extra + mean
    return extra, metrics


def aux_eval_sums(aux_per_layer: Sequence[LayerAux]) -> dict[str, jax.Array]:
    """Layer-averaged auxiliary losses and metrics of one eval batch, as sums for `aux_eval_metrics`.

    Per-layer entries and each layer's `breakdown` stay in the training
    metrics; evaluation reports the layer means of `losses` and `metrics`.
    """
    out = {f"aux:{name}": _layer_mean(values)
           for name, (field, values) in _by_name(aux_per_layer).items() if field != "breakdown"}
    if out:
        out["aux:batches"] = jnp.ones((), jnp.float32)
    return out


def aux_eval_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    n = max(sums.get("aux:batches", 0.0), 1.0)
    return {k[4:]: v / n for k, v in sums.items() if k.startswith("aux:") and k != "aux:batches"}


def z_loss_weight(config) -> float:
    """`optim.z_loss`: the weight of the output-logit z-loss (0: off)."""
    return float(config.optim.get("z_loss", 0.0) or 0.0)


def z_loss(logits_BTV: jax.Array, weights_BT: jax.Array | None, w_sum: jax.Array, weight: float):
    """PaLM's auxiliary z-loss (Chowdhery et al. 2022, sec. 5): `weight` x the weighted mean of log^2 Z.

    Z is the softmax normaliser of each position's output logits; the term
    pulls log Z towards 0, which keeps the logits from drifting (a source of
    loss spikes in long runs). Returns (the weighted term, metrics with it raw
    and weighted), or (None, {}) when `weight` is 0, so a run without it
    computes exactly what it did before the option existed.
    """
    if not weight:
        return None, {}
    logz_BT = jax.nn.logsumexp(logits_BTV.astype(jnp.float32), axis=-1)
    w_BT = jnp.ones_like(logz_BT) if weights_BT is None else weights_BT.astype(jnp.float32)
    raw = jnp.sum(jnp.square(logz_BT) * w_BT) / w_sum
    return weight * raw, {"z_loss": raw, "z_loss_weighted": weight * raw}


def cross_entropy(logits_BTV: jax.Array, targets_BT: jax.Array, weights_BT: jax.Array | None = None):
    """(sum of token losses, sum of weights, sum of correct predictions), in float32."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    nll_BT = logz_BT - target_logit_BT
    w_BT = jnp.ones_like(nll_BT) if weights_BT is None else weights_BT.astype(jnp.float32)
    correct_BT = (jnp.argmax(logits_BTV, axis=-1) == targets_BT).astype(jnp.float32)
    return jnp.sum(nll_BT * w_BT), jnp.sum(w_BT), jnp.sum(correct_BT * w_BT)
