"""Packed LM rows: concatenate the documents, cut every `seq_len` tokens, mark the documents.

Concatenate-and-split (not first-fit bin packing), because

- it never pads: every position of every row is a real token (packing
  efficiency 1.0), where first-fit leaves the tail of each row empty;
- row r is the slice `tokens[r L : r L + L + 1]` of the flat token file, so
  any row of any step is computed directly from its index (a binary search in
  the document index): batches stay a pure function of (seed, step) with no
  sequential packing pass to replay on resume or to split across hosts;
- most documents of the code corpus (median a few thousand tokens) are longer
  than a row anyway, so first-fit would keep few of them whole.

The price is that a document may start in one row and continue in another;
the continuation starts at position 0 without its beginning in view, as in
nanoGPT and GPT-2's training.

Within a row, documents are segments 1, 2, ... (`segment_ids`; attention
never crosses them), `positions` restart at 0 where each segment starts in
the row, and `weights` is 0 on a target that belongs to another document
than its input (the first token of a document is never predicted from the
previous one).
"""
from __future__ import annotations

import numpy as np


def num_rows(num_tokens: int, seq_len: int) -> int:
    """Rows of seq_len inputs (+ 1 target) that fit in a split of num_tokens."""
    return max(0, (num_tokens - 1) // seq_len)


def pack_rows(tokens: np.ndarray, offsets: np.ndarray, rows_B: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
    """Rows `rows_B` of the split (`tokens` and the document `offsets`, memmaps or arrays) as model inputs.

    Returns int32 `inputs`, `targets`, `segment_ids`, `positions` and float32
    `weights`, each [B, seq_len]. Reads only the B windows it returns.
    """
    L = seq_len
    starts_B = np.asarray(rows_B, np.int64) * L
    idx_BW = starts_B[:, None] + np.arange(L + 1)[None, :]  # W = L + 1: inputs and the last target
    window_BW = np.asarray(tokens[idx_BW.ravel()], np.int32).reshape(idx_BW.shape)
    # Document of every token: offsets[d] <= i < offsets[d + 1].
    doc_BW = np.searchsorted(offsets, idx_BW, side="right") - 1
    doc_BT = doc_BW[:, :-1]
    seg_BT = (doc_BT - doc_BT[:, :1] + 1).astype(np.int32)  # 1, 2, ... along the row
    seg_start_BT = np.maximum(np.asarray(offsets)[doc_BT] - starts_B[:, None], 0)  # where the segment starts in the row
    return {
        "inputs": window_BW[:, :-1],
        "targets": window_BW[:, 1:],
        "segment_ids": seg_BT,
        "positions": (np.arange(L)[None, :] - seg_start_BT).astype(np.int32),
        "weights": (doc_BW[:, 1:] == doc_BT).astype(np.float32),
    }
