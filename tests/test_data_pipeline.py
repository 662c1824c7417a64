"""The packed data path: corpora, tokenizers, prepared shards, packing, sampling, grain batches, bad input."""
import json
import os
import sys
import tracemalloc

import jax
import numpy as np
import pytest

from conftest import load_config, read_metrics, tiny_model
from data import corpora, pipeline, sampling
from data.packing import num_rows, pack_rows
from data.prepare import main as prepare_main, prepare
from data.shards import open_shards
from data.sources import parse_mixture
from data.tokenizer import ByteTokenizer, load_tokenizer, train_bpe
from nn.errors import ConfigError, DataError

TEXTS = ["def f(x):\n    return x + 1\n", "héllo wörld, ünïcode " * 30, "short", "class A:\n    pass\n" * 40,
         "x = [i * i for i in range(10)]\n" * 25, "print('the end')\n" * 3]


def _write_docs(folder, n=40):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"doc{i:03d}.txt").write_text(f"# document {i}\n" + TEXTS[i % len(TEXTS)] * (1 + i % 4))
    with open(folder / "more.jsonl", "w", encoding="utf-8") as f:
        for i in range(10):
            f.write(json.dumps({"text": f"json document {i} " + TEXTS[i % len(TEXTS)], "id": i}) + "\n")
    return folder


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return _write_docs(tmp_path_factory.mktemp("corpus") / "texts")


@pytest.fixture(scope="module")
def prepared(corpus_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prepared") / "bytes")
    prepare("path", "bytes", out, path=str(corpus_dir), val_fraction=0.2, progress=False)
    return out


# --------------------------------------------------------------------------- corpora, tokenizers, prepare

def test_stdlib_corpus_is_sorted_py_files_without_tests_or_site_packages():
    files = corpora.stdlib_files()
    rel = [str(f) for f in files]
    assert len(files) > 500 and rel == sorted(rel, key=lambda s: s)  # sorted paths (relative order = absolute)
    assert all(f.suffix == ".py" for f in files)
    parts = {p for f in files for p in f.parts}
    assert not parts & {"test", "tests", "site-packages", "idle_test"}
    assert any(f.name == "os.py" for f in files)


def test_split_is_by_document_hash_and_stable():
    names = [f"doc{i}" for i in range(2000)]
    val = [n for n in names if corpora.is_validation(n, 0.1)]
    assert 150 < len(val) < 250
    assert val == [n for n in names + ["new"] if corpora.is_validation(n, 0.1) and n != "new"]


def test_prepared_shards_hold_every_document_in_order(corpus_dir, prepared):
    shards = open_shards(prepared, ByteTokenizer())
    docs = list(corpora.path_documents(corpus_dir))
    assert len(docs) == 50 and docs[-1][0] == "more.jsonl:10"
    want = {"train": [t for n, t in docs if not corpora.is_validation(n, 0.2)],
            "val": [t for n, t in docs if corpora.is_validation(n, 0.2)]}
    for split, texts in want.items():
        s = shards.split(split)
        got = [bytes(s.tokens[s.offsets[i]:s.offsets[i + 1]].astype(np.uint8)).decode() for i in range(s.num_documents)]
        assert got == texts
        assert shards.manifest["splits"][split]["bytes"] == sum(len(t.encode()) for t in texts)
    m = shards.manifest
    assert m["source"]["python"] == sys.version.split()[0] and len(m["source"]["content_sha256"]) == 64
    # Already prepared: a second call finds it and changes nothing.
    before = os.path.getmtime(os.path.join(prepared, "train.bin"))
    prepare("path", "bytes", prepared, path=str(corpus_dir), val_fraction=0.2, progress=False)
    assert os.path.getmtime(os.path.join(prepared, "train.bin")) == before


def test_prepare_resumes_from_finished_chunks(corpus_dir, prepared, tmp_path, monkeypatch):
    """An interrupted preparation keeps its finished chunks; the resumed one writes the same files."""
    import data.prepare as prep

    monkeypatch.setattr(prep, "CHUNK_DOCS", 8)
    out = tmp_path / "p"
    calls = []
    real = ByteTokenizer.encode_batch

    def flaky(self, texts):
        calls.append(len(texts))
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, texts)

    monkeypatch.setattr(ByteTokenizer, "encode_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare("path", "bytes", str(out), path=str(corpus_dir), val_fraction=0.2, progress=False)
    assert not (out / "manifest.json").exists() and len(os.listdir(out / "parts")) == 1 + 2  # key + 2 chunks
    calls.clear()
    monkeypatch.setattr(ByteTokenizer, "encode_batch", real)
    prepare("path", "bytes", str(out), path=str(corpus_dir), val_fraction=0.2, progress=False)
    for f in ("train.bin", "train.idx", "val.bin", "val.idx"):
        assert (out / f).read_bytes() == open(os.path.join(prepared, f), "rb").read()
    assert not (out / "parts").exists()


def test_bpe_tokenizer_trains_roundtrips_and_counts_bytes(corpus_dir, tmp_path):
    path = train_bpe("path", str(tmp_path / "tok"), 300, path=str(corpus_dir), quiet=True)
    tok = load_tokenizer(str(tmp_path / "tok"))
    assert tok.vocab_size == 300 and load_tokenizer(path).sha256 == tok.sha256
    text = "héllo wörld\n\tdef  x(): ✓ 日本"  # unseen characters still encode (byte-level)
    ids = tok.encode_batch([text])[0]
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges were learnt
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))  # bits-per-byte denominator is exact
    # The CLIP text tower takes the same file: its ids, then PAD, BOS, EOS.
    from clip.tokenizer import get_tokenizer

    cap = get_tokenizer(path, 12)
    toks, seg = cap.encode(["a red circle", text])
    assert cap.vocab_size == 303 and toks[0, 0] == 301 and seg[0].sum() == len(tok.encode_batch(["a red circle"])[0]) + 2
    assert toks[0, seg[0].sum() - 1] == 302 and (toks[0, seg[0].sum():] == 300).all()
    assert cap.decode(toks[0]) == "a red circle" and toks[1, -1] == 302  # cut to 12, EOS kept


