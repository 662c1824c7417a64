"""Which way a metric improves: one rule for the run summary's `best` and the study reports.

Two copies of this rule once disagreed (the loop took the minimum of
`eval/moe/load_entropy`, the report called higher better), so a metric's
direction is decided here only: `trainer/loop.py` (`best_of`) and
`experiments/study/report.py` both import it.
"""
from __future__ import annotations

import re

# Judged on the last path component (`eval/moe/load_entropy` -> `load_entropy`), a per-layer
# suffix set aside (`train/moe/load_entropy/layer_2`, tasks/base.py's collect_aux).
HIGHER_SUFFIXES = ("accuracy", "entropy")   # accuracies (top-1, top-5, zero-shot), normalised load entropy
HIGHER_PREFIXES = ("top", "r@")              # top-k scores, R@k
HIGHER_PARTS = ("recall",)                   # retrieval recall@k (`i2t_recall_at_1`)


def higher_is_better(metric_name: str) -> bool:
    """True for accuracies, recalls and entropies; False for losses, bpb, errors and fractions.

    Every other metric (losses, `bpb`, `zeroshot_shape_heldout_error`,
    `moe/max_fraction`, `moe/balance`) improves downwards.
    """
    last = re.sub(r"/layer_\d+$", "", metric_name).rsplit("/", 1)[-1]
    return (last.endswith(HIGHER_SUFFIXES) or last.startswith(HIGHER_PREFIXES)
            or any(part in last for part in HIGHER_PARTS))
