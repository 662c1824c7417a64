"""ListOps: nested list operations on digits, the Long Range Arena version.

ListOps (Nangia & Bowman 2018) asks for the value of a nested prefix
expression such as

    [MAX 2 9 [MIN 4 7 ] 0 ]          -> 9

over the operators MIN, MAX, MED (median) and SM (sum modulo 10) on the
digits 0-9; the answer is a digit, so it is a 10-way classification.
Long Range Arena (Tay et al. 2021, sec. 3.1) made it a long-sequence task by
keeping only expressions of 500-2000 tokens. This module follows the LRA
generator (google-research/long-range-arena, `lra_benchmarks/data/listops.py`):

- a node at depth d < max_depth (the root has depth 1) is an operator with
  probability `OPERATOR_P` = 0.25 (LRA's VALUE_P), else a uniform digit; a
  node at max_depth is always a digit, so the tree depth (a lone digit has
  depth 1) is at most max_depth (LRA: 10);
- an operator draws its argument count uniformly from 2..max_args (LRA: 10)
  and its operator uniformly from the four;
- MED is the median truncated to an integer (`int(np.median(...))`: the
  median of 1 and 2 is 1), SM is the sum modulo 10;
- expressions are drawn until one has a token count in the range, and
  duplicates are dropped (LRA kept a set of trees). Differences from LRA:
  the range is inclusive (LRA kept min < length < max) and the draws come
  from a seeded `numpy.random.Generator`.

The length of an expression is its number of tokens in LRA's tokenization:
`[MIN`, `[MAX`, `[MED`, `[SM`, `]` and the ten digits.

Vocabulary (ids):

    0      PAD    padding (segment id 0)
    1      CLS    prepended to every example; `pooling="cls"` reads it
    2..11  the digits 0..9 (id = digit + 2)
    12     ]
    13     [MIN
    14     [MAX
    15     [MED
    16     [SM

`VOCAB_SIZE` = 17. A data set row is CLS, the expression, then PAD up to
max_len + 1. Tokens are stored as uint8 (the LRA-size training set, 96K x
2001, would take 770 MB as int32); the task turns rows into int32 batches.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from nn.errors import DataError

PAD, CLS = 0, 1
DIGIT0 = 2  # id of the digit 0; digit k has id DIGIT0 + k
END = 12
MIN, MAX, MED, SM = 13, 14, 15, 16
OPERATORS = (MIN, MAX, MED, SM)
VOCAB_SIZE = 17
NUM_CLASSES = 10

OP_NAMES = {MIN: "[MIN", MAX: "[MAX", MED: "[MED", SM: "[SM"}
ID_TO_TOKEN = {PAD: "<pad>", CLS: "<cls>", END: "]", **OP_NAMES, **{DIGIT0 + k: str(k) for k in range(10)}}
TOKEN_TO_ID = {t: i for i, t in ID_TO_TOKEN.items()}

OPERATOR_P = 0.25  # LRA's VALUE_P: a node below max_depth is an operator when u <= 0.25


# --------------------------------------------------------------------------
# Tokens <-> text
# --------------------------------------------------------------------------

def encode(text: str) -> np.ndarray:
    """'[MAX 2 9 ]' -> int32 ids (no CLS, no padding)."""
    try:
        return np.array([TOKEN_TO_ID[t] for t in text.split()], np.int32)
    except KeyError as e:
        raise DataError(f"listops: unknown token {e.args[0]!r}") from None


def decode(ids) -> str:
    """Ids -> LRA text; PAD and CLS are dropped."""
    return " ".join(ID_TO_TOKEN[int(i)] for i in ids if int(i) not in (PAD, CLS))


# --------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------

class _TooLong(Exception):
    pass


def _median(args: list[int]) -> int:
    s = sorted(args)
    n = len(s)
    # int(np.median(...)) as in LRA: the mean of the middle two, truncated.
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2


def _apply(op: int, args: list[int]) -> int:
    if op == MIN:
        return min(args)
    if op == MAX:
        return max(args)
    if op == MED:
        return _median(args)
    return sum(args) % 10


def sample_expression(u: list[float], pos: int, *, max_depth: int, max_args: int, max_len: int):
    """One expression from the uniforms u[pos:]: (token ids, value, next pos).

    Each node consumes exactly one uniform: u <= OPERATOR_P makes an
    operator, and u / OPERATOR_P (uniform given that branch) picks the
    operator and argument count; otherwise (u - OPERATOR_P) / (1 - OPERATOR_P)
    picks the digit. A node emits at least one token, so an expression uses
    at most max_len + 1 uniforms before `_TooLong` is raised.

    Stopping at max_len only skips work on a tree that would be rejected
    anyway, so the accepted trees have the distribution of the full LRA
    sampler conditioned on the length range.
    """
    out: list[int] = []
    n_choices = 4 * (max_args - 1)  # (operator, argument count) pairs
    q = OPERATOR_P

    def node(depth: int) -> int:
        nonlocal pos
        x = u[pos]
        pos += 1
        if depth < max_depth and x <= q:
            k = min(int(x / q * n_choices), n_choices - 1)
            op = OPERATORS[k % 4]
            n_args = 2 + k // 4  # uniform on 2..max_args
            out.append(op)
            args = [node(depth + 1) for _ in range(n_args)]
            out.append(END)
            if len(out) > max_len:
                raise _TooLong
            return _apply(op, args)
        k = int((x - q) / (1.0 - q) * 10) if depth < max_depth else int(x * 10)
        out.append(DIGIT0 + k)
        if len(out) > max_len:
            raise _TooLong
        return k

    try:
        value = node(1)
    except _TooLong:
        return None, None, pos
    return out, value, pos


def max_possible_length(max_depth: int, max_args: int) -> int:
    """Tokens of the largest tree: every node above max_depth an operator with max_args arguments."""
    n = 1
    for _ in range(max_depth - 1):
        n = 2 + max_args * n
    return n


@dataclass(frozen=True)
class ListOpsSplit:
    tokens: np.ndarray   # uint8 [n, max_len + 1]: CLS, expression, PAD
    lengths: np.ndarray  # int32 [n]: expression tokens (CLS not counted)
    labels: np.ndarray   # int32 [n]: the value, 0..9
    depths: np.ndarray   # int32 [n]: tree depth (a lone digit 1, an operator over digits 2, ...)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, sl) -> "ListOpsSplit":
        return ListOpsSplit(self.tokens[sl], self.lengths[sl], self.labels[sl], self.depths[sl])


@dataclass(frozen=True)
class ListOpsData:
    train: ListOpsSplit
    val: ListOpsSplit    # model selection (the tuning stage)
    test: ListOpsSplit   # the final comparison; empty when num_test is 0


def depths_of(tokens: np.ndarray) -> np.ndarray:
    """Tree depth of every row (CLS, expression, PAD): the deepest operator nesting, plus one for its digits."""
    t = tokens.astype(np.int32)
    nest = np.cumsum(np.isin(t, OPERATORS).astype(np.int32) - (t == END), axis=1)  # an operator counts itself
    return (nest.max(axis=1) + 1).astype(np.int32)


def _positive_int(name: str, v, minimum: int = 1) -> None:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < minimum:
        raise DataError(f"data.{name}={v!r} must be an integer >= {minimum}")


def check_params(*, num_train: int, num_val: int, min_len: int, max_len: int, max_depth: int, max_args: int,
                 num_test: int = 0) -> None:
    for name, v in (("num_train", num_train), ("num_val", num_val), ("min_len", min_len), ("max_len", max_len),
                    ("max_depth", max_depth)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise DataError(f"data.{name}={v!r} must be a positive integer")
    _positive_int("num_test", num_test, minimum=0)
    if not isinstance(max_args, (int, np.integer)) or max_args < 2:
        raise DataError(f"data.max_args={max_args!r} must be an integer >= 2")
    if max_len < min_len:
        raise DataError(f"data.max_len={max_len} is smaller than data.min_len={min_len}")
    longest = max_possible_length(max_depth, max_args)
    if min_len > longest:
        raise DataError(
            f"data.min_len={min_len} exceeds the longest possible expression ({longest} tokens at "
            f"data.max_depth={max_depth}, data.max_args={max_args})"
        )


def generate(n: int, *, seed: int, min_len: int, max_len: int, max_depth: int = 10, max_args: int = 10,
             max_draws: int | None = None) -> ListOpsSplit:
    """`n` distinct expressions with min_len <= length <= max_len, by rejection sampling.

    Deterministic in all arguments. Raises DataError when the range is too
    narrow to fill (after `max_draws` draws, default 1000 per example).
    """
    check_params(num_train=n, num_val=1, min_len=min_len, max_len=max_len, max_depth=max_depth, max_args=max_args)
    rng = np.random.default_rng(seed)
    block = max(1 << 16, 4 * (max_len + 1))
    u, pos = rng.random(block).tolist(), 0
    max_draws = max_draws or 1000 * n + 10_000
    tokens = np.zeros((n, max_len + 1), np.uint8)
    tokens[:, 0] = CLS
    lengths = np.zeros((n,), np.int32)
    labels = np.zeros((n,), np.int32)
    seen: set[bytes] = set()
    count = draws = 0
    while count < n:
        draws += 1
        if draws > max_draws:
            raise DataError(
                f"listops: found only {count} of {n} distinct expressions with data.min_len={min_len} <= length <= "
                f"data.max_len={max_len} in {max_draws} draws; widen the length range"
            )
        if len(u) - pos <= max_len + 1:  # one expression uses at most max_len + 1 uniforms
            u, pos = u[pos:] + rng.random(block).tolist(), 0
        expr, value, pos = sample_expression(u, pos, max_depth=max_depth, max_args=max_args, max_len=max_len)
        if expr is None or len(expr) < min_len:
            continue
        key = bytes(expr)
        if key in seen:
            continue
        seen.add(key)
        tokens[count, 1:1 + len(expr)] = expr
        lengths[count] = len(expr)
        labels[count] = value
        count += 1
    depths = depths_of(tokens)
    for a in (tokens, lengths, labels, depths):
        a.setflags(write=False)
    return ListOpsSplit(tokens, lengths, labels, depths)


@functools.lru_cache(maxsize=4)
def load(*, seed: int, num_train: int, num_val: int, min_len: int, max_len: int, max_depth: int = 10,
         max_args: int = 10, num_test: int = 0) -> ListOpsData:
    """Fixed train, validation and test sets (disjoint: drawn as one pool of distinct expressions).

    The pool is train, then validation, then test, so adding a test split leaves the other two as
    they were. Cached per argument tuple, so every task built in a process (and every test) shares
    one copy; the arrays are read-only.
    """
    check_params(num_train=num_train, num_val=num_val, min_len=min_len, max_len=max_len,
                 max_depth=max_depth, max_args=max_args, num_test=num_test)
    pool = generate(num_train + num_val + num_test, seed=seed, min_len=min_len, max_len=max_len,
                    max_depth=max_depth, max_args=max_args)
    return ListOpsData(train=pool.take(slice(0, num_train)), val=pool.take(slice(num_train, num_train + num_val)),
                       test=pool.take(slice(num_train + num_val, None)))


def from_config(data_cfg) -> ListOpsData:
    d = data_cfg
    return load(seed=int(d.generator_seed), num_train=int(d.num_train), num_val=int(d.num_val),
                min_len=int(d.min_len), max_len=int(d.max_len), max_depth=int(d.max_depth),
                max_args=int(d.max_args), num_test=int(d.get("num_test", 0)))


# --------------------------------------------------------------------------
# Buckets: accuracy by tree depth and by expression length
# --------------------------------------------------------------------------

def length_bucket_edges(lengths: np.ndarray, num_buckets: int) -> list[tuple[int, int]]:
    """Up to `num_buckets` inclusive length ranges with about equal counts of `lengths` (quantiles).

    Lengths pile up near data.min_len (most trees are small), so equal-width ranges would leave
    nearly every example in the first; a range is never split inside one length, so repeated
    quantiles give fewer buckets.
    """
    _positive_int("length_buckets", num_buckets)
    if len(lengths) == 0:
        return []
    qs = np.quantile(lengths, np.arange(1, num_buckets) / num_buckets, method="lower")
    uppers = sorted({int(q) for q in qs} | {int(lengths.max())})
    edges, lo = [], int(lengths.min())
    for hi in uppers:
        if hi >= lo:
            edges.append((lo, hi))
            lo = hi + 1
    return edges


def buckets(split: ListOpsSplit, num_length_buckets: int) -> dict[str, tuple[list[str], np.ndarray]]:
    """{"depth": (names, ids), "length": (names, ids)}: each row's bucket index into names.

    Depth buckets are the depths present (`depth_3`); length buckets the quantile ranges of
    `length_bucket_edges` (`len_12-14`). Computed on the split itself, so the test split's buckets
    are fixed by the data (data.generator_seed and the sizes), the same for every run on it.
    """
    ds = sorted({int(d) for d in split.depths})
    depth_ids = np.searchsorted(np.array(ds, np.int32), split.depths).astype(np.int32)
    edges = length_bucket_edges(split.lengths, num_length_buckets)
    uppers = np.array([hi for _, hi in edges], np.int32)
    length_ids = np.searchsorted(uppers, split.lengths).astype(np.int32)  # first range whose top >= length
    return {"depth": ([f"depth_{d}" for d in ds], depth_ids),
            "length": ([f"len_{lo}-{hi}" for lo, hi in edges], length_ids)}


# --------------------------------------------------------------------------
# Shortcut baselines: rules that read the top of the tree only
# --------------------------------------------------------------------------

SHORTCUTS = {
    "majority": "the most frequent training label, whatever the input",
    "root_operator": "the most frequent training label among training expressions with the same root operator",
    "root_over_direct_args": "the root operator applied to its direct digit arguments, nested lists ignored "
                             "(the root-operator rule when the root has no direct digit)",
}


def root_and_direct_digits(row) -> tuple[int | None, list[int]]:
    """(root operator id, the digits that are its direct arguments) of a row (CLS, expression, PAD).

    A lone digit has no operator: (None, [that digit]).
    """
    depth, root, digits = 0, None, []
    for t in (int(x) for x in row):
        if t in (PAD, CLS):
            continue
        if t in OPERATORS:
            depth += 1
            if root is None:
                root = t
        elif t == END:
            depth -= 1
        elif depth <= 1:
            digits.append(t - DIGIT0)
    return root, digits


def shortcut_predictions(train: ListOpsSplit, split: ListOpsSplit) -> dict[str, np.ndarray]:
    """Each shortcut's predicted class for every example of `split`; the learned parts come from `train`."""
    majority = int(np.bincount(train.labels, minlength=NUM_CLASSES).argmax())
    by_op: dict[int | None, np.ndarray] = {}
    for row, y in zip(train.tokens, train.labels):
        op = root_and_direct_digits(row[:2])[0]  # the root is the first token after CLS
        by_op.setdefault(op, np.zeros(NUM_CLASSES, np.int64))[y] += 1
    op_class = {op: int(c.argmax()) for op, c in by_op.items()}
    out = {name: np.zeros(len(split), np.int32) for name in SHORTCUTS}
    for i, row in enumerate(split.tokens):
        op, digits = root_and_direct_digits(row)
        out["majority"][i] = majority
        out["root_operator"][i] = op_class.get(op, majority)
        if op is None:
            out["root_over_direct_args"][i] = digits[0]
        elif digits:
            out["root_over_direct_args"][i] = _apply(op, digits)
        else:
            out["root_over_direct_args"][i] = op_class.get(op, majority)
    return out