# --------------------------------------------------------------------------- packing and sampling

def _reference_rows(tokens, offsets, rows, L):
    """Explicit per-position loop: the document of each token, segments renumbered per row."""
    doc_of = np.zeros(len(tokens), int)
    for d in range(len(offsets) - 1):
        doc_of[offsets[d]:offsets[d + 1]] = d
    out = {k: np.zeros((len(rows), L), int) for k in ("inputs", "targets", "segment_ids", "positions", "weights")}
    for b, r in enumerate(rows):
        seen, pos = [], 0
        for t in range(L):
            i = r * L + t
            d = doc_of[i]
            if not seen or seen[-1] != d:
                seen.append(d)
                pos = 0
            out["inputs"][b, t], out["targets"][b, t] = tokens[i], tokens[i + 1]
            out["segment_ids"][b, t], out["positions"][b, t] = len(seen), pos
            out["weights"][b, t] = int(doc_of[i + 1] == d)  # no loss on a target from the next document
            pos += 1
    return out


def test_packing_matches_an_explicit_per_document_loop():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=30)
    lengths[5] = 1  # one-token documents and documents longer than a row
    lengths[6] = 100
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = rng.integers(0, 1000, size=offsets[-1]).astype(np.uint16)
    L = 16
    rows = np.arange(num_rows(len(tokens), L))
    got = pack_rows(tokens, offsets, rows, L)
    want = _reference_rows(tokens, offsets, rows, L)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert got["weights"].mean() < 1.0 and (got["segment_ids"].max(axis=1) > 2).any()


