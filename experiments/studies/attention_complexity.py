"""Attention complexity study: dense vs Performer vs Longformer cost against sequence length.

    python -m experiments.studies.attention_complexity            # 512 .. 32K tokens, ~5 minutes on 2 cores
    python -m experiments.studies.attention_complexity --lengths 512,1024,2048

Not a training study: it measures time and planned memory of one attention
layer per length with `benchmarks/attention.py` and writes the table, the
fitted exponents and the log-log plot to
`experiments/results/attention_complexity/` (the committed figures are in
the README). The claim under test: dense O(n^2 d), Performer O(n M d),
Longformer O(n W d).
"""
import os
import sys

from benchmarks import attention as attention_benchmark

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "attention_complexity")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:
        argv += ["--out", OUT]
    attention_benchmark.main(argv)


if __name__ == "__main__":
    main()
