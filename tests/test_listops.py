"""ListOps: the generator against an independent evaluator, the task's batches, a smoke run, bad configs."""
import numpy as np
import pytest

import tasks
from trainer import loop
from data import listops
from nn.errors import DataError
from experiments.configs.listops import get_config
from nn.errors import ConfigError
from tasks.classify import ListOpsTask

tasks.TASKS.setdefault("listops", ListOpsTask)

SMALL = dict(min_len=20, max_len=120, max_depth=10, max_args=10)


@pytest.fixture(scope="module")
def split():
    return listops.generate(300, seed=3, **SMALL)


def test_generator_is_deterministic_and_seed_dependent(split):
    again = listops.generate(300, seed=3, **SMALL)
    for a, b in ((split.tokens, again.tokens), (split.lengths, again.lengths), (split.labels, again.labels)):
        np.testing.assert_array_equal(a, b)
    other = listops.generate(300, seed=4, **SMALL)
    assert not np.array_equal(split.tokens, other.tokens)


def test_labels_agree_with_independent_evaluator(split):
    for row, label in zip(split.tokens, split.labels):
        assert listops.evaluate_text(listops.decode(row)) == label
    # Every class and every operator shows up.
    assert set(np.unique(split.labels)) == set(range(10))
    assert set(listops.OPERATORS) <= set(np.unique(split.tokens))


def test_evaluator_on_hand_examples():
    assert listops.evaluate_text("[MAX 2 9 [MIN 4 7 ] 0 ]") == 9
    assert listops.evaluate_text("[MED 1 2 ]") == 1  # int(np.median): 1.5 -> 1, as in LRA
    assert listops.evaluate_text("[MED 3 [SM 5 6 ] 8 ]") == 3
    assert listops.evaluate_text("[SM 9 9 9 ]") == 7
    assert listops.tree_shape("[MAX 2 9 [MIN 4 7 ] 0 ]") == (3, 2, 4)



def _prune_nested(text: str) -> str:
    """The expression with every list below the root deleted (an independent text-level oracle)."""
    out, depth = [], 0
    for tok in text.split():
        depth += tok.startswith("[")
        if depth <= 1 and not (tok == "]" and depth == 0):
            out.append(tok)
        depth -= tok == "]"
    return " ".join(out)


def test_shortcut_baselines_against_a_text_oracle(split):
    assert _prune_nested("[MAX 2 9 [MIN 4 7 ] 0 ]") == "[MAX 2 9 0 ]"
    rows = np.zeros((3, 12), np.uint8)
    for i, text in enumerate(["[MAX 2 9 [MIN 4 7 ] 0 ]", "[SM [MIN 4 7 ] ]", "5"]):
        ids = listops.encode(text)
        rows[i, 0], rows[i, 1:1 + len(ids)] = listops.CLS, ids
    assert [listops.root_and_direct_digits(r) for r in rows] == [(listops.MAX, [2, 9, 0]), (listops.SM, []), (None, [5])]
    train, held = listops.generate(400, seed=5, **SMALL), split
    pred = listops.shortcut_predictions(train, held)
    counts = {}
    for row, y in zip(train.tokens, train.labels):
        counts.setdefault(listops.decode(row).split()[0], np.zeros(10, int))[y] += 1
    majority = int(np.bincount(train.labels, minlength=10).argmax())
    for i, row in enumerate(held.tokens):
        text = listops.decode(row)
        root = text.split()[0]
        assert pred["majority"][i] == majority
        assert pred["root_operator"][i] == counts[root].argmax()
        pruned = _prune_nested(text)
        direct = pruned if pruned.split()[1:-1] else None  # a root with no direct digit falls back
        want = listops.evaluate_text(direct) if direct else counts[root].argmax()
        assert pred["root_over_direct_args"][i] == want, text
    acc = listops.shortcut_accuracies(train, held)
    assert acc["root_over_direct_args"] == pytest.approx(np.mean(pred["root_over_direct_args"] == held.labels))
    assert acc["majority"] < acc["root_operator"] < acc["root_over_direct_args"]

def test_lengths_layout_depth_and_arity(split):
    assert split.tokens.shape == (300, SMALL["max_len"] + 1) and split.tokens.dtype == np.uint8
    assert ((split.lengths >= SMALL["min_len"]) & (split.lengths <= SMALL["max_len"])).all()
    assert (split.tokens[:, 0] == listops.CLS).all()
    nonpad = (split.tokens != listops.PAD).sum(1)
    np.testing.assert_array_equal(nonpad, split.lengths + 1)  # CLS + expression, then only padding
    depths = []
    for row in split.tokens:
        depth, lo, hi = listops.tree_shape(listops.decode(row))
        assert depth <= SMALL["max_depth"] and 2 <= lo and hi <= SMALL["max_args"]
        depths.append(depth)
    assert max(depths) >= 5
    np.testing.assert_array_equal(split.depths, depths)  # the generator's depths against the text oracle
    assert listops.depths_of(listops.encode("7")[None]).tolist() == [1]
    assert listops.depths_of(listops.encode("[MAX 2 [MIN 1 [SM 3 4 ] ] 5 ]")[None]).tolist() == [4]
    assert len({r.tobytes() for r in split.tokens}) == len(split)  # distinct


