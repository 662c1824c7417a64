"""Byte-level text corpora and deterministic LM batches.

The default corpus is the English text of CPython's `pydoc_data.topics`
(about 465 KB, shipped with every Python install), so the main job needs no
download. `data.path` points at any UTF-8 text file or folder of `.txt` files
instead.

Every batch is a pure function of (seed, step): resuming from a checkpoint
at step s replays exactly the batches an uninterrupted run would have seen,
and each process of a multi-host run can cut its own rows out of the same
global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nn.errors import DataError

VOCAB_SIZE = 256  # bytes
_SPLIT_CHUNK = 16384  # bytes per split chunk; every k-th chunk is held out


def pydoc_corpus_bytes() -> bytes:
    """The pydoc topics, in sorted key order, as UTF-8 bytes."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics)).encode("utf-8")


def load_text_bytes(path: str | os.PathLike) -> bytes:
    """A UTF-8 file, or every `*.txt` under a folder (sorted), as bytes."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data.path={str(path)!r} does not exist")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.txt") if f.is_file())
        if not files:
            raise DataError(f"data.path={str(path)!r} is a folder with no .txt files")
    else:
        files = [p]
    parts = []
    for f in files:
        raw = f.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"data.path: {str(f)!r} is not UTF-8 text (invalid byte at offset {e.start})") from None
        parts.append(raw)
    data = b"\n\n".join(parts)
    if not data.strip():
        raise DataError(f"data.path={str(path)!r} is empty")
    return data


@dataclass
class ByteCorpus:
    """A byte stream split into train and validation by interleaved chunks."""

    train: np.ndarray  # uint8
    val: np.ndarray  # uint8

    @classmethod
    def from_config(cls, data_cfg) -> "ByteCorpus":
        raw = load_text_bytes(data_cfg.path) if data_cfg.get("path") else pydoc_corpus_bytes()
        return cls.split(raw, float(data_cfg.val_fraction), min_len=int(data_cfg.seq_len) + 1)

    @classmethod
    def split(cls, raw: bytes, val_fraction: float, min_len: int) -> "ByteCorpus":
        if not 0.0 < val_fraction < 0.5:
            raise DataError(f"data.val_fraction={val_fraction} must be in (0, 0.5)")
        arr = np.frombuffer(raw, dtype=np.uint8)
        every = max(2, round(1.0 / val_fraction))
        chunk = min(_SPLIT_CHUNK, max(min_len, len(arr) // (4 * every)))
        idx = np.arange(len(arr)) // chunk
        is_val = (idx % every) == every - 1
        if not is_val.any():  # tiny corpus: hold out the tail
            is_val[-max(min_len, int(len(arr) * val_fraction)):] = True
        train, val = arr[~is_val], arr[is_val]
        for name, part in (("train", train), ("validation", val)):
            if len(part) < min_len:
                raise DataError(
                    f"data: the {name} split has {len(part)} bytes, fewer than data.seq_len + 1 = {min_len}"
                )
        return cls(train=np.ascontiguousarray(train), val=np.ascontiguousarray(val))


def lm_train_batch(
    stream: np.ndarray, *, seed: int, step: int, batch: int, seq_len: int,
    process_index: int = 0, process_count: int = 1,
) -> dict[str, np.ndarray]:
    """This process's rows of the global batch for `step`: random windows of seq_len + 1 bytes."""
    rng = np.random.default_rng([seed, step])
    offsets_B = rng.integers(0, len(stream) - seq_len - 1, size=batch, endpoint=True)
    per = batch // process_count
    offsets_b = offsets_B[process_index * per:(process_index + 1) * per]
    window_bT = stream[offsets_b[:, None] + np.arange(seq_len + 1)[None, :]].astype(np.int32)
    return {"inputs": window_bT[:, :-1], "targets": window_bT[:, 1:]}


def lm_eval_batches(stream: np.ndarray, *, batch: int, seq_len: int, max_batches: int,
                    process_index: int = 0, process_count: int = 1):
    """Non-overlapping windows from the start of the validation split, in fixed order.

    The last partial batch is padded with zero-weight rows so every batch
    has the same shape (one compilation).
    """
    n_windows = (len(stream) - 1) // seq_len
    n_windows = min(n_windows, max_batches * batch)
    per = batch // process_count
    for start in range(0, n_windows, batch):
        idx_B = np.arange(start, start + batch)
        weights_B = (idx_B < n_windows).astype(np.float32)
        idx_B = np.minimum(idx_B, n_windows - 1)
        sl = slice(process_index * per, (process_index + 1) * per)
        offsets_b = idx_B[sl] * seq_len
        window_bT = stream[offsets_b[:, None] + np.arange(seq_len + 1)[None, :]].astype(np.int32)
        yield {
            "inputs": window_bT[:, :-1],
            "targets": window_bT[:, 1:],
            "weights": np.broadcast_to(weights_B[sl, None], (per, seq_len)).astype(np.float32),
        }