@pytest.mark.slow
def test_packed_attention_does_not_cross_documents():
    """Logits of a packed row equal each document's logits computed alone (positions restarting at 0)."""
    import jax

    # The model is built inside the one compiled function (seed-0 parameters each call): no eager init.
    run = jax.jit(lambda p, x, seg, pos: tiny_model()(x, segment_ids_BT=seg, positions_BT=pos)[0])
    params = None
    a, b = np.arange(1, 12) % 64, np.arange(20, 41) % 64
    row = np.concatenate([a, b])[None, :].astype(np.int32)
    seg = np.concatenate([np.full(len(a), 1), np.full(len(b), 2)])[None, :].astype(np.int32)
    pos = np.concatenate([np.arange(len(a)), np.arange(len(b))])[None, :].astype(np.int32)
    packed = run(params, row, seg, pos)
    # Each document alone at the start of a plain row (causal: what follows it cannot matter).
    ones, plain = np.ones_like(seg), np.arange(row.shape[1])[None, :].astype(np.int32)
    alone_b = run(params, np.concatenate([b, a])[None, :].astype(np.int32), ones, plain)
    alone_a = run(params, row, ones, plain)
    np.testing.assert_allclose(packed[0, :len(a)], alone_a[0, :len(a)], atol=2e-5)
    np.testing.assert_allclose(packed[0, len(a):], alone_b[0, :len(b)], atol=2e-5)
    assert not np.allclose(packed[0, len(a):], alone_a[0, len(a):], atol=1e-3)  # unpacked, b would see a


def test_epoch_permutation_and_mixture_counts_are_exact():
    for n in (1, 2, 3, 17, 1000, 4099):
        perm = sampling.source_rows(np.arange(2 * n), n, seed=3, source=0)
        assert sorted(perm[:n]) == list(range(n)) and sorted(perm[n:]) == list(range(n))  # each row once per epoch
    if True:
        assert not np.array_equal(perm[:n], perm[n:])  # a fresh order every epoch
    g = np.arange(3 * sampling.BLOCK)
    src, idx = sampling.mixture_index(g, [0.8, 0.2], seed=1)
    counts = np.bincount(src[: sampling.BLOCK])
    assert counts.tolist() == [3277, 819]  # round(4096 * w), largest remainder
    for k in (0, 1):  # every source reads its own stream 0, 1, 2, ... with no gaps or repeats
        np.testing.assert_array_equal(np.sort(idx[src == k]), np.arange((src == k).sum()))
    s2, i2 = sampling.mixture_index(g[5000:5100], [0.8, 0.2], seed=1)  # any slice alone gives the same answer
    np.testing.assert_array_equal(s2, src[5000:5100])
    np.testing.assert_array_equal(i2, idx[5000:5100])


def _dataset(folders, **kw):
    args = dict(seq_len=16, batch=8, seed=0, num_steps=50, token_bytes=np.ones(256, np.int32))
    return pipeline.train_dataset(folders, **{**args, **kw})


def test_batches_are_a_pure_function_of_seed_and_step(prepared):
    ds, again = _dataset([(prepared, 1.0)]), _dataset([(prepared, 1.0)])
    for step in (0, 7, 49):
        for k, v in ds[step].items():
            np.testing.assert_array_equal(v, again[step][k])
    assert not np.array_equal(ds[3]["inputs"], ds[4]["inputs"])
    assert not np.array_equal(ds[3]["inputs"], _dataset([(prepared, 1.0)], seed=1)[3]["inputs"])
    it = pipeline.StepIterator(ds, prefetch=2)
    try:  # the grain iterator, read in order and after a jump (a resume), gives the same batches
        for step in (0, 1, 2, 9, 10, 3):
            np.testing.assert_array_equal(it.batch(step)["targets"], ds[step]["targets"])
    finally:
        it.close()
    b = ds[2]
    np.testing.assert_array_equal(b["bytes"], b["weights"])  # bytes tokenizer: one byte per predicted token
    assert b["inputs"].shape == b["segment_ids"].shape == (8, 16)


def test_two_processes_read_disjoint_rows_that_form_the_global_batch(prepared, corpus_dir, tmp_path):
    other = str(tmp_path / "pydoc")
    prepare("pydoc", "bytes", other, val_fraction=0.2, progress=False)
    folders = [(prepared, 0.75), (other, 0.25)]
    full = _dataset(folders)
    parts = [_dataset(folders, process_index=p, process_count=2) for p in (0, 1)]
    for step in (0, 5, 31):
        for k in full[step]:
            np.testing.assert_array_equal(np.concatenate([parts[0][step][k], parts[1][step][k]]), full[step][k])
    # The mixture reaches both sources in its proportions over many rows.
    src, _ = sampling.mixture_index(np.arange(8 * 50), [0.75, 0.25], seed=0)
    assert abs(np.mean(src == 1) - 0.25) < 0.02


