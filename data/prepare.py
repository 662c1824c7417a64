"""Tokenize a corpus once into prepared shards (data/shards.py): resumable, with a manifest.

    python -m data.prepare --corpus stdlib --tokenizer runs/tok/stdlib-8192 --out runs/data/stdlib-8192
    python -m data.prepare --corpus path --path my_texts/ --tokenizer bytes --out runs/data/mine

Documents are encoded in chunks with the tokenizer's batch encoder (the HF
library encodes a batch on every core); each finished chunk is saved under
`<out>/parts/` at once, so an interrupted run resumes at the first missing
chunk. The chunks are then concatenated into `train.bin`/`val.bin` with their
document indexes, and `manifest.json` is written last: a folder without it is
not a prepared corpus. Bad input (unknown corpus, a tokenizer that does not
load, an empty corpus or split) is a one-line error before anything is written.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys

import numpy as np

from data.corpora import corpus_fingerprint, documents, is_validation
from data.shards import FORMAT, SPLITS, open_shards, read_manifest, token_dtype
from data.tokenizer import load_tokenizer
from nn.errors import DataError, InputError

CHUNK_DOCS = 256


def _chunks(corpus: str, path: str):
    buf = []
    for doc in documents(corpus, path):
        buf.append(doc)
        if len(buf) == CHUNK_DOCS:
            yield buf
            buf = []
    if buf:
        yield buf


def _split_counts(corpus: str, path: str, val_fraction: float) -> dict[str, int]:
    counts = {"train": 0, "val": 0}
    for name, _ in documents(corpus, path):
        counts["val" if is_validation(name, val_fraction) else "train"] += 1
    return counts


def prepare(corpus: str, tokenizer: str, out: str, *, path: str = "", val_fraction: float = 0.1,
            progress: bool = True) -> dict:
    """Writes the prepared folder `out` (or finds it already prepared); returns its manifest."""
    if not 0.0 < val_fraction < 0.5:
        raise DataError(f"data.val_fraction={val_fraction} must be in (0, 0.5)")
    tok = load_tokenizer(tokenizer)
    source = corpus_fingerprint(corpus, path)  # raises on an unknown or empty corpus
    counts = _split_counts(corpus, path, val_fraction)
    for split, n in counts.items():
        if n == 0:
            raise DataError(f"data.corpus={corpus!r}: the {split} split is empty after filtering "
                            f"({source['documents']} documents, val_fraction={val_fraction})")
    key = {"source": source, "tokenizer": {"name": tok.name, "sha256": tok.sha256, "vocab_size": tok.vocab_size},
           "val_fraction": val_fraction}
    if os.path.isfile(os.path.join(out, "manifest.json")):
        have = read_manifest(out)
        if {k: have.get(k) for k in key} == key:
            open_shards(out, tok)  # checks the files too
            return have
        raise DataError(f"--out={out!r} already holds shards of another corpus or tokenizer; choose a new folder")

    parts = os.path.join(out, "parts")
    os.makedirs(parts, exist_ok=True)
    key_path = os.path.join(parts, "key.json")
    if os.path.exists(key_path):
        with open(key_path, encoding="utf-8") as f:
            if json.load(f) != key:  # parts of another preparation: start over
                shutil.rmtree(parts)
                os.makedirs(parts)
    with open(key_path, "w", encoding="utf-8") as f:
        json.dump(key, f)

    dtype = token_dtype(tok.vocab_size)
    n_chunks = -(-source["documents"] // CHUNK_DOCS)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_chunks, desc=f"prepare {corpus}", unit="chunk", file=sys.stderr)
    for c, chunk in enumerate(_chunks(corpus, path)):
        part = os.path.join(parts, f"{c:06d}.npz")
        if not os.path.exists(part):  # resumable: finished chunks are kept
            arrays = {}
            for split in SPLITS:
                docs = [(n, t) for n, t in chunk if is_validation(n, val_fraction) == (split == "val")]
                ids = tok.encode_batch([t for _, t in docs]) if docs else []
                arrays[f"{split}_tokens"] = (np.concatenate(ids) if ids else np.zeros(0)).astype(dtype)
                arrays[f"{split}_lengths"] = np.asarray([len(i) for i in ids], np.int64)
                arrays[f"{split}_bytes"] = np.asarray([len(t.encode("utf-8")) for _, t in docs], np.int64)
            with open(part + ".tmp", "wb") as f:
                np.savez(f, **arrays)
            os.replace(part + ".tmp", part)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    splits = {}
    for split in SPLITS:
        h = hashlib.sha256()
        lengths, n_bytes = [np.zeros(1, np.int64)], 0
        with open(os.path.join(out, f"{split}.bin.tmp"), "wb") as fb:
            for c in range(n_chunks):
                with np.load(os.path.join(parts, f"{c:06d}.npz")) as z:
                    toks = z[f"{split}_tokens"]
                    fb.write(toks.tobytes())
                    h.update(toks.tobytes())
                    lengths.append(z[f"{split}_lengths"])
                    n_bytes += int(z[f"{split}_bytes"].sum())
        offsets = np.cumsum(np.concatenate(lengths))
        offsets.astype(np.int64).tofile(os.path.join(out, f"{split}.idx.tmp"))
        os.replace(os.path.join(out, f"{split}.bin.tmp"), os.path.join(out, f"{split}.bin"))
        os.replace(os.path.join(out, f"{split}.idx.tmp"), os.path.join(out, f"{split}.idx"))
        splits[split] = {"documents": len(offsets) - 1, "tokens": int(offsets[-1]), "bytes": n_bytes,
                         "tokens_sha256": h.hexdigest()}
        if splits[split]["tokens"] == 0:
            raise DataError(f"data.corpus={corpus!r}: the {split} split has no tokens")
    manifest = {"format": FORMAT, **key, "dtype": dtype.name, "splits": splits}
    tmp = os.path.join(out, "manifest.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out, "manifest.json"))
    shutil.rmtree(parts, ignore_errors=True)
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="stdlib", choices=["pydoc", "stdlib", "path"])
    p.add_argument("--path", default="", help="the file or folder of .txt/.jsonl for --corpus path")
    p.add_argument("--tokenizer", default="bytes", help="'bytes', a tokenizer.json (or its folder) or a .model")
    p.add_argument("--val_fraction", type=float, default=0.1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        m = prepare(args.corpus, args.tokenizer, args.out, path=args.path, val_fraction=args.val_fraction)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = m["splits"]
    print(f"{args.out}: train {s['train']['documents']} documents / {s['train']['tokens']:,} tokens, "
          f"val {s['val']['documents']} / {s['val']['tokens']:,} ({m['source']['corpus']}, "
          f"python {m['source']['python']}, sha256 {m['source']['content_sha256'][:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
