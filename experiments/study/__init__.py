"""The study library: run a study's grid over seeds, then report with statistics.

    python -m experiments.study experiments/studies/<name>.py --out experiments/results/<name>
    python -m experiments.study.report experiments/results/<name>

runner.py   Study definitions, the grid expansion, budgets, resumable execution, --print-commands
results.py  results.jsonl: one record per finished run
stats.py    means, t-intervals, paired/Welch tests, Holm correction, budgets
fits.py     power-law fits and the compute frontier
scaling.py, scaling_report.py   Chinchilla isoFLOP and parametric fits, and their report section
analysis.py per-point summaries, comparisons, trends, family-wise correction; runs the fits
report.py   renders an analysis as markdown (tables, verdict lines) and its command line
plots.py    curves and metric-vs-compute plots
"""
from experiments.study.runner import (Study, expand, grid_product, load_config, load_study, point_name, run_study,
                                      validate_study)
from nn.errors import StudyError

__all__ = ["Study", "StudyError", "expand", "grid_product", "load_config", "load_study", "point_name", "run_study",
           "validate_study"]
