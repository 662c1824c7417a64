"""Counting is the task's: study budgets use the task's own tokens/FLOPs per step; one metric-direction rule.

A FLOPs-matched CLIP study once counted only the text tower (the runner
recomputed batch x seq_len with `models/flops.py`), and the loop and the
report disagreed on which way `load_entropy` improves.
"""
import dataclasses
import glob
import os
import re

import pytest

from experiments.study import expand, load_study
from tasks import CLIPTask, LMTask, get_task
from trainer.metrics import higher_is_better

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flops_budget_runs(spec: str, steps_of_first: float, tmp_path):
    """The study's runs under a FLOPs budget worth `steps_of_first` steps of its first grid point."""
    study = load_study(spec)
    first = expand(study, tmp_path)[0].config
    task = get_task(first.task)
    per_step = task.train_flops_per_token_of(first) * task.tokens_per_step_of(first)
    study = dataclasses.replace(study, budget={"mode": "flops", "value": steps_of_first * per_step}, budgets=None,
                                cells=None)
    return study, expand(study, tmp_path)


def test_clip_flops_budget_uses_the_clip_tasks_own_count(tmp_path):
    from models.flops import train_flops_per_token

    study, runs = _flops_budget_runs("experiments/studies/clip_batch_steps.py:smoke", 10.5, tmp_path)
    assert {r.config.task for r in runs} == {"clip"}
    budget = study.budget["value"]
    for run in runs:
        c = run.config
        per_step = CLIPTask.train_flops_per_token_of(c) * CLIPTask.tokens_per_step_of(c)
        assert CLIPTask.tokens_per_step_of(c) == c.data.batch_size  # a "token" is an image-text pair
        assert run.steps == c.train.num_steps == int(budget // per_step)
        # Counting the text tower alone (what the runner once did) would allow more steps.
        L = c.data.seq_len
        text_only = train_flops_per_token(c.model, L, "clip") * c.data.batch_size * L
        assert int(budget // text_only) > run.steps
    assert [r.steps for r in runs if r.seed == 0] == [10, 5]  # batch 8, then batch 16 at twice the FLOPs per step


def test_the_built_task_reports_the_config_counts():
    """The loop's instance methods and the study's class methods are one count."""
    from experiments.configs import clip_shapes

    c = clip_shapes.get_config("smoke")
    task = CLIPTask(c)  # the smoke validation set is small
    assert task.tokens_per_step == CLIPTask.tokens_per_step_of(c) == c.data.batch_size
    assert task.train_flops_per_token() == CLIPTask.train_flops_per_token_of(c)
    assert task.param_count() == CLIPTask.param_count_of(c)


def test_lm_flops_budget_uses_the_lm_tasks_own_count(tmp_path):
    from models.flops import train_flops_per_token

    study, runs = _flops_budget_runs("experiments/studies/lm_isoflop.py:smoke", 20.5, tmp_path)
    for run in runs:
        c = run.config
        assert LMTask.tokens_per_step_of(c) == c.data.batch_size * c.data.seq_len
        assert LMTask.train_flops_per_token_of(c) == train_flops_per_token(c.model, c.data.seq_len)
        per_step = LMTask.train_flops_per_token_of(c) * LMTask.tokens_per_step_of(c)
        assert run.steps == int(study.budget["value"] // per_step)
    assert runs[0].steps == 20 and runs[-1].steps < runs[0].steps  # bigger models train fewer steps


def test_model_files_never_read_data_or_optimizer_settings():
    """Lengths, batch sizes and accumulation reach model code as arguments, from the task."""
    files = [f for d in ("models", "attention", "moe") for f in glob.glob(os.path.join(ROOT, d, "**", "*.py"), recursive=True)]
    files.append(os.path.join(ROOT, "clip", "model.py"))
    pattern = re.compile(r"\b(config|cfg|c)\s*(\.|\[\")\s*(data|optim)\b")
    offenders = [f"{os.path.relpath(f, ROOT)}:{i}" for f in files
                 for i, line in enumerate(open(f, encoding="utf-8"), 1) if pattern.search(line)]
    assert not offenders


@pytest.mark.parametrize("name", [
    "eval/accuracy", "eval/zeroshot_shape_heldout_top1_accuracy", "eval/zeroshot_object_heldout_top5_accuracy",
    "eval/i2t_recall_at_1", "eval/t2i_recall_at_10", "eval/moe/load_entropy", "train/moe/load_entropy/layer_2",
])
def test_higher_is_better(name):
    assert higher_is_better(name)


@pytest.mark.parametrize("name", [
    "eval/loss", "eval/bpb", "eval/ce_loss", "eval/zeroshot_shape_heldout_error", "eval/moe/max_fraction",
    "eval/moe/dropped_fraction", "eval/moe/balance", "eval/clip/contrastive_loss",
])
def test_lower_is_better(name):
    assert not higher_is_better(name)


def test_loop_and_report_share_the_rule():
    from experiments.study import report
    from trainer.loop import best_of

    assert report.higher_is_better is higher_is_better
    curve = [{"step": 1, "eval/moe/load_entropy": 0.5, "eval/loss": 3.0, "eval/i2t_recall_at_1": 0.1},
             {"step": 2, "eval/moe/load_entropy": 0.9, "eval/loss": 2.0, "eval/i2t_recall_at_1": 0.3},
             {"step": 3, "eval/moe/load_entropy": 0.7, "eval/loss": 2.5, "eval/i2t_recall_at_1": 0.2}]
    assert best_of(curve) == {"eval/moe/load_entropy": 0.9, "eval/loss": 2.0, "eval/i2t_recall_at_1": 0.3}
