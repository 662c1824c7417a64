"""Studies: the lm_isoflop smoke study end to end (tuning, budgets, resumption, collection), printed commands, bad input."""
import json
import os
import subprocess
import sys

import pytest

from experiments.study.results import load_results
from experiments.study import Study, StudyError, expand, load_study, run_study, validate_study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small LM study for the runner's own tests (lm_tiny's embedded data, three sizes, two seeds).
SMALL_STUDY = """from experiments.study import Study


def size(d, layers, heads):
    return {"model.d_model": d, "model.n_layers": layers, "model.n_heads": heads, "model.n_kv_heads": heads,
            "model.d_ff": 4 * d}


def get_study(arg=None):
    return Study(name="small", config="experiments/configs/lm_tiny.py",
                 grid=[size(16, 1, 1), size(32, 1, 1), size(48, 2, 2)], names=["d16L1", "d32L1", "d48L2"],
                 seeds=[0, 1], budget={"mode": "flops", "value": 4e9},
                 overrides={"train.tensorboard": False, "sample.num_tokens": 0, "data.seq_len": 32,
                            "data.batch_size": 8, "data.eval_batches": 2}, evals_per_run=3)
"""


def small_study_file(tmp_path) -> str:
    path = tmp_path / "small_study.py"
    path.write_text(SMALL_STUDY)
    return str(path)


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    from trainer import loop

    study = load_study(small_study_file(tmp_path))
    study.grid, study.names, study.baseline, study.seeds = study.grid[:1], study.names[:1], None, [0]
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