def shortcut_accuracies(train: ListOpsSplit, split: ListOpsSplit) -> dict[str, float]:
    """Accuracy of each shortcut on `split` (rules fitted on `train`)."""
    return {name: float(np.mean(pred == split.labels)) for name, pred in shortcut_predictions(train, split).items()}


def accuracy_by_bucket(pred: np.ndarray, split: ListOpsSplit, num_length_buckets: int) -> dict[str, float]:
    """{bucket name: accuracy of `pred` on the rows of `split` in it}, for the buckets of `buckets`."""
    correct = np.asarray(pred) == split.labels
    out = {}
    for names, ids in buckets(split, num_length_buckets).values():
        for j, name in enumerate(names):
            out[name] = float(correct[ids == j].mean())
    return out


# --------------------------------------------------------------------------
# Independent evaluator (the tests' oracle; shares no code with the sampler)
# --------------------------------------------------------------------------

def evaluate_text(text: str) -> int:
    """Value of an expression in LRA text form, by a shift-reduce stack over the tokens."""
    stack: list[list] = []  # open frames: [operator name, arguments...]
    result = None
    for tok in text.split():
        if tok.startswith("["):
            stack.append([tok[1:]])
        elif tok == "]":
            name, *args = stack.pop()
            if not args:
                raise ValueError(f"operator {name} with no arguments")
            if name == "MIN":
                v = min(args)
            elif name == "MAX":
                v = max(args)
            elif name == "MED":
                v = int(np.median(args))
            elif name == "SM":
                v = int(np.sum(args)) % 10
            else:
                raise ValueError(f"unknown operator {name!r}")
            if stack:
                stack[-1].append(v)
            else:
                result = v
        else:
            if stack:
                stack[-1].append(int(tok))
            else:
                result = int(tok)
    if stack or result is None:
        raise ValueError("unbalanced expression")
    return result


def tree_shape(text: str) -> tuple[int, int, int]:
    """(depth, fewest arguments, most arguments) of an expression; a lone digit has depth 1 and 0 arguments."""
    depth = 1
    counts: list[int] = []  # arguments seen so far by each open operator
    arities: list[int] = []
    for tok in text.split():
        if tok.startswith("["):
            if counts:
                counts[-1] += 1
            counts.append(0)
            depth = max(depth, len(counts) + 1)  # the depth of this operator's arguments
        elif tok == "]":
            arities.append(counts.pop())
        elif counts:
            counts[-1] += 1
    return depth, min(arities, default=0), max(arities, default=0)
