"""Byte-level caption tokenizer (no vocabulary file, nothing to download), with a hook for others.

Token ids: the 256 byte values, then PAD, BOS (doubles as the CLS token for
`text_pooling="cls"`) and EOS. Every caption becomes BOS + UTF-8 bytes + EOS,
cut to `seq_len` (the EOS is kept even when the bytes are cut, so EOS pooling
always finds it) and padded with PAD. `segment_ids` is 1 on real tokens and
0 on padding: the attention mask and the pooling read it.

`data.tokenizer` may also name any LM tokenizer that `data/tokenizer.py` loads
(a `tokenizer.json` or sentencepiece `.model`): its ids come first, then PAD,
BOS and EOS (`SubwordCaptionTokenizer`; for bytes this is exactly the layout
above), so the CLIP text tower and the LM share one tokenizer interface.

A user tokenizer also plugs in by name through `register_tokenizer(name, factory)`
where `factory(seq_len)` returns an object with `vocab_size` and
`encode(captions) -> (tokens_BL, segment_ids_BL)` honouring the same layout
(the position of the last real token is where EOS pooling reads).
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from nn.errors import ConfigError, DataError

PAD, BOS, EOS = 256, 257, 258
VOCAB_SIZE = 259


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...


class ByteTokenizer:
    vocab_size = VOCAB_SIZE

    def __init__(self, seq_len: int):
        if seq_len < 3:
            raise DataError(f"data.seq_len={seq_len} is too short for a caption (BOS + 1 byte + EOS needs 3)")
        self.seq_len = seq_len

    def encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        L = self.seq_len
        tokens_BL = np.full((len(captions), L), PAD, np.int32)
        for i, text in enumerate(captions):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"caption {i} is empty ({text!r}); every image needs a non-empty caption")
            body = np.frombuffer(text.encode("utf-8"), np.uint8)[: L - 2]
            tokens_BL[i, 0] = BOS
            tokens_BL[i, 1:1 + len(body)] = body
            tokens_BL[i, 1 + len(body)] = EOS
        return tokens_BL, (tokens_BL != PAD).astype(np.int32)

    def decode(self, tokens_L: np.ndarray) -> str:
        body = [int(t) for t in tokens_L if t < 256]
        return bytes(body).decode("utf-8", errors="replace")


class SubwordCaptionTokenizer:
    """Any `data.tokenizer` tokenizer as a caption tokenizer: its ids, then PAD, BOS and EOS."""

    def __init__(self, spec: str, seq_len: int):
        from data.tokenizer import load_tokenizer

        if seq_len < 3:
            raise DataError(f"data.seq_len={seq_len} is too short for a caption (BOS + 1 token + EOS needs 3)")
        self.text = load_tokenizer(spec)
        self.seq_len = seq_len
        self.pad, self.bos, self.eos = (self.text.vocab_size + i for i in range(3))
        self.vocab_size = self.text.vocab_size + 3

    def encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        L = self.seq_len
        for i, text in enumerate(captions):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"caption {i} is empty ({text!r}); every image needs a non-empty caption")
        tokens_BL = np.full((len(captions), L), self.pad, np.int32)
        for i, ids in enumerate(self.text.encode_batch(list(captions))):
            body = ids[: L - 2]
            tokens_BL[i, 0] = self.bos
            tokens_BL[i, 1:1 + len(body)] = body
            tokens_BL[i, 1 + len(body)] = self.eos
        return tokens_BL, (tokens_BL != self.pad).astype(np.int32)

    def decode(self, tokens_L: np.ndarray) -> str:
        return self.text.decode([int(t) for t in tokens_L if t < self.text.vocab_size])


TOKENIZERS: dict[str, Callable[[int], Tokenizer]] = {"bytes": ByteTokenizer}


def register_tokenizer(name: str, factory: Callable[[int], Tokenizer]) -> None:
    """Makes `data.tokenizer=name` build `factory(seq_len)`."""
    TOKENIZERS[name] = factory


def get_tokenizer(name: str, seq_len: int) -> Tokenizer:
    if name not in TOKENIZERS and (name.endswith((".json", ".model")) or "/" in name or name.startswith(".")):
        return SubwordCaptionTokenizer(name, seq_len)  # a tokenizer file or folder (data/tokenizer.py)
    if name not in TOKENIZERS:
        raise ConfigError(f"data.tokenizer={name!r} is not a registered tokenizer; choose one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[name](seq_len)