@pytest.mark.slow
def test_print_commands_lists_one_train_command_per_run(tmp_path):
    spec = small_study_file(tmp_path)
    out = subprocess.run([sys.executable, "-m", "experiments.study", spec, "--out", str(tmp_path / "out"),
                          "--print-commands"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cmds = out.stdout.strip().splitlines()
    study = load_study(spec)
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
    """The ListOps study end to end on the smoke config: test-split metrics and their depth and length
    buckets in every record, the shortcuts scored on the test split, and the breakdown tables."""
    from data import listops

    study = load_study("experiments/studies/listops.py:smoke")
    run_study(study, tmp_path, log=lambda *_: None)
    records = load_results(tmp_path / "results.jsonl")
    assert sorted({r["point"] for r in records}) == ["dense", "longformer", "performer"]
    cfg = expand(study, tmp_path)[0].config
    data = listops.from_config(cfg.data)
    for r in records:
        f = r["final"]
        assert 0.0 <= f["eval/test/accuracy"] <= 1.0 and 0.0 <= f["eval/accuracy"] <= 1.0
        for kind in ("depth_", "len_"):
            counts = [v for k, v in f.items() if k.startswith("eval/test/" + kind) and k.endswith("/examples")]
            assert len(counts) >= 1 and sum(counts) == len(data.test) == cfg.data.num_test
    refs = json.loads((tmp_path / "references.json").read_text())["references"]
    want = listops.shortcut_accuracies(data.train, data.test)
    assert {k: r["eval/test/accuracy"] for k, r in refs.items()} == pytest.approx(want)
    report = (tmp_path / "report.md").read_text()
    assert "primary metric `eval/test/accuracy`; secondary: `eval/accuracy`. **This is the primary metric.**" in report
    depth_table = report.split("## Breakdown: test accuracy by tree depth")[1].split("## ")[0]
    assert all(f"`{p}`" in depth_table for p in ("dense", "performer", "longformer"))
    assert "reference `root_over_direct_args`" in depth_table and "| examples |" in depth_table
    assert "## Breakdown: test accuracy by expression length (tokens)" in report
    # The full study validates: its tuning metric is the validation split's, a metric it records.
    full = load_study("experiments/studies/listops.py")
    assert full.tuning.metric == "eval/accuracy" and full.primary == "eval/test/accuracy"
    with pytest.raises(StudyError, match="breakdowns"):
        validate_study(Study(name="b", config=study.config, grid=[{}], seeds=[0, 1], budget=study.budget,
                             breakdowns={"x": "eval/accuracy"}))


# ----------------------------------------------------------------- tuning stage, protocol, Slurm (fake training)

TUNE_LRS = [1e-3, 3e-3, 1e-2]
BEST_LR = {32: 3e-3, 64: 3e-2}  # d_model 64's optimum lies beyond the grid: the choice is its edge, 1e-2


def _fake_train(calls):
    """A train function with a known optimum: bpb = 1 + (log10 lr - log10 best)^2 + 0.01 seed."""
    import math

    def train(cfg, workdir):
        d, lr, steps = int(cfg.model.d_model), float(cfg.optim.learning_rate), int(cfg.train.num_steps)
        calls.append((d, lr, steps, int(cfg.seed)))
        v = 1.0 + (math.log10(lr) - math.log10(BEST_LR[d])) ** 2 + 0.01 * cfg.seed + 0.001 * d
        tokens = steps * 64
        final = {"eval/bpb": v, "eval/loss": v * 0.69}
        return {"steps": steps, "tokens": tokens, "params": 1000 * d, "flops_per_token": 6000.0 * d,
                "train_flops": 6000.0 * d * tokens, "wall_time_s": 0.0, "final": final, "best": final,
                "curve": [{"step": steps, **final}]}
    return train


def _tuned_study(**kw):
    from experiments.study.runner import Tuning

    s = dict(name="tuned", config="experiments/configs/lm_tiny.py:smoke",
             grid=[{"model.d_model": 32}, {"model.d_model": 64}], names=["d32", "d64"], seeds=[0, 1, 2],
             budget={"mode": "steps", "value": 3}, baseline="d32",
             tuning=Tuning(grid={"optim.learning_rate": TUNE_LRS}, budget={"mode": "steps", "value": 2}))
    s.update(kw)
    return Study(**s)


def test_tuning_stage_picks_the_known_best_flags_the_edge_and_resumes(tmp_path):
    calls = []
    study = _tuned_study()
    run_study(study, tmp_path, train_fn=_fake_train(calls), log=lambda *_: None)
    tuning = load_results(tmp_path / "tuning.jsonl")
    assert sorted((r["point"], r["tuning"]["optim.learning_rate"]) for r in tuning) == sorted(
        (p, lr) for p in ("d32", "d64") for lr in TUNE_LRS)
    assert all(r["seed"] == 0 and r["steps"] == 2 for r in tuning)  # one seed, the short budget
    main = [c for c in calls if c[2] == 3]
    assert sorted({(d, lr) for d, lr, _, _ in main}) == [(32, 3e-3), (64, 1e-2)]
    records = load_results(tmp_path / "results.jsonl")
    assert {r["point"]: r["tuned"]["optim.learning_rate"] for r in records} == {"d32": 3e-3, "d64": 1e-2}
    md = (tmp_path / "report.md").read_text()
    section = md.split("## Tuning stage\n", 1)[1].split("\n## ", 1)[0]
    assert "| `d32` | 1.2596 | 1.0320 | 1.3054 | `learning_rate=0.003` |" in section
    assert "`learning_rate=0.01` **at the grid edge (learning_rate)**" in section
    assert "1 point(s) chose a value at the edge of the grid (`d64`)" in section
    # Resumed: nothing trains again.
    calls.clear()
    run_study(study, tmp_path, train_fn=_fake_train(calls), log=lambda *_: None)
    assert calls == []


def test_untuned_study_says_so_and_fits_are_opt_in(tmp_path):
    study = _tuned_study(tuning=None)
    run_study(study, tmp_path, train_fn=_fake_train([]), log=lambda *_: None)
    md = (tmp_path / "report.md").read_text()
    assert "None: this study did not tune; every run uses the same learning rate, 0.003." in md
    assert "No scaling fit: this study declares none." in md
    assert "Protocol: primary metric `eval/bpb`; secondary: `eval/loss`. **This is the primary metric.**" in md
    sec = (tmp_path / "report_loss.md").read_text()
    assert "**This report is for a secondary metric**" in sec and "- (secondary) d64 " in sec


def test_family_wise_correction_counts_every_metric(tmp_path):
    import numpy as np

    from experiments.study import stats
    from experiments.study.report import write_study_reports
    from experiments.study.results import append_result

    rng = np.random.default_rng(0)
    for point, shift in (("a", 0.0), ("b", 0.01), ("c", 0.03)):
        for seed in range(4):
            v = 1.0 + shift + rng.normal(0, 0.01)
            append_result(tmp_path / "results.jsonl", {
                "study": "f", "point": point, "seed": seed, "overrides": {}, "data_order": "seed",
                "budget": {"mode": "steps", "value": 3}, "params": 1, "train_flops": 1.0, "tokens": 1,
                "final": {"eval/bpb": v, "eval/loss": v + rng.normal(0, 0.01)}, "curve": []})
    study = _tuned_study(grid=[{}, {}, {}], names=["a", "b", "c"], baseline="a", tuning=None,
                         metrics=("eval/bpb", "eval/loss"), correction="holm")
    write_study_reports(tmp_path, study)
    from experiments.study.report import analyze
    recs = load_results(tmp_path / "results.jsonl")
    raw = [c["p"] for m in ("eval/bpb", "eval/loss") for c in analyze(recs, baseline="a", metric=m)["comparisons"]]
    want = stats.correct_pvalues(raw, "holm")  # one family of 4 tests, not 2 families of 2
    got = []
    for f in ("report.md", "report_loss.md"):
        md = (tmp_path / f).read_text()
        assert "one family of 4 tests (every comparison and trend test of all 2 metrics" in md
        for line in md.splitlines():
            if line.startswith("| `b`") or line.startswith("| `c`"):
                got.append(float(line.split(" | ")[7]))
    np.testing.assert_allclose(got, want, rtol=0.05)  # the report prints 2 significant digits
    assert max(abs(g - w) for g, w in zip(got, stats.correct_pvalues(raw[:2], "holm").tolist() * 2)) > 0


def test_print_commands_writes_a_slurm_job_array(tmp_path, capsys):
    from experiments.study.runner import main

    spec = tmp_path / "s.py"
    spec.write_text("from experiments.study import Study\n"
                    "def get_study(arg=None):\n"
                    "    return Study(name='s', config='experiments/configs/lm_tiny.py:smoke', seeds=[0, 1],\n"
                    "                 grid=[{'model.d_model': 32}, {'model.d_model': 64}],\n"
                    "                 budget={'mode': 'flops', 'value': 1e10}, budgets=[1e10, 1e11])\n")
    assert main([str(spec), "--out", str(tmp_path / "o"), "--print-commands"]) == 0
    cmds = capsys.readouterr().out.strip().splitlines()
    assert len(cmds) == 2 * 2 * 2  # points x budgets x seeds, each with its own schedule length
    steps = [int(c.split("--config.train.num_steps=")[1].split()[0]) for c in cmds]
    assert steps[0] == steps[1] and steps[2] >= 10 * steps[0]  # 10x the budget: 10x the steps, own schedule
    body = (tmp_path / "o" / "slurm_array.sh").read_text()
    assert "#SBATCH --array=0-7" in body and 'eval "${CMDS[$SLURM_ARRAY_TASK_ID]}"' in body
    assert all(c in body or __import__("shlex").quote(c) in body for c in cmds)


@pytest.mark.slow
def test_lm_isoflop_smoke_study_tunes_runs_each_budget_and_reports(tmp_path):
    study = load_study("experiments/studies/lm_isoflop.py:smoke")
    run_study(study, tmp_path, log=lambda *_: None)
    tuning = load_results(tmp_path / "tuning.jsonl")
    assert len(tuning) == 2 * 2 and {r["steps"] for r in tuning} == {2}
    records = load_results(tmp_path / "results.jsonl")
    assert sorted(r["point"] for r in records) == ["d16L1@2e08", "d16L1@4e08", "d32L1@2e08", "d32L1@4e08"]
    steps = {r["point"]: r["steps"] for r in records}
    assert steps["d16L1@4e08"] >= 2 * steps["d16L1@2e08"]  # its own schedule: twice the budget, twice the steps
    assert all(r["budget"]["value"] in (2e8, 4e8) and r["train_flops"] <= r["budget"]["value"] for r in records)
    assert all(r["eval_batches"] and r["tuned"]["optim.learning_rate"] in (1e-3, 1e-2) for r in records)
    # FLOPs-matched: every run spends its budget to within one step; the bigger model trains fewer steps.
    for r in records:
        per_step = r["flops_per_token"] * r["tokens"] / r["steps"]
        assert r["budget"]["value"] - per_step < r["train_flops"] <= r["budget"]["value"]
    assert steps["d32L1@2e08"] < steps["d16L1@2e08"] and steps["d32L1@4e08"] < steps["d16L1@4e08"]
    assert all(len(r["curve"]) >= 1 and "eval/bpb" in r["final"] for r in records)
    md = (tmp_path / "report.md").read_text()
    assert "### IsoFLOP profiles" in md and md.count("| fewer than 3 sizes |") == 2
    assert "## Evaluation-set uncertainty" in md and "## Tuning stage" in md

    # A second invocation trains nothing, tuning included.
    lines = []
    run_study(study, tmp_path, log=lines.append, report=False)
    assert sum("training" in l for l in lines) == 0
    assert len(load_results(tmp_path / "results.jsonl")) == len(records)

    # Lost results.jsonl: the finished workdirs are collected again without training.
    os.remove(tmp_path / "results.jsonl")
    lines.clear()
    run_study(study, tmp_path, collect_only=True, log=lines.append, report=False)
    assert sum("training" in l for l in lines) == 0
    again = load_results(tmp_path / "results.jsonl")
    assert [(x["point"], x["seed"], x["final"]) for x in again] == [(x["point"], x["seed"], x["final"]) for x in records]


def test_tuning_can_optimise_a_metric_other_than_the_primary(tmp_path):
    from experiments.study.runner import Tuning

    def train(cfg, workdir):  # eval/loss is best where eval/bpb is worst: the choice tells which one was used
        summary = _fake_train([])(cfg, workdir)
        bpb = summary["final"]["eval/bpb"]
        summary["final"] = summary["best"] = {"eval/bpb": bpb, "eval/loss": 10.0 - bpb}
        return summary

    tuning = Tuning(grid={"optim.learning_rate": TUNE_LRS}, budget={"mode": "steps", "value": 2}, metric="eval/bpb")
    study = _tuned_study(metrics=("eval/loss", "eval/bpb"), primary="eval/loss", tuning=tuning)
    run_study(study, tmp_path, train_fn=train, log=lambda *_: None)
    records = load_results(tmp_path / "results.jsonl")
    assert {r["point"]: r["tuned"]["optim.learning_rate"] for r in records} == {"d32": 3e-3, "d64": 1e-2}
    assert "the value with the best final `eval/bpb`" in (tmp_path / "report.md").read_text()
    bad = _tuned_study(tuning=Tuning(grid={"optim.learning_rate": TUNE_LRS}, budget={"mode": "steps", "value": 2},
                                     metric="eval/accuracy"))
    with pytest.raises(StudyError, match="tuning.metric='eval/accuracy' is not one of metrics"):
        validate_study(bad)


def test_reference_baselines_are_computed_once_and_judged_in_the_report(tmp_path, monkeypatch):
    from experiments.study import report

    monkeypatch.setattr(report, "_save", lambda draw, path: None)  # the text is under test, not the plots
    calls = []

    def refs(config):
        calls.append(int(config.model.d_model))
        return {"shortcut": {"how": "a rule", "eval/bpb": 1.2}, "chance": {"how": "uniform", "eval/bpb": 8.0}}

    study = _tuned_study(references=refs, metrics=("eval/bpb", "eval/loss"))
    run_study(study, tmp_path, train_fn=_fake_train([]), log=lambda *_: None)
    run_study(study, tmp_path, train_fn=_fake_train([]), log=lambda *_: None, report=False)
    assert calls == [32]  # once, from the first main run's config
    md = (tmp_path / "report.md").read_text()
    section = md.split("## Reference baselines (no training)\n", 1)[1].split("\n## ", 1)[0]
    assert "| `shortcut` | 1.2000 | a rule |" in section and "| `chance` | 8.0000 | uniform |" in section
    # d32 (tuned to its optimum: 1.032 + 0.01 seed) beats the best rule; d64 (its LR at the grid edge: ~1.30) loses.
    assert "- `d32`: 1.0420 [1.0172, 1.0668] against the best baseline `shortcut` (1.2000, difference -0.1580): " \
           "**beats it**" in section
    assert "- `d64`: " in section and "**worse than it**" in section.split("- `d64`: ", 1)[1]
    assert "Reference baselines" not in (tmp_path / "report_loss.md").read_text()  # no rule scored on eval/loss
    with pytest.raises(StudyError, match="references=3 must be a function of the config"):
        validate_study(_tuned_study(references=3))
