"""Byte-level language modelling on a text corpus (default: the pydoc topics)."""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data.text import ByteCorpus, lm_eval_batches, lm_train_batch
from models.lm import DecoderLM
from models.decode import generate
from models.sampling import SamplingParams
from sharding import axes as ax
from tasks.base import (Task, aux_eval_metrics, aux_eval_sums, collect_aux, cross_entropy, z_loss,
                        z_loss_weight)

LN2 = math.log(2.0)


class LMTask(Task):
    name = "lm"
    flops_head = "lm"

    def __init__(self, config, process_index: int = 0, process_count: int = 1):
        super().__init__(config, process_index, process_count)
        self.corpus = ByteCorpus.from_config(config.data)
        self._sampler = None

    def build_model(self, rngs):
        return DecoderLM(self.config.model, rngs=rngs)

    # --- loss ----------------------------------------------------------------
    def loss(self, model, batch, ctx):
        logits_BTV, _, aux = model(batch["inputs"], ctx=ctx)
        nll_sum, w_sum, correct = cross_entropy(logits_BTV, batch["targets"], batch.get("weights"))
        ce = nll_sum / w_sum
        extra, aux_metrics = collect_aux(aux)
        z, z_metrics = z_loss(logits_BTV, batch.get("weights"), w_sum, z_loss_weight(self.config))
        total = ce + extra if z is None else ce + extra + z
        metrics = {"loss": total, "ce_loss": ce, "bpb": ce / LN2, "accuracy": correct / w_sum, **aux_metrics,
                   **z_metrics}
        return total, metrics

    # --- data ----------------------------------------------------------------
    def batch_axes(self):
        return {"inputs": (ax.BATCH, ax.LENGTH), "targets": (ax.BATCH, ax.LENGTH), "weights": (ax.BATCH, ax.LENGTH)}

    def train_batch(self, step):
        d = self.config.data
        return lm_train_batch(
            self.corpus.train, seed=int(self.config.seed), step=step, batch=int(d.batch_size),
            seq_len=int(d.seq_len), process_index=self.process_index, process_count=self.process_count,
        )

    def eval_batches(self):
        d = self.config.data
        return lm_eval_batches(
            self.corpus.val, batch=int(d.get("eval_batch_size") or d.batch_size), seq_len=int(d.seq_len),
            max_batches=int(d.eval_batches), process_index=self.process_index, process_count=self.process_count,
        )

    # --- evaluation ----------------------------------------------------------
    def eval_sums(self, model, batch):
        logits_BTV, _, aux = model(batch["inputs"])
        nll_sum, w_sum, correct = cross_entropy(logits_BTV, batch["targets"], batch["weights"])
        return {"nll": nll_sum, "weight": w_sum, "correct": correct, **aux_eval_sums(aux)}

    def eval_metrics(self, sums):
        loss = sums["nll"] / max(sums["weight"], 1.0)
        return {"loss": loss, "bpb": loss / LN2, "accuracy": sums["correct"] / max(sums["weight"], 1.0),
                **aux_eval_metrics(sums)}

    def eval_extras(self, model, step) -> dict[str, Any]:
        """A short text sample from the configured prompt (temperature sampling, fixed seed)."""
        s = self.config.get("sample")
        if not s or not s.num_tokens:
            return {}
        prompt = np.frombuffer(s.prompt.encode("utf-8"), np.uint8).astype(np.int32)[None, :]
        if self._sampler is None:
            def run(graphdef, params, prompt_BP, rng):
                m = nnx.merge(graphdef, params)
                return generate(m, prompt_BP, jnp.full((1,), prompt_BP.shape[1], jnp.int32),
                                max_new_tokens=int(s.num_tokens), rng=rng,
                                sampling=SamplingParams(temperature=float(s.temperature), top_k=int(s.top_k)))
            self._sampler = jax.jit(run, static_argnums=0)
        graphdef, params = nnx.split(model)
        rng = jax.random.fold_in(jax.random.key(int(self.config.seed)), step)
        out = jax.device_get(self._sampler(graphdef, params, jnp.asarray(prompt), rng))
        toks = np.asarray(out["tokens_BN"])[0, : int(out["num_tokens_B"][0])]
        text = bytes(toks.astype(np.uint8)).decode("utf-8", errors="replace")
        return {"sample": s.prompt + text}
