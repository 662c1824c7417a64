"""Document corpora that need no download: `data.corpus = "pydoc" | "stdlib" | "path"`.

- `pydoc`: the English help topics of CPython's `pydoc_data.topics` (about
  465 KB), one document per topic, in sorted key order.
- `stdlib`: the `.py` sources of this Python's standard library
  (`sysconfig.get_paths()["stdlib"]`, without `site-packages` and without
  test folders; about 13 MB on 3.11), one document per file, sorted paths.
- `path`: a user's file or folder: every `.txt` file is one document, every
  line of a `.jsonl` file is one document (its `text` field).

A document is `(name, text)`; the held-out split is decided by a hash of the
name (`is_validation`), so adding or editing one file never moves another
between splits. `corpus_fingerprint` (Python version, document count and a
SHA-256 over names and texts) is written into every prepared manifest, so a
study says exactly what it trained on.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

from nn.errors import ConfigError, DataError

CORPORA = ("pydoc", "stdlib", "path")
_TEST_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_files(root: str | None = None) -> list[Path]:
    """The standard library's `.py` files, sorted, without site-packages and test folders."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, files in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _TEST_DIRS and not d.startswith("."))
        for f in files:
            if f.endswith(".py"):
                out.append(Path(dirpath) / f)
    return sorted(out, key=lambda p: p.relative_to(base).as_posix())


def _read_utf8(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # a few stdlib files carry another declared encoding: skipped, counted in the manifest


def pydoc_documents() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for k in sorted(topics):
        text = topics[k].strip()
        if text:
            yield f"pydoc/{k}", text


def stdlib_documents(root: str | None = None) -> Iterator[tuple[str, str]]:
    base = Path(root or sysconfig.get_paths()["stdlib"])
    for f in stdlib_files(root):
        text = _read_utf8(f)
        if text and text.strip():
            yield "stdlib/" + f.relative_to(base).as_posix(), text


def path_documents(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """`.txt` files (one document each) and `.jsonl` lines (`text` field) of a file or folder, sorted."""
    p = Path(path)
    if not str(path) or not p.exists():
        raise DataError(f"data.path={str(path)!r} does not exist")
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".txt", ".jsonl"))
    if not files:
        raise DataError(f"data.path={str(path)!r} holds no .txt or .jsonl files")
    for f in files:
        rel = f.name if p.is_file() else f.relative_to(p).as_posix()
        if f.suffix == ".jsonl":
            with open(f, encoding="utf-8", errors="strict") as fh:
                for i, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"data.path: {str(f)!r} line {i} is not JSON ({e.msg})") from None
                    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                        raise DataError(f"data.path: {str(f)!r} line {i} has no string 'text' field")
                    if rec["text"].strip():
                        yield f"{rel}:{i}", rec["text"]
        else:
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"data.path: {str(f)!r} is not UTF-8 text (invalid byte at offset {e.start})") from None
            if text.strip():
                yield rel, text


def documents(corpus: str, path: str = "") -> Iterator[tuple[str, str]]:
    """Every document of a corpus, in its fixed order."""
    if corpus == "pydoc":
        return pydoc_documents()
    if corpus == "stdlib":
        return stdlib_documents()
    if corpus == "path":
        return path_documents(path)
    raise ConfigError(f"data.corpus={corpus!r} is not a corpus; choose one of {list(CORPORA)}")


def is_validation(name: str, val_fraction: float) -> bool:
    """Held-out split by a hash of the document's name: stable under additions and edits elsewhere."""
    h = int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")
    return (h % 1_000_000) < round(val_fraction * 1_000_000)


def corpus_fingerprint(corpus: str, path: str = "") -> dict:
    """What a run trained on: the corpus, the Python version, document count and a content hash."""
    h = hashlib.sha256()
    n = 0
    for name, text in documents(corpus, path):
        h.update(name.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")
        n += 1
    if n == 0:
        raise DataError(f"data.corpus={corpus!r}{f' (data.path={path!r})' if path else ''} has no documents")
    return {"corpus": corpus, "path": os.path.abspath(path) if corpus == "path" else "",
            "python": sys.version.split()[0], "documents": n, "content_sha256": h.hexdigest()}
