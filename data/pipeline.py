"""The packed-token input pipeline: prepared shards -> grain -> this process's rows of each step.

Everything is index-based, so batch contents are a pure function of (seed, step):

    global row g of step s is g = s * B + j (j < B); process p of P owns
    j = p * B/P .. (p + 1) * B/P - 1 and computes (and reads) only those rows
    source of g and its index i in that source: data/sampling.py (exact
    mixture proportions per block of rows)
    the row read: a per-epoch O(1)-memory permutation of the source's packed
    rows (data/sampling.py), packed from the memmapped shards (data/packing.py)

grain runs it: `MapDataset.range(num_steps).map(StepRows(...))` is the
dataset, `to_iter_dataset` reads ahead in threads, `mp_prefetch` in worker
processes.

The step is the iterator state: element s of the per-process dataset is the
batch of step s, computed from s alone, so the checkpoint's step (saved with
every checkpoint) resumes the stream exactly; a restarted run opens the
iterator at that step. Reading runs ahead of the train step in grain's
prefetch threads (`data.prefetch` batches), or in `data.workers` worker
processes. Tokens stay on disk (memmaps); a batch reads only its own rows.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from data import sampling
from data.packing import num_rows, pack_rows
from data.shards import open_shards
from nn.errors import DataError


class PackedRows:
    """Random-access source: row r of one split of a prepared folder (a dict of [seq_len] arrays).

    Pickles by folder name (for grain's worker processes), memmaps opened lazily.
    """

    def __init__(self, directory: str, split: str, seq_len: int):
        self.directory, self.split_name, self.seq_len = directory, split, seq_len
        self._split = None
        self._len = num_rows(int(self._open().tokens.shape[0]), seq_len)

    def _open(self):
        if self._split is None:
            self._split = open_shards(self.directory).split(self.split_name)
        return self._split

    def __getstate__(self):
        return {**self.__dict__, "_split": None}

    def __len__(self) -> int:
        return self._len

    def rows(self, rows_B) -> dict[str, np.ndarray]:
        s = self._open()
        return pack_rows(s.tokens, s.offsets, np.asarray(rows_B), self.seq_len)

    def __getitem__(self, r: int) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.rows([r]).items()}


@dataclasses.dataclass
class StepRows:
    """Step s -> this process's rows of the global batch of step s (data/sampling.py decides which rows)."""

    sources: list  # [PackedRows]
    weights: list
    batch: int
    seed: int
    token_bytes: np.ndarray
    process_index: int = 0
    process_count: int = 1

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        per = self.batch // self.process_count
        g_b = int(step) * self.batch + self.process_index * per + np.arange(per)  # this process's global rows
        src_b, idx_b = sampling.mixture_index(g_b, self.weights, self.seed)
        out = None
        for k, source in enumerate(self.sources):
            sel = src_b == k
            if not sel.any():
                continue
            rows = source.rows(sampling.source_rows(idx_b[sel], len(source), self.seed, k))
            if out is None:
                out = {name: np.empty((per, *v.shape[1:]), v.dtype) for name, v in rows.items()}
            for name, v in rows.items():
                out[name][sel] = v
        return _WithBytes(self.token_bytes)(out)


@dataclasses.dataclass
class _WithBytes:
    """Adds `bytes`: the UTF-8 bytes each weighted target stands for (bits per byte = nats / ln 2 / bytes)."""

    token_bytes: np.ndarray

    def __call__(self, batch: dict) -> dict:
        return {**batch, "bytes": self.token_bytes[batch["targets"]].astype(np.float32) * batch["weights"]}


def train_dataset(sources: list[tuple[str, float]], *, seq_len: int, batch: int, seed: int, num_steps: int,
                  token_bytes: np.ndarray, process_index: int = 0, process_count: int = 1):
    """grain MapDataset whose element s is this process's rows of step s (s < num_steps).

    The element is a whole per-process batch, gathered with vectorized index
    math: one grain element per row capped this pipeline at about 0.18 M
    tokens/s on the 2-core VM (Python overhead per element), a batch per element
    runs many times faster (benchmarks/data.py).
    """
    import grain

    rows = [PackedRows(d, "train", seq_len) for d, _ in sources]
    for (d, _), r in zip(sources, rows):
        if len(r) == 0:
            raise DataError(f"data: the training split of {d!r} is shorter than one row of data.seq_len={seq_len}")
    fn = StepRows(rows, [w for _, w in sources], batch, seed, token_bytes, process_index, process_count)
    return grain.MapDataset.range(num_steps + 1).map(fn)  # + 1: the loop compiles on batch(start) even when done


class StepIterator:
    """`batch(step)` from a grain iterator opened at `step`; reopened if asked for any other step."""

    def __init__(self, dataset, *, prefetch: int = 2, workers: int = 0):
        self.dataset, self.prefetch, self.workers = dataset, prefetch, workers
        self._it, self._next = None, None

    def _open(self, step: int):
        import grain

        self.close()
        ds = self.dataset.slice(slice(step, None)).to_iter_dataset(
            grain.ReadOptions(num_threads=max(1, self.prefetch), prefetch_buffer_size=max(1, self.prefetch)))
        if self.workers > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; train.py parses its own arguments
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers))
        self._it, self._next = iter(ds), step

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if self._it is None or step != self._next:
            self._open(step)
        self._next = step + 1
        return next(self._it)

    def close(self):
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None


def eval_batches(directory: str, *, seq_len: int, batch: int, max_batches: int, token_bytes: np.ndarray,
                 process_index: int = 0, process_count: int = 1):
    """The first rows of the validation split in order; a last partial batch padded with zero-weight rows."""
    src = PackedRows(directory, "val", seq_len)
    n = min(len(src), max_batches * batch)
    per = batch // process_count
    add_bytes = _WithBytes(token_bytes)
    for start in range(0, n, batch):
        rows_B = np.arange(start, start + batch)
        real_B = rows_B < n
        sl = slice(process_index * per, (process_index + 1) * per)
        b = src.rows(np.minimum(rows_B, n - 1)[sl])
        b["weights"] = b["weights"] * real_B[sl, None]
        yield add_bytes(b)