def test_reading_never_holds_the_corpus_in_memory(tmp_path):
    """A corpus of 4 MB tokens (8 MB on disk); reading 30 batches allocates under a 1 MB limit."""
    big = tmp_path / "big"
    big.mkdir()
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "\n", "def", "return"])
    for i in range(8):
        (big / f"{i}.txt").write_text(" ".join(rng.choice(words, size=100_000)))
    out = str(tmp_path / "prep")
    prepare("path", "bytes", out, path=str(big), val_fraction=0.2, progress=False)
    on_disk = os.path.getsize(os.path.join(out, "train.bin"))
    limit = 1 << 20
    assert on_disk > 4 * limit
    tracemalloc.start()
    try:
        ds = _dataset([(out, 1.0)], seq_len=64, batch=16)
        for step in range(30):
            ds[step]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, peak


def test_eval_batches_cover_validation_rows_in_order_with_zero_weight_padding(prepared):
    val = open_shards(prepared).val
    n = num_rows(len(val.tokens), 16)
    batches = list(pipeline.eval_batches(prepared, seq_len=16, batch=8, max_batches=1000,
                                         token_bytes=np.ones(256, np.int32)))
    assert len(batches) == -(-n // 8)
    inputs = np.concatenate([b["inputs"] for b in batches])[:n]
    np.testing.assert_array_equal(inputs.ravel(), np.asarray(val.tokens[: n * 16], np.int32))
    assert batches[-1]["weights"][n % 8 or 8:].sum() == 0


# --------------------------------------------------------------------------- bad input

def test_bad_shard_folders(prepared, tmp_path):
    import shutil

    with pytest.raises(DataError, match="does not exist; prepare it"):
        open_shards(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="has no manifest.json"):
        open_shards(str(tmp_path))
    bad = tmp_path / "bad"
    shutil.copytree(prepared, bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json is corrupt"):
        open_shards(str(bad))
    shutil.copy(os.path.join(prepared, "manifest.json"), bad / "manifest.json")
    with open(bad / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError, match=r"train.bin has 10 bytes, the manifest says \d+"):
        open_shards(str(bad))


def test_sentencepiece_model_loads_roundtrips_and_counts_bytes(corpus_dir, tmp_path):
    """A user's sentencepiece `.model` goes through the same interface (trained here, on the test corpus)."""
    spm = pytest.importorskip("sentencepiece")
    texts = [f.read_text(encoding="utf-8") for f in sorted(corpus_dir.glob("*.txt"))]
    # Identity normalization and no dummy prefix: decode(encode(t)) == t, so the byte count can be exact.
    spm.SentencePieceTrainer.Train(sentence_iterator=iter(texts), model_prefix=str(tmp_path / "sp"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
                                   add_dummy_prefix=False, remove_extra_whitespaces=False, minloglevel=2)
    tok = load_tokenizer(str(tmp_path / "sp.model"))
    assert tok.vocab_size == 400
    text = "def  f(x): return x  # héllo 日本"  # unseen characters go through the byte fallback
    ids = tok.encode_batch([text])[0]
    assert tok.decode(ids) == text and len(ids) < len(text.encode("utf-8"))
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))  # the bits-per-byte denominator
    (tmp_path / "broken.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="does not load as a sentencepiece model"):
        load_tokenizer(str(tmp_path / "broken.model"))


def test_tokenizer_errors(prepared, tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": 3}')
    with pytest.raises(DataError, match="does not load as a tokenizers JSON file"):
        load_tokenizer(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing.json"))
    from tokenizers import Tokenizer, models

    other = tmp_path / "wordlevel.json"
    Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]")).save(str(other))
    with pytest.raises(DataError, match=r"prepared with tokenizer 'bytes' \(256 ids.*\(3 ids"):
        open_shards(prepared, load_tokenizer(str(other)))


def test_vocab_mismatch_is_a_config_error_naming_both_numbers(prepared):
    from conftest import smoke_cfg
    from tasks.lm import LMTask

    cfg = smoke_cfg()
    cfg.data.shards = prepared
    cfg.model.vocab_size = 300
    with pytest.raises(ConfigError, match=r"model.vocab_size=300 but data.tokenizer='bytes' has 256 ids"):
        LMTask(cfg)


@pytest.mark.parametrize("files,match", [
    ({"a.jsonl": '{"text": "ok"}\n{"body": "no text"}\n'}, r"a.jsonl' line 2 has no string 'text' field"),
    ({"a.txt": "  \n", "b.jsonl": '{"text": " "}\n'}, "has no documents"),
    ({"a.txt": "only one document"}, "the (train|val) split is empty after filtering"),
])
def test_corpus_errors_write_nothing(tmp_path, files, match):
    src = tmp_path / "src"
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=match):
        prepare("path", "bytes", str(out), path=str(src), progress=False)
    assert not out.exists()


@pytest.mark.parametrize("mixture,match", [
    ({"stdlib": 0.0, "pydoc": 0.0}, "summing to 0.0; they must sum to a positive number"),
    ({"stdlib": -1.0, "pydoc": 2.0}, "weight of 'stdlib' is -1.0"),
    ({"wikipedia": 1.0}, "unknown source 'wikipedia'"),
    ("stdlib=1", "is not name:weight"),
])
def test_mixture_errors(mixture, match):
    with pytest.raises(ConfigError, match=match):
        parse_mixture(mixture)
    assert parse_mixture({"stdlib": 3, "pydoc": 1}) == {"stdlib": 0.75, "pydoc": 0.25}


def test_prepare_and_tokenizer_clis_report_bad_input_in_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare_main(["--corpus", "path", "--path", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.path=") and "does not exist" in err and "\n" not in err
    assert not out.exists()
    from data.tokenizer import main as tokenizer_main

    assert tokenizer_main(["train", "--corpus", "pydoc", "--vocab_size", "100", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: --vocab_size=100 must be an integer in [257, 65535]"
    assert not out.exists()


# --------------------------------------------------------------------------- training on packed data

def _train(workdir, **train):
    from trainer import loop

    cfg = load_config("experiments/configs/lm_stdlib.py")
    cfg.train.update(num_steps=20, log_every=1, eval_every=10, checkpoint_every=10, **train)
    loop.train_and_evaluate(cfg, str(workdir), jax.devices()[:1])


@pytest.mark.slow
def test_packed_resume_is_bit_exact(tmp_path):
    """lm_stdlib:smoke (BPE, packed, grain): 20 steps straight == 10 steps, then a new launch (new task,
    iterator and state, restored from the checkpoint) for 10 more. Every loss, bit for bit.

    (In this process: that a fresh process resumes bit for bit is test_fault_tolerance.py's SIGTERM test.)
    """
    straight, split = tmp_path / "straight", tmp_path / "split"
    _train(straight)
    _train(split, stop_at=10)
    _train(split)
    rows = lambda d, key: [(r["step"], r[key]) for r in read_metrics(d) if key in r]  # noqa: E731
    a = rows(straight, "train/loss")
    assert [s for s, _ in a] == list(range(1, 21))
    assert a == rows(split, "train/loss")  # exact float equality
    assert rows(straight, "eval/bpb") == rows(split, "eval/bpb")
    eff = rows(straight, "train/data/packing_efficiency")
    assert eff and all(v == 1.0 for _, v in eff)  # concatenate-and-split never pads
    cfg = json.load(open(straight / "config.json"))
    (src,) = cfg["data"]["sources"]
    assert src["corpus"] == "pydoc" and src["python"] == sys.version.split()[0] and len(src["content_sha256"]) == 64


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(prepared):
    """data.workers > 0 (grain's mp_prefetch): the same batches in the same order, also after a jump."""
    ds = _dataset([(prepared, 1.0)])
    it = pipeline.StepIterator(ds, prefetch=2, workers=1)
    try:
        for step in (0, 1, 2, 20, 21):
            np.testing.assert_array_equal(it.batch(step)["inputs"], ds[step]["inputs"])
    finally:
        it.close()
