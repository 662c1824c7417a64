"""Studies: the smoke study end to end, resumption, collection, printed commands, bad input."""
import json
import os
import subprocess
import sys

import pytest

from experiments.study.results import load_results
from experiments.study import Study, StudyError, expand, load_study, run_study, validate_study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "experiments/studies/lm_scaling.py:smoke"


@pytest.mark.slow
def test_smoke_study_runs_resumes_and_collects(tmp_path):
    study = load_study(SMOKE)
    out = tmp_path / "study"
    lines = []
    run_study(study, out, log=lines.append)
    records = load_results(out / "results.jsonl")
    assert len(records) == len(study.grid) * len(study.seeds)
    assert {r["point"] for r in records} == set(study.point_names())
    r = records[0]
    assert r["budget"] == study.budget and r["data_order"] == "seed"
    # FLOPs-matched: every run spends the budget to within one step.
    for rec in records:
        assert study.budget["value"] - rec["flops_per_token"] * rec["tokens"] / rec["steps"] < rec["train_flops"] <= study.budget["value"]
    assert len({rec["steps"] for rec in records}) == len(study.grid)  # bigger models train fewer steps
    assert all(len(rec["curve"]) >= 2 and "eval/bpb" in rec["final"] for rec in records)
    report = (out / "report.md").read_text()
    assert "d16L1" in report and "p (corrected)" in report
    assert (out / "metric_vs_compute.png").stat().st_size > 0

    # A second invocation trains nothing.
    lines.clear()
    run_study(study, out, log=lines.append, report=False)
    assert sum("training" in l for l in lines) == 0
    assert len(load_results(out / "results.jsonl")) == len(records)

    # Lost results.jsonl: finished workdirs are collected again without training.
    os.remove(out / "results.jsonl")
    lines.clear()
    run_study(study, out, collect_only=True, log=lines.append, report=False)
    assert sum("training" in l for l in lines) == 0
    again = load_results(out / "results.jsonl")
    assert [(x["point"], x["seed"], x["final"]) for x in again] == [(x["point"], x["seed"], x["final"]) for x in records]


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    from trainer import loop

    study = load_study(SMOKE)
    study.grid, study.names, study.baseline = study.grid[:1], study.names[:1], None
    out = tmp_path / "study"
    run = expand(study, out)[0]
    half = run.config.copy_and_resolve_references()
    half.train.stop_at = run.steps // 2
    loop.train_and_evaluate(half, str(run.workdir))  # "interrupted" halfway
    run_study(study, out, report=False, log=lambda *_: None)
    with open(run.workdir / "metrics.jsonl") as f:
        steps = [json.loads(l)["step"] for l in f if "train/loss" in l]
    assert steps == sorted(set(steps)), "a step was trained twice after resuming"
    rec = [r for r in load_results(out / "results.jsonl") if r["seed"] == run.seed][0]
    assert rec["steps"] == run.steps


def test_print_commands_lists_one_train_command_per_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.study", SMOKE, "--out", str(tmp_path),
                          "--print-commands"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cmds = out.stdout.strip().splitlines()
    study = load_study(SMOKE)
    assert len(cmds) == len(study.grid) * len(study.seeds)
    assert all("train.py --config experiments/configs/lm_tiny.py --workdir" in c and "--config.train.num_steps=" in c
               for c in cmds)


def base_study(**kw):
    s = dict(name="t", config="experiments/configs/lm_tiny.py", grid=[{"model.d_model": 64}], seeds=[0, 1],
             budget={"mode": "steps", "value": 3})
    s.update(kw)
    return Study(**s)


@pytest.mark.parametrize("kw,match", [
    (dict(grid=[]), "has an empty grid"),
    (dict(seeds=[0]), "has 1 seed\\(s\\): comparisons with confidence intervals need at least 2"),
    (dict(budget={"mode": "hours", "value": 1}), "budget.mode='hours'"),
    (dict(baseline="nope"), "baseline='nope' is not a grid point"),
])
def test_bad_study_definitions(kw, match):
    with pytest.raises(StudyError, match=match):
        validate_study(base_study(**kw))


def test_unknown_config_field_is_named(tmp_path):
    with pytest.raises(StudyError, match="grid point 0 .* names unknown config field 'model.d_modle'"):
        expand(base_study(grid=[{"model.d_modle": 64}]), tmp_path)


def test_budget_too_small_for_one_step_is_named(tmp_path):
    with pytest.raises(StudyError, match="flops"):
        expand(base_study(budget={"mode": "flops", "value": 10.0}), tmp_path)


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad_study.py"
    bad.write_text(
        "from experiments.study import Study\n"
        "def get_study(arg=None):\n"
        "    return Study(name='bad', config='experiments/configs/lm_tiny.py', grid=[], seeds=[0, 1],\n"
        "                 budget={'mode': 'steps', 'value': 2})\n"
    )
    out = subprocess.run([sys.executable, "-m", "experiments.study", str(bad), "--out", str(tmp_path / "o")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: study 'bad' has an empty grid"


@pytest.mark.slow
def test_listops_smoke_study_compares_attention_types(tmp_path):
    study = load_study("experiments/studies/listops.py:smoke")
    run_study(study, tmp_path, log=lambda *_: None)
    records = load_results(tmp_path / "results.jsonl")
    assert sorted({r["point"] for r in records}) == ["dense", "longformer", "performer"]
    assert all(0.0 <= r["final"]["eval/accuracy"] <= 1.0 for r in records)
    assert "performer" in (tmp_path / "report.md").read_text()
