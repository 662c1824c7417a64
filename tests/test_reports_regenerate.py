"""Every committed study report regenerates from its results.jsonl to the same text.

The runner is asked to collect (every run is already in results.jsonl, so
nothing trains) and rewrite its reports into a copy of the results folder.
Tables, means, intervals, p-values and corrections must match the committed
reports exactly. The one exception is the "Scaling fit" section's numbers:
they come from iterative optimizers (scipy's L-BFGS-B and curve_fit, refitted
in bootstraps), which can land a few ulps apart on another CPU; there every
line's words must match exactly and its numbers within 2% (a verdict such as
"FAILS at 2 of 5 sizes" is words and counts, so it must still match).
Fits are opt-in per study (docs/studies.md).

A redesigned study's old results are deleted when the redesign's full run
lands, so every committed report must come from the current study file.
"""
import pathlib
import re
import shutil

import pytest

from experiments.study import load_study, run_study

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
STUDIES = sorted(d.name for d in RESULTS.iterdir()
                 if (d / "results.jsonl").exists() and (ROOT / "experiments" / "studies" / f"{d.name}.py").exists())
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?")
FIT_NUMBERS_RTOL = 0.02


def _sections(lines: list[str]) -> list[tuple[bool, str]]:
    """(inside the "## Scaling fit" section, line) for every line."""
    out, fit = [], False
    for line in lines:
        if line.startswith("## "):
            fit = line == "## Scaling fit"
        out.append((fit, line))
    return out


def _same(got: str, want: str, fit: bool) -> bool:
    if not fit or got == want:
        return got == want
    if NUMBER.sub("#", got) != NUMBER.sub("#", want):
        return False
    a, b = ([float(x) for x in NUMBER.findall(t)] for t in (got, want))
    return all(abs(x - y) <= FIT_NUMBERS_RTOL * max(abs(x), abs(y)) or abs(x - y) < 1e-9 for x, y in zip(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_committed_report_regenerates(name, tmp_path, monkeypatch):
    from experiments.study import report

    monkeypatch.setattr(report, "_save", lambda draw, path: None)  # the text is under test, not the plots
    out = tmp_path / name
    shutil.copytree(RESULTS / name, out)
    committed = {p.name: p.read_text() for p in (RESULTS / name).glob("report*.md")}
    assert committed, f"{name} has results.jsonl but no report"
    for p in out.glob("report*.md"):
        p.unlink()
    run_study(load_study(str(ROOT / "experiments" / "studies" / f"{name}.py")), out, collect_only=True,
              log=lambda *_: None)
    for file, text in committed.items():
        got, want = _sections((out / file).read_text().splitlines()), _sections(text.splitlines())
        assert len(got) == len(want), f"{name}/{file}: {len(got)} lines, committed {len(want)}"
        for (fit, g), (_, w) in zip(got, want):
            assert _same(g, w, fit), f"{name}/{file} changed:\n  now:       {g}\n  committed: {w}"


def test_the_regeneration_covers_every_study_with_results():
    assert {"clip_batch_steps", "clip_negatives", "clip_temperature", "listops", "lm_isoflop",
            "moe_collapse", "moe_vs_dense"} <= set(STUDIES)