def test_depth_and_arity_limits_are_configurable():
    s = listops.generate(100, seed=0, min_len=4, max_len=60, max_depth=3, max_args=4)
    for row in s.tokens:
        depth, lo, hi = listops.tree_shape(listops.decode(row))
        assert depth <= 3 and 2 <= lo and hi <= 4


def test_vocabulary_round_trip():
    assert listops.VOCAB_SIZE == 17 and listops.PAD == 0 and listops.CLS == 1
    assert sorted(listops.ID_TO_TOKEN) == list(range(listops.VOCAB_SIZE))
    text = "[SM [MED 0 1 2 ] [MIN 3 4 ] [MAX 5 6 7 8 9 ] ]"
    ids = listops.encode(text)
    assert listops.decode(ids) == text
    assert listops.decode(np.concatenate([[listops.CLS], ids, [listops.PAD] * 3])) == text
    with pytest.raises(DataError, match="unknown token"):
        listops.encode("[FIRST 1 2 ]")


def test_train_val_and_test_are_disjoint_and_cached():
    kw = dict(seed=1, num_train=200, num_val=50, **SMALL)
    d = listops.load(**kw, num_test=30)
    assert listops.load(**kw, num_test=30) is d
    rows = [{r.tobytes() for r in s.tokens} for s in (d.train, d.val, d.test)]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert (len(d.train), len(d.val), len(d.test)) == (200, 50, 30)
    # The test split comes after the others: adding it leaves train and validation as they were.
    without = listops.load(**kw)
    assert len(without.test) == 0
    for a, b in ((d.train, without.train), (d.val, without.val)):
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.depths, b.depths)


def test_length_buckets_are_quantile_ranges():
    lengths = np.array([5, 5, 5, 5, 6, 7, 8, 9, 9, 30])
    assert listops.length_bucket_edges(lengths, 4) == [(5, 5), (6, 6), (7, 8), (9, 30)]
    assert listops.length_bucket_edges(lengths, 1) == [(5, 30)]
    assert listops.length_bucket_edges(np.full(7, 12), 3) == [(12, 12)]  # repeated quantiles merge
    with pytest.raises(DataError, match=r"data\.length_buckets=0"):
        listops.length_bucket_edges(lengths, 0)


def _task(process_index=0, process_count=1, **data):
    c = get_config("smoke")
    c.data.update(data)
    return ListOpsTask(c, process_index, process_count)


def test_train_batches_deterministic_and_process_slices_assemble():
    task = _task()
    b = task.train_batch(5)
    assert b["inputs"].shape == (8, 32) and b["inputs"].dtype == np.int32
    assert b["labels"].shape == (8,) and b["labels"].dtype == np.int32
    np.testing.assert_array_equal(b["segment_ids"], (b["inputs"] != 0).astype(np.int32))
    assert (b["inputs"][:, 0] == listops.CLS).all()
    for k in b:
        np.testing.assert_array_equal(b[k], _task().train_batch(5)[k])
    assert not np.array_equal(b["inputs"], task.train_batch(6)["inputs"])
    parts = [_task(i, 4).train_batch(5) for i in range(4)]
    for k in b:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), b[k])
    for row, label in zip(b["inputs"], b["labels"]):
        assert listops.evaluate_text(listops.decode(row)) == label


def test_eval_covers_validation_then_test_once_with_zero_weight_padding():
    task = _task(num_val=21, num_test=10)  # 3 + 2 batches of 8, 3 + 6 padding rows
    batches = list(task.eval_batches())
    assert len(batches) == 5
    w = np.concatenate([b["weights"] for b in batches])
    tw = np.concatenate([b["test_weights"] for b in batches])
    assert w.dtype == tw.dtype == np.float32
    np.testing.assert_array_equal(w, [1] * 21 + [0] * 3 + [0] * 16)
    np.testing.assert_array_equal(tw, [0] * 24 + [1] * 10 + [0] * 6)
    inputs = np.concatenate([b["inputs"] for b in batches])
    labels = np.concatenate([b["labels"] for b in batches])
    for split, rows in ((task.data.val, slice(0, 21)), (task.data.test, slice(24, 34))):
        np.testing.assert_array_equal(inputs[rows, :split.tokens.shape[1]], split.tokens)
        np.testing.assert_array_equal(labels[rows], split.labels)
    per_process = [list(_task(i, 2, num_val=21, num_test=10).eval_batches()) for i in range(2)]
    for j, b in enumerate(batches):
        for k in b:
            np.testing.assert_array_equal(np.concatenate([p[j][k] for p in per_process]), b[k])


