"""From a run's `data` config to a tokenizer and prepared folders (preparing them once, in a cache).

    data.corpus    = "pydoc" | "stdlib" | "path" (data.path)    what to train on
    data.mixture   = {"stdlib": 0.8, "pydoc": 0.2}              or several corpora / prepared folders by weight
    data.tokenizer = "bytes" | "<tokenizer.json or .model>" | "bpe:8192"
    data.shards    = "<prepared folder>"                        skip the cache: read this folder

`bpe:N` trains a byte-level BPE with N ids on the (first) corpus's training
split the first time it is asked for and keeps it in the cache; corpora are
prepared into the cache the same way (`data.cache_dir`, default
`$SCALING_STUDIES_DATA` or `~/.cache/scaling-studies/data`), keyed by the
corpus's content hash and the tokenizer's hash, so a changed corpus or
tokenizer never reads stale shards. Preparation writes into a private
temporary folder renamed into place, so processes that prepare at once do not
collide.
"""
from __future__ import annotations

import math
import os
import shutil

from data.corpora import CORPORA, corpus_fingerprint
from data.shards import open_shards
from data.tokenizer import load_tokenizer, train_bpe
from nn.errors import ConfigError


def cache_root(data_cfg) -> str:
    return (data_cfg.get("cache_dir") or os.environ.get("SCALING_STUDIES_DATA")
            or os.path.join(os.path.expanduser("~"), ".cache", "scaling-studies", "data"))


def parse_mixture(mixture) -> dict[str, float]:
    """`{name: weight}` from a dict / ConfigDict or a `"stdlib:0.8,pydoc:0.2"` string; {} when unset."""
    if not mixture:
        return {}
    if isinstance(mixture, str):
        items = []
        for part in mixture.split(","):
            name, sep, w = part.strip().rpartition(":")
            if not sep or not name:
                raise ConfigError(f"data.mixture={mixture!r}: {part.strip()!r} is not name:weight")
            items.append((name, w))
    else:
        items = list(dict(mixture).items())
    out = {}
    for name, w in items:
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ConfigError(f"data.mixture: the weight of {name!r} is {w!r}, not a number") from None
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"data.mixture: the weight of {name!r} is {w}; weights must be finite and >= 0")
        if name not in CORPORA and not os.path.isfile(os.path.join(str(name), "manifest.json")):
            raise ConfigError(f"data.mixture names an unknown source {name!r}; sources are {list(CORPORA)} "
                              f"or prepared folders")
        out[str(name)] = w
    total = sum(out.values())
    if not total > 0:
        raise ConfigError(f"data.mixture={dict(out)} has weights summing to {total}; they must sum to a positive number")
    return {k: v / total for k, v in out.items() if v > 0}


def _into_place(make, dest: str) -> None:
    """Runs make(tmp) and renames tmp to dest; a process that lost the race drops its copy."""
    tmp = f"{dest}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    make(tmp)
    try:
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
        if not os.path.isdir(dest):
            raise


def resolve_tokenizer(spec: str, corpus: str, path: str, cache: str, val_fraction: float):
    if isinstance(spec, str) and spec.startswith("bpe:"):
        try:
            vocab = int(spec[4:])
        except ValueError:
            raise ConfigError(f"data.tokenizer={spec!r}: bpe:N takes an integer N") from None
        fp = corpus_fingerprint(corpus, path)
        dest = os.path.join(cache, "tokenizers", f"{corpus}-bpe{vocab}-{fp['content_sha256'][:12]}-v{val_fraction}")
        if not os.path.isfile(os.path.join(dest, "tokenizer.json")):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            _into_place(lambda tmp: train_bpe(corpus, tmp, vocab, path=path, val_fraction=val_fraction, quiet=True), dest)
        return load_tokenizer(dest)
    return load_tokenizer(spec)


def ensure_prepared(corpus: str, path: str, tok, cache: str, val_fraction: float) -> str:
    from data.prepare import prepare

    fp = corpus_fingerprint(corpus, path)
    dest = os.path.join(cache, "shards", f"{corpus}-{fp['content_sha256'][:12]}-{tok.sha256[:12]}-v{val_fraction}")
    if not os.path.isfile(os.path.join(dest, "manifest.json")):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        _into_place(lambda tmp: prepare(corpus, tok.name, tmp, path=path, val_fraction=val_fraction,
                                        progress=False), dest)
    return dest


def resolve(data_cfg):
    """(tokenizer, [(prepared folder, weight)], [manifest]) for a run's data config; prepares what is missing."""
    corpus, path = str(data_cfg.get("corpus") or "pydoc"), str(data_cfg.get("path") or "")
    if path and corpus == "pydoc":
        corpus = "path"  # a data.path names the corpus, as on the byte-window path
    if corpus not in CORPORA:
        raise ConfigError(f"data.corpus={corpus!r} is not a corpus; choose one of {list(CORPORA)}")
    mixture = parse_mixture(data_cfg.get("mixture"))
    shards = str(data_cfg.get("shards") or "")
    if shards and mixture:
        raise ConfigError("data.shards and data.mixture are exclusive; name prepared folders in data.mixture instead")
    val_fraction = float(data_cfg.val_fraction)
    cache = cache_root(data_cfg)
    names = list(mixture) if mixture else [corpus]
    first = next((n for n in names if n in CORPORA), corpus)
    tok = resolve_tokenizer(str(data_cfg.tokenizer), first, path if first == "path" else "", cache, val_fraction)
    if shards:
        folders = [(shards, 1.0)]
    else:
        folders = [(ensure_prepared(n, path if n == "path" else "", tok, cache, val_fraction) if n in CORPORA else n,
                    mixture.get(n, 1.0)) for n in names]
    manifests = [open_shards(d, tok).manifest for d, _ in folders]
    return tok, folders, manifests
