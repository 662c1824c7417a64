"""Tokenizers behind one interface: bytes, a HF `tokenizers` JSON file, a sentencepiece model.

    python -m data.tokenizer train --corpus stdlib --vocab_size 8192 --out runs/tok/stdlib-8192

`data.tokenizer` is `"bytes"` (256 ids, one per UTF-8 byte), a `tokenizer.json`
(or a folder holding one), or a sentencepiece `.model` file. Every tokenizer
gives `vocab_size`, `encode_batch(texts) -> [int array]`, `decode(ids)`,
`token_bytes()` (how many UTF-8 bytes each id stands for, so evaluation can
report bits per byte whatever the tokenizer) and `sha256` (recorded in the
prepared manifest, so shards are never read with another tokenizer).

`train` fits a byte-level BPE (HF `tokenizers`, the library GPT-2-style
tokenizers are trained with) on the training split of a corpus: every text
encodes (no unknown token) and ids decode back to the exact bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from nn.errors import ConfigError, DataError, InputError


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255."""

    name = "bytes"
    vocab_size = 256
    sha256 = "bytes"

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) for t in texts]

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        return np.ones(256, np.int32)


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte (what ByteLevel BPE vocabularies are written in) -> the byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class HFTokenizer:
    """A `tokenizers` JSON file (BPE, WordPiece, Unigram, ...)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception for malformed files
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"data.tokenizer={str(path)!r} does not load as a tokenizers JSON file ({msg[:120]})") from None
        self.name = str(path)
        self.vocab_size = int(self.tok.get_vocab_size(with_added_tokens=True))
        self.sha256 = _sha256_file(path)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, np.int32) for e in self.tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        alphabet = _byte_level_alphabet()
        special = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        out = np.zeros(self.vocab_size, np.int32)
        for i in range(self.vocab_size):
            s = self.tok.id_to_token(i)
            if s is None or s in special:
                continue
            # A byte-level piece counts its bytes exactly; otherwise the UTF-8 length of its decoding.
            out[i] = len(s) if all(c in alphabet for c in s) else len(self.tok.decode([i]).encode("utf-8"))
        return out


class SentencePieceTokenizer:
    def __init__(self, path: Path):
        try:
            import sentencepiece as spm
        except ImportError:
            raise DataError(f"data.tokenizer={str(path)!r} is a sentencepiece model; pip install sentencepiece") from None
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except Exception as e:  # noqa: BLE001  (sentencepiece raises OSError or RuntimeError)
            raise DataError(f"data.tokenizer={str(path)!r} does not load as a sentencepiece model ({e})") from None
        self.name = str(path)
        self.vocab_size = int(self.sp.GetPieceSize())
        self.sha256 = _sha256_file(path)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(ids, np.int32) for ids in self.sp.Encode(list(texts))]

    def decode(self, ids) -> str:
        return self.sp.Decode([int(i) for i in ids])

    def token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, np.int32)
        for i in range(self.vocab_size):
            if self.sp.IsControl(i) or self.sp.IsUnknown(i):
                continue
            piece = self.sp.IdToPiece(i)
            out[i] = 1 if self.sp.IsByte(i) else len(piece.replace("\u2581", " ").encode("utf-8"))
        return out


def load_tokenizer(spec: str):
    """`"bytes"`, a tokenizer.json / folder holding one, or a sentencepiece `.model`."""
    if spec == "bytes":
        return ByteTokenizer()
    if not spec:
        raise ConfigError("data.tokenizer='' must be 'bytes' or a path to a tokenizer.json or sentencepiece .model")
    p = Path(spec)
    if p.is_dir():
        found = [p / "tokenizer.json"] if (p / "tokenizer.json").is_file() else sorted(p.glob("*.model"))
        if not found:
            raise DataError(f"data.tokenizer={spec!r} is a folder with no tokenizer.json or .model file")
        p = found[0]
    if not p.is_file():
        raise DataError(f"data.tokenizer={spec!r} does not exist (expected 'bytes', a tokenizer.json or a .model file)")
    return SentencePieceTokenizer(p) if p.suffix == ".model" else HFTokenizer(p)


def train_bpe(corpus: str, out: str, vocab_size: int, *, path: str = "", val_fraction: float = 0.1,
              quiet: bool = False) -> str:
    """Trains a byte-level BPE on the training documents of `corpus`; writes out/tokenizer.json. Returns its path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from data.corpora import corpus_fingerprint, documents, is_validation

    if not isinstance(vocab_size, int) or not 257 <= vocab_size <= 65535:
        raise ConfigError(f"--vocab_size={vocab_size!r} must be an integer in [257, 65535]")
    info = corpus_fingerprint(corpus, path)  # checks the corpus before anything is written
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=not quiet, special_tokens=[])
    texts = (text for name, text in documents(corpus, path) if not is_validation(name, val_fraction))
    tok.train_from_iterator(texts, trainer=trainer)
    os.makedirs(out, exist_ok=True)
    dest = os.path.join(out, "tokenizer.json")
    tok.save(dest + ".tmp")
    os.replace(dest + ".tmp", dest)
    with open(os.path.join(out, "trained_on.json"), "w", encoding="utf-8") as f:
        json.dump({**info, "vocab_size": tok.get_vocab_size(), "val_fraction": val_fraction}, f, indent=1)
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.tokenizer", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a byte-level BPE on a corpus's training split")
    t.add_argument("--corpus", default="stdlib", choices=["pydoc", "stdlib", "path"])
    t.add_argument("--path", default="", help="the file or folder for --corpus path")
    t.add_argument("--vocab_size", type=int, default=8192)
    t.add_argument("--val_fraction", type=float, default=0.1)
    t.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        dest = train_bpe(args.corpus, args.out, args.vocab_size, path=args.path, val_fraction=args.val_fraction)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {dest} ({load_tokenizer(dest).vocab_size} ids)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
