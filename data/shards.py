"""Prepared shards on disk: a flat token file and a document index per split, read through memmap.

A prepared folder (written by `data/prepare.py`) holds

    manifest.json   corpus fingerprint, tokenizer (name, sha256, vocab), per-split counts, dtype
    train.bin       every training document's tokens, concatenated (uint16, or uint32 past 65,535 ids)
    train.idx       int64 document offsets into train.bin: document i is bin[idx[i]:idx[i + 1]]
    val.bin, val.idx  the held-out documents, the same way

as nanoGPT stores its corpora: nothing is read into RAM, a row of any step is a
slice of a memmap. Opening checks the manifest against the files (sizes, index
shape) and against the tokenizer the run uses, with a one-line DataError for
each way a folder can be missing, cut short or made with another tokenizer.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from nn.errors import DataError

FORMAT = "flat-tokens-v1"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


@dataclass
class Split:
    """One split: `tokens` (memmap, every document concatenated) and `offsets` (memmap, documents + 1)."""

    tokens: np.ndarray
    offsets: np.ndarray

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1


@dataclass
class Shards:
    directory: str
    manifest: dict
    train: Split
    val: Split

    def split(self, name: str) -> Split:
        return self.train if name == "train" else self.val


def read_manifest(directory: str) -> dict:
    where = f"data.shards={directory!r}"
    if not os.path.isdir(directory):
        raise DataError(f"{where} does not exist; prepare it with `python -m data.prepare --out {directory} ...`")
    path = os.path.join(directory, "manifest.json")
    if not os.path.isfile(path):
        raise DataError(f"{where} has no manifest.json (an unfinished or foreign folder; rerun data.prepare)")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT:
            raise DataError(f"{where}: manifest format {manifest.get('format')!r} is not {FORMAT!r}")
        manifest["splits"]["train"]["tokens"], manifest["tokenizer"]["sha256"]  # noqa: B018  (fields present)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{where}: manifest.json is corrupt ({type(e).__name__}: {e})") from None
    return manifest


def open_shards(directory: str, tokenizer=None) -> Shards:
    """Memory-maps a prepared folder; checks its files and (if given) that `tokenizer` made it."""
    where = f"data.shards={directory!r}"
    manifest = read_manifest(directory)
    if tokenizer is not None:
        want = manifest["tokenizer"]
        if want["sha256"] != tokenizer.sha256 or int(want["vocab_size"]) != tokenizer.vocab_size:
            raise DataError(f"{where} was prepared with tokenizer {want['name']!r} ({want['vocab_size']} ids, "
                            f"sha256 {want['sha256'][:12]}) but data.tokenizer={tokenizer.name!r} "
                            f"({tokenizer.vocab_size} ids, sha256 {tokenizer.sha256[:12]})")
    dtype = np.dtype(manifest["dtype"])
    splits = {}
    for name in SPLITS:
        info = manifest["splits"][name]
        bin_path, idx_path = os.path.join(directory, f"{name}.bin"), os.path.join(directory, f"{name}.idx")
        for p, size in ((bin_path, int(info["tokens"]) * dtype.itemsize), (idx_path, (int(info["documents"]) + 1) * 8)):
            if not os.path.isfile(p):
                raise DataError(f"{where}: {os.path.basename(p)} is missing")
            if os.path.getsize(p) != size:
                raise DataError(f"{where}: {os.path.basename(p)} has {os.path.getsize(p)} bytes, the manifest says "
                                f"{size} (a cut or foreign file; rerun data.prepare)")
        tokens = np.memmap(bin_path, dtype=dtype, mode="r") if info["tokens"] else np.zeros(0, dtype)
        offsets = np.memmap(idx_path, dtype=np.int64, mode="r")
        if offsets[0] != 0 or offsets[-1] != len(tokens):
            raise DataError(f"{where}: {name}.idx does not span {name}.bin (corrupt index; rerun data.prepare)")
        splits[name] = Split(tokens, offsets)
    return Shards(directory, manifest, splits["train"], splits["val"])
