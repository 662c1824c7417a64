"""Language modelling on a text corpus: byte windows of the pydoc topics, or packed tokenized documents.

Two data paths (docs/data.md):

- byte windows (the default: `data.tokenizer="bytes"` on pydoc or a `data.path`
  text): the corpus's bytes in RAM, random windows per step (data/text.py);
- packed (`data.packed=True`, implied by a subword tokenizer, the stdlib
  corpus, a mixture or prepared `data.shards`): prepared token shards read
  through grain, documents packed into rows with segment ids and positions
  (data/pipeline.py); attention stays inside each document and targets that
  cross a document boundary carry no loss.

Both report bits per byte (`bpb`: total nats / ln 2 / UTF-8 bytes of the
predicted text) next to the loss per token, so runs with different
tokenizers compare.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention.registry import get_attention
from data import pipeline, sources
from data.text import ByteCorpus, lm_eval_batches, lm_train_batch
from models.lm import DecoderLM
from models.decode import generate
from models.sampling import SamplingParams
from nn.errors import ConfigError
from sharding import axes as ax
from tasks.base import (Task, aux_eval_metrics, aux_eval_sums, collect_aux, cross_entropy, z_loss,
                        z_loss_weight)

LN2 = math.log(2.0)


class LMTask(Task):
    name = "lm"
    flops_head = "lm"

    def __init__(self, config, process_index: int = 0, process_count: int = 1):
        super().__init__(config, process_index, process_count)
        self._sampler = None
        self.packed = uses_packed(config.data)
        if not self.packed:
            self.corpus = ByteCorpus.from_config(config.data)
            self.tokenizer = None
            return
        d = config.data
        self.tokenizer, folders, manifests = sources.resolve(d)
        vocab = int(config.model.vocab_size)
        if vocab != self.tokenizer.vocab_size:
            raise ConfigError(f"model.vocab_size={vocab} but data.tokenizer={d.tokenizer!r} has "
                              f"{self.tokenizer.vocab_size} ids; set model.vocab_size={self.tokenizer.vocab_size}")
        attn = get_attention(config.model.attention)
        if not getattr(attn, "supports_segment_ids", True):
            raise ConfigError(f"model.attention={config.model.attention!r} cannot keep packed documents apart "
                              f"(no segment ids); use data.packed=False or another attention")
        self.token_bytes = self.tokenizer.token_bytes()
        self._train = pipeline.StepIterator(
            pipeline.train_dataset(folders, seq_len=int(d.seq_len), batch=int(d.batch_size), seed=int(config.seed),
                                   num_steps=int(config.train.num_steps), token_bytes=self.token_bytes,
                                   process_index=process_index, process_count=process_count),
            prefetch=int(d.get("prefetch", 2)), workers=int(d.get("workers", 0)))
        self.eval_folder = max(folders, key=lambda f: f[1])[0]  # evaluation: the largest source's held-out split
        # What the run trained on, in its config.json: corpus, Python version, content and tokenizer hashes.
        with config.unlocked():
            config.data.sources = [{**m["source"], "tokenizer_sha256": m["tokenizer"]["sha256"], "weight": w,
                                    "train_tokens": m["splits"]["train"]["tokens"]}
                                   for m, (_, w) in zip(manifests, folders)]

    def build_model(self, rngs):
        return DecoderLM(self.config.model, rngs=rngs)

    # --- loss ----------------------------------------------------------------
    def loss(self, model, batch, ctx):
        logits_BTV, _, aux = model(batch["inputs"], segment_ids_BT=batch.get("segment_ids"),
                                   positions_BT=batch.get("positions"), ctx=ctx)
        nll_sum, w_sum, correct = cross_entropy(logits_BTV, batch["targets"], batch.get("weights"))
        ce = nll_sum / w_sum
        extra, aux_metrics = collect_aux(aux)
        z, z_metrics = z_loss(logits_BTV, batch.get("weights"), w_sum, z_loss_weight(self.config))
        total = ce + extra if z is None else ce + extra + z
        bpb = nll_sum / LN2 / jnp.sum(batch["bytes"]) if "bytes" in batch else ce / LN2
        metrics = {"loss": total, "ce_loss": ce, "bpb": bpb, "accuracy": correct / w_sum, **aux_metrics,
                   **z_metrics}
        if "segment_ids" in batch:  # packed rows: non-pad fraction, and the fraction of targets that carry loss
            metrics["data/packing_efficiency"] = jnp.mean((batch["segment_ids"] != 0).astype(jnp.float32))
            metrics["data/loss_token_fraction"] = w_sum / batch["targets"].size
        return total, metrics

    # --- data ----------------------------------------------------------------
    def batch_axes(self):
        keys = ("inputs", "targets", "weights") + (("segment_ids", "positions", "bytes") if self.packed else ())
        return {k: (ax.BATCH, ax.LENGTH) for k in keys}

    def train_batch(self, step):
        d = self.config.data
        if self.packed:
            return self._train.batch(step)
        return lm_train_batch(
            self.corpus.train, seed=int(self.config.seed), step=step, batch=int(d.batch_size),
            seq_len=int(d.seq_len), process_index=self.process_index, process_count=self.process_count,
        )

    def eval_batches(self):
        d = self.config.data
        if self.packed:
            return pipeline.eval_batches(
                self.eval_folder, seq_len=int(d.seq_len), batch=int(d.get("eval_batch_size") or d.batch_size),
                max_batches=int(d.eval_batches), token_bytes=self.token_bytes,
                process_index=self.process_index, process_count=self.process_count)
        return lm_eval_batches(
            self.corpus.val, batch=int(d.get("eval_batch_size") or d.batch_size), seq_len=int(d.seq_len),
            max_batches=int(d.eval_batches), process_index=self.process_index, process_count=self.process_count,
        )

    # --- evaluation ----------------------------------------------------------
    def eval_sums(self, model, batch):
        logits_BTV, _, aux = model(batch["inputs"], segment_ids_BT=batch.get("segment_ids"),
                                   positions_BT=batch.get("positions"))
        nll_sum, w_sum, correct = cross_entropy(logits_BTV, batch["targets"], batch["weights"])
        n_bytes = jnp.sum(batch["bytes"]) if "bytes" in batch else w_sum  # byte windows: a token is a byte
        return {"nll": nll_sum, "weight": w_sum, "bytes": n_bytes, "correct": correct, **aux_eval_sums(aux)}

    def eval_metrics(self, sums):
        loss = sums["nll"] / max(sums["weight"], 1.0)
        return {"loss": loss, "bpb": sums["nll"] / LN2 / max(sums["bytes"], 1.0),
                "accuracy": sums["correct"] / max(sums["weight"], 1.0),
                **aux_eval_metrics(sums)}

    def eval_extras(self, model, step) -> dict[str, Any]:
        """A short text sample from the configured prompt (temperature sampling, fixed seed)."""
        s = self.config.get("sample")
        if not s or not s.num_tokens:
            return {}
        if self.tokenizer is not None:
            prompt = self.tokenizer.encode_batch([s.prompt])[0][None, :]
        else:
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
        if self.tokenizer is not None:
            text = self.tokenizer.decode(toks)
        else:
            text = bytes(toks.astype(np.uint8)).decode("utf-8", errors="replace")
        return {"sample": s.prompt + text}


def uses_packed(data_cfg) -> bool:
    """The packed path: asked for, or implied by a subword tokenizer, stdlib, a mixture or prepared shards."""
    return bool(data_cfg.get("packed") or data_cfg.get("tokenizer", "bytes") != "bytes" or data_cfg.get("mixture")
                or data_cfg.get("shards") or data_cfg.get("corpus", "pydoc") == "stdlib")
