"""Data: embedded corpora, file/folder loaders, deterministic batches."""
from data.text import ByteCorpus, load_text_bytes, pydoc_corpus_bytes

__all__ = ["ByteCorpus", "load_text_bytes", "pydoc_corpus_bytes"]