def test_eval_scores_test_split_by_depth_and_length_against_numpy():
    """A fake model that predicts the first expression token's digit value (or 0): the task's eval sums
    must give the accuracy numpy computes on each split and in each bucket (depths from the text oracle)."""
    import jax.numpy as jnp

    task = _task(num_val=21, num_test=37, length_buckets=3)

    def predict(inputs_BT):
        first = np.asarray(inputs_BT)[:, 1].astype(np.int32) - listops.DIGIT0
        return np.where((first >= 0) & (first < 10), first, 0)

    def model(inputs_BT, segment_ids_BT):
        return jnp.asarray(np.eye(10, dtype=np.float32)[predict(inputs_BT)] * 5.0), []

    totals = {}
    for b in task.eval_batches():
        for k, v in task.eval_sums(model, b).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    m = task.eval_metrics(totals)
    val, test = task.data.val, task.data.test
    hit_val, hit_test = predict(val.tokens) == val.labels, predict(test.tokens) == test.labels
    assert m["accuracy"] == pytest.approx(hit_val.mean()) and m["test/accuracy"] == pytest.approx(hit_test.mean())
    depths = np.array([listops.tree_shape(listops.decode(r))[0] for r in test.tokens])
    edges = listops.length_bucket_edges(test.lengths, 3)
    want = {f"depth_{d}": depths == d for d in np.unique(depths)}
    want.update({f"len_{lo}-{hi}": (test.lengths >= lo) & (test.lengths <= hi) for lo, hi in edges})
    got = {k.split("/")[1] for k in m if k.endswith("/examples")}
    assert got == set(want) and len(edges) == 3
    for name, rows in want.items():
        assert m[f"test/{name}/examples"] == rows.sum()
        assert m[f"test/{name}/accuracy"] == pytest.approx(hit_test[rows].mean())
    assert sum(m[f"test/depth_{d}/examples"] for d in np.unique(depths)) == 37


@pytest.mark.slow
def test_smoke_training_run(experiment_run):
    summary = experiment_run("experiments/configs/listops.py").summary  # the session's one listops smoke run
    final = summary["final"]
    assert np.isfinite(final["eval/loss"])
    assert 0.0 <= final["eval/accuracy"] <= 1.0
    assert summary["tokens_per_step"] == 8 * 32


@pytest.mark.parametrize("update, exc, needle", [
    (dict(data=dict(min_len=50, max_len=40)), DataError, "data.max_len=40"),
    (dict(data=dict(seq_len=30)), DataError, "data.seq_len=30"),
    (dict(data=dict(num_train=0)), DataError, "data.num_train=0"),
    (dict(data=dict(num_test=-1)), DataError, "data.num_test=-1"),
    (dict(data=dict(length_buckets=0)), ConfigError, "data.length_buckets=0"),
    (dict(data=dict(min_len=5000, max_len=6000, max_depth=3)), DataError, "data.min_len=5000"),
    (dict(model=dict(num_classes=5)), ConfigError, "model.num_classes=5"),
    (dict(model=dict(causal=True)), ConfigError, "model.causal=True"),
    (dict(model=dict(vocab_size=12)), ConfigError, "model.vocab_size=12"),
])
def test_bad_config_names_the_field(update, exc, needle, devices):
    c = get_config("smoke")
    for section, fields in update.items():
        c[section].update(fields)
    with pytest.raises(exc, match=needle.replace(".", r"\.")) as info:
        loop.setup(c, devices[:1])
    assert "\n" not in str(info.value)


def test_narrow_length_range_fails_with_data_error():
    with pytest.raises(DataError, match="data.min_len=1"):
        listops.generate(50, seed=0, min_len=1, max_len=1, max_draws=2000)


def test_config_variants():
    assert get_config("smoke").model.attention == "dense"
    for v in ("dense", "performer", "longformer"):
        c = get_config(f"variant={v}")
        assert c.model.attention == v and c.model.longformer.num_global == 1 and not c.model.causal
    d = get_config().data  # the learnable reduced setting (experiments/results/listops/SEARCH.md)
    assert (d.min_len, d.max_len, d.seq_len, d.max_depth, d.max_args, d.num_test) == (16, 31, 32, 3, 4, 2000)
    full = get_config("full")
    assert (full.data.min_len, full.data.max_len, full.data.seq_len) == (500, 2000, 2048)
    assert (full.data.max_depth, full.data.max_args) == (10, 10)
    assert (full.model.d_model, full.model.n_layers, full.train.num_steps) == (512, 4, 5000)
    with pytest.raises(ValueError, match="variant='sparse'"):
        get_config("variant=sparse")
