"""Append-only ``results.jsonl`` files: one JSON object per finished training run.

Schema (keys beyond the required ones are optional for loading):
``study, point, overrides, seed, budget{mode, value}, steps, tokens, params,
flops_per_token, train_flops, wall_time_s, final{metric: value},
best{metric: value}, curve[{step, metric: value}], data_order ("seed"|"independent")``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

__all__ = ["REQUIRED_KEYS", "append_result", "load_results", "results_dir_cli"]

REQUIRED_KEYS = ("point", "seed", "final")


def _to_json(obj):
    # numpy scalars/arrays (metrics from jax/numpy) are not JSON-serializable as such.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def append_result(path, record: dict) -> None:
    """Append ``record`` as one line and fsync, so a crash never loses a finished run.

    The whole line goes out in a single write in append mode, so concurrent
    writers on a local filesystem do not interleave within a line.
    """
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"record is missing required keys {missing}")
    line = json.dumps(record, default=_to_json) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _check(rec) -> str | None:
    if not isinstance(rec, dict):
        return f"not a JSON object (got {type(rec).__name__})"
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        return f"missing required keys {missing}"
    if not isinstance(rec["point"], str):
        return f"'point' is not a string (got {type(rec['point']).__name__})"
    if isinstance(rec["seed"], bool) or not isinstance(rec["seed"], int):
        return f"'seed' is not an integer (got {rec['seed']!r})"
    if not isinstance(rec["final"], dict):
        return f"'final' is not an object (got {type(rec['final']).__name__})"
    return None


def load_results(path, return_errors: bool = False):
    """Read every valid record of a results.jsonl file, in file order.

    Malformed lines (not JSON, not an object, missing or mistyped ``point``,
    ``seed``, ``final``) are skipped, reported in one ``UserWarning`` naming
    their 1-based line numbers, and returned when ``return_errors=True``:
    ``(records, [(lineno, reason), ...])``. Blank lines are ignored silently.
    A missing file raises FileNotFoundError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    records, errors = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append((lineno, f"invalid JSON ({e.msg} at column {e.colno})"))
                continue
            reason = _check(rec)
            if reason:
                errors.append((lineno, reason))
                continue
            records.append(rec)
    if errors:
        detail = "; ".join(f"line {n}: {r}" for n, r in errors)
        warnings.warn(f"{path}: skipped {len(errors)} malformed line(s): {detail}", UserWarning, stacklevel=2)
    if return_errors:
        return records, errors
    return records


def study_records(results_dir) -> tuple[Path, list[dict]]:
    """(path, records) of a study's results.jsonl; a StudyError naming the path when it is missing."""
    from nn.errors import StudyError

    path = Path(results_dir) / "results.jsonl"
    if not path.exists():
        raise StudyError(f"{path} does not exist: run the study first")
    return path, load_results(path)


def results_dir_cli(argv, prog: str, write) -> int:
    """`python -m PROG RESULTS_DIR`: print `write(RESULTS_DIR)`; bad input is one line on stderr and exit 2."""
    import sys

    from nn.errors import InputError

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m {prog} RESULTS_DIR", file=sys.stderr)
        return 2
    try:
        print(write(argv[0]))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
