"""Data: the embedded corpus, the split, file loading, deterministic and process-sliced batches."""
import numpy as np
import pytest

from nn.errors import DataError
from data.text import ByteCorpus, lm_eval_batches, lm_train_batch, load_text_bytes, pydoc_corpus_bytes


def test_pydoc_corpus_is_embedded_and_split_deterministically():
    raw = pydoc_corpus_bytes()
    assert 300_000 < len(raw) < 1_000_000
    a = ByteCorpus.split(raw, 0.1, min_len=257)
    b = ByteCorpus.split(raw, 0.1, min_len=257)
    np.testing.assert_array_equal(a.train, b.train)
    assert len(a.train) + len(a.val) == len(raw)
    assert 0.07 < len(a.val) / len(raw) < 0.13


def test_batches_are_a_function_of_seed_and_step():
    stream = np.frombuffer(pydoc_corpus_bytes(), np.uint8)
    x = lm_train_batch(stream, seed=3, step=7, batch=8, seq_len=16)
    y = lm_train_batch(stream, seed=3, step=7, batch=8, seq_len=16)
    z = lm_train_batch(stream, seed=3, step=8, batch=8, seq_len=16)
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
    assert not np.array_equal(x["inputs"], z["inputs"])
    np.testing.assert_array_equal(x["inputs"][:, 1:], x["targets"][:, :-1])  # targets are inputs shifted by one


def test_process_slices_assemble_the_global_batch():
    stream = np.frombuffer(pydoc_corpus_bytes(), np.uint8)
    full = lm_train_batch(stream, seed=0, step=5, batch=8, seq_len=16)
    parts = [lm_train_batch(stream, seed=0, step=5, batch=8, seq_len=16, process_index=i, process_count=4)
             for i in range(4)]
    np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), full["inputs"])


def test_eval_batches_cover_validation_once_with_padding_weights():
    stream = np.arange(1000, dtype=np.uint8)
    batches = list(lm_eval_batches(stream, batch=4, seq_len=10, max_batches=100))
    total_weight = sum(b["weights"].sum() for b in batches)
    assert total_weight == (999 // 10) * 10
    assert all(b["inputs"].shape == (4, 10) for b in batches)


def test_path_loading(tmp_path):
    (tmp_path / "a.txt").write_text("hello ")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("world")
    (tmp_path / "ignored.md").write_text("not me")
    assert load_text_bytes(tmp_path) == b"hello \n\nworld"
    assert load_text_bytes(tmp_path / "a.txt") == b"hello "


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("make,match", [
    (lambda p: p / "missing.txt", "does not exist"),
    (lambda p: p, "no .txt files"),
    (lambda p: _write(p / "e.txt", b""), "is empty"),
    (lambda p: _write(p / "x.txt", b"ok\xff\xfe"), r"not UTF-8 text \(invalid byte at offset 2\)"),
])
def test_path_errors(tmp_path, make, match):
    with pytest.raises(DataError, match=match):
        load_text_bytes(make(tmp_path))


def test_corpus_too_small_for_context():
    with pytest.raises(DataError, match="fewer than data.seq_len"):
        ByteCorpus.split(b"tiny text" * 10, 0.1, min_len=257)
