"""Sequence classification with the bidirectional encoder: Long Range Arena ListOps.

Each example is CLS + a ListOps expression + padding (`data/listops.py`);
the encoder pools (CLS or mean over non-padding tokens) and a linear head
predicts the value, 0-9. Training batches are a pure function of
(config.seed, step), like the LM's; the data set itself is a pure function
of `data.generator_seed` and the sizes, so seeds of a study vary the model
and the batch order on one fixed data set, as with LRA's fixed files.

Evaluation covers the validation split (`eval/loss`, `eval/accuracy`: model
selection, the tuning stage) and, with `data.num_test` > 0, the held-out test
split (`eval/test/loss`, `eval/test/accuracy`: the final comparison), and on
the test split the accuracy per bucket of tree depth
(`eval/test/depth_3/accuracy`) and of expression length
(`eval/test/len_12-14/accuracy`, `data.length_buckets` ranges of about equal
counts), each with its example count (`.../examples`).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from data import listops
from nn.errors import DataError
from nn.errors import ConfigError
from models.encoder import POOLINGS, EncoderClassifier
from sharding import axes as ax
from tasks.base import (Task, aux_eval_metrics, aux_eval_sums, collect_aux, cross_entropy, z_loss,
                        z_loss_weight)


def validate_listops_config(config) -> None:
    """One-line errors naming the field, before any data is generated."""
    d, m = config.data, config.model
    listops.check_params(num_train=d.num_train, num_val=d.num_val, min_len=d.min_len, max_len=d.max_len,
                         max_depth=d.max_depth, max_args=d.max_args, num_test=d.get("num_test", 0))
    nb = d.get("length_buckets", 1)
    if not isinstance(nb, int) or isinstance(nb, bool) or nb < 1:
        raise ConfigError(f"data.length_buckets={nb!r} must be an integer >= 1")
    if d.seq_len < d.max_len + 1:
        raise DataError(
            f"data.seq_len={d.seq_len} is smaller than data.max_len + 1 = {d.max_len + 1} (the CLS token comes first)"
        )
    if m.causal:
        raise ConfigError("model.causal=True: ListOps uses the bidirectional encoder; set model.causal=False")
    if m.num_classes != listops.NUM_CLASSES:
        raise ConfigError(f"model.num_classes={m.num_classes} must be {listops.NUM_CLASSES} for ListOps")
    if m.vocab_size < listops.VOCAB_SIZE:
        raise ConfigError(
            f"model.vocab_size={m.vocab_size} is smaller than the ListOps vocabulary ({listops.VOCAB_SIZE})"
        )
    if m.pooling not in POOLINGS:
        raise ConfigError(f"model.pooling={m.pooling!r} must be one of {list(POOLINGS)}")


class ListOpsTask(Task):
    name = "listops"
    flops_head = "classifier"

    def __init__(self, config, process_index: int = 0, process_count: int = 1):
        super().__init__(config, process_index, process_count)
        validate_listops_config(config)
        self.data = listops.from_config(config.data)
        # Bucket names and each test row's bucket: fixed by the data, so every run on it reports the same keys.
        self.test_buckets = (listops.buckets(self.data.test, int(config.data.get("length_buckets", 1)))
                             if len(self.data.test) else {})

    def build_model(self, rngs):
        return EncoderClassifier(self.config.model, rngs=rngs)

    # --- loss ----------------------------------------------------------------
    def loss(self, model, batch, ctx):
        logits_BC, aux = model(batch["inputs"], segment_ids_BT=batch["segment_ids"], ctx=ctx)
        nll_sum, w_sum, correct = cross_entropy(logits_BC, batch["labels"], batch.get("weights"))
        ce = nll_sum / w_sum
        extra, aux_metrics = collect_aux(aux)
        z, z_metrics = z_loss(logits_BC, batch.get("weights"), w_sum, z_loss_weight(self.config))
        total = ce + extra if z is None else ce + extra + z
        metrics = {"loss": total, "ce_loss": ce, "accuracy": correct / w_sum, **aux_metrics, **z_metrics}
        return total, metrics

    # --- data ----------------------------------------------------------------
    def batch_axes(self):
        return {"inputs": (ax.BATCH, ax.LENGTH), "segment_ids": (ax.BATCH, ax.LENGTH),
                "labels": (ax.BATCH,), "weights": (ax.BATCH,), "test_weights": (ax.BATCH,),
                "depth_bucket": (ax.BATCH,), "length_bucket": (ax.BATCH,)}

    def _rows(self, split: listops.ListOpsSplit, idx_b: np.ndarray) -> dict[str, np.ndarray]:
        seq_len = int(self.config.data.seq_len)
        rows_bL = split.tokens[idx_b]  # uint8 [b, max_len + 1]
        inputs_bT = np.zeros((len(idx_b), seq_len), np.int32)
        inputs_bT[:, :rows_bL.shape[1]] = rows_bL
        return {"inputs": inputs_bT, "segment_ids": (inputs_bT != listops.PAD).astype(np.int32),
                "labels": split.labels[idx_b].astype(np.int32)}

    def train_batch(self, step):
        """This process's rows of the global batch: examples drawn with replacement by (seed, step)."""
        batch = int(self.config.data.batch_size)
        rng = np.random.default_rng([int(self.config.seed), step])
        idx_B = rng.integers(0, len(self.data.train), size=batch)
        per = batch // self.process_count
        return self._rows(self.data.train, idx_B[self.process_index * per:(self.process_index + 1) * per])

    def eval_batches(self):
        """The whole validation set once, in order, then the whole test set; each split's last batch is
        padded with zero-weight rows.

        Validation rows carry `weights` 1 and `test_weights` 0, test rows the reverse, so one pass
        gives both splits' sums. (`data.eval_batches` does not apply: accuracy is over the full sets.)
        """
        yield from self._split_batches(self.data.val, test=False)
        yield from self._split_batches(self.data.test, test=True)

    def _split_batches(self, split: listops.ListOpsSplit, test: bool):
        d = self.config.data
        batch = int(d.get("eval_batch_size") or d.batch_size)
        n = len(split)
        per = batch // self.process_count
        sl = slice(self.process_index * per, (self.process_index + 1) * per)
        zero_ids = np.zeros((n,), np.int32)
        depth_ids = self.test_buckets["depth"][1] if test else zero_ids
        length_ids = self.test_buckets["length"][1] if test else zero_ids
        for start in range(0, n, batch):
            idx_B = np.arange(start, start + batch)
            weights_B = (idx_B < n).astype(np.float32)
            idx_B = np.minimum(idx_B, n - 1)
            zeros_B = np.zeros_like(weights_B)
            yield {**self._rows(split, idx_B[sl]),
                   "weights": (zeros_B if test else weights_B)[sl], "test_weights": (weights_B if test else zeros_B)[sl],
                   "depth_bucket": depth_ids[idx_B][sl], "length_bucket": length_ids[idx_B][sl]}

    # --- evaluation ----------------------------------------------------------
    def eval_sums(self, model, batch):
        logits_BC, aux = model(batch["inputs"], segment_ids_BT=batch["segment_ids"])
        nll_sum, w_sum, correct = cross_entropy(logits_BC, batch["labels"], batch["weights"])
        sums = {"nll": nll_sum, "weight": w_sum, "correct": correct, **aux_eval_sums(aux)}
        if self.test_buckets:
            tw_B = batch["test_weights"]
            sums["test:nll"], sums["test:weight"], sums["test:correct"] = cross_entropy(
                logits_BC, batch["labels"], tw_B)
            hit_B = (jnp.argmax(logits_BC, axis=-1) == batch["labels"]).astype(jnp.float32) * tw_B
            for kind, key in (("depth", "depth_bucket"), ("length", "length_bucket")):
                for j, name in enumerate(self.test_buckets[kind][0]):
                    in_B = (batch[key] == j).astype(jnp.float32)
                    sums[f"test:{name}:weight"] = jnp.sum(tw_B * in_B)
                    sums[f"test:{name}:correct"] = jnp.sum(hit_B * in_B)
        return sums

    def eval_metrics(self, sums):
        w = max(sums["weight"], 1.0)
        out = {"loss": sums["nll"] / w, "accuracy": sums["correct"] / w,
               **aux_eval_metrics(sums)}
        if self.test_buckets:
            tw = max(sums["test:weight"], 1.0)
            out["test/loss"], out["test/accuracy"] = sums["test:nll"] / tw, sums["test:correct"] / tw
            for kind in ("depth", "length"):
                for name in self.test_buckets[kind][0]:
                    n = sums[f"test:{name}:weight"]
                    out[f"test/{name}/accuracy"] = sums[f"test:{name}:correct"] / max(n, 1.0)
                    out[f"test/{name}/examples"] = n
        return out
