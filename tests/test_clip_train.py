"""The CLIP task through the train loop: the smoke config, the 8-device sharded loss against one
device, real files, the logit-scale clamp after every update, and bad input as one-line errors."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from trainer import loop
from nn.errors import DataError
from experiments.configs import clip_shapes
from nn.errors import ConfigError
from conftest import first_losses, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke(**over):
    c = clip_shapes.get_config("smoke")
    for k, v in over.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


@pytest.mark.slow
def test_smoke_config_trains_and_logs_clip_metrics(experiment_run):
    run = experiment_run("experiments/configs/clip_shapes.py")  # the session's one clip smoke run
    summary = run.summary
    final = summary["final"]
    for k in ("eval/loss", "eval/i2t_recall_at_1", "eval/t2i_recall_at_10", "eval/zeroshot_shape_heldout_top1_accuracy",
              "eval/zeroshot_object_seen_top5_accuracy", "eval/zeroshot_shape_heldout_error",
              "eval/zeroshot_shapecolour_heldout_top1_accuracy"):
        assert k in final and np.isfinite(final[k]), k
    assert final["eval/i2t_recall_at_1"] <= final["eval/i2t_recall_at_5"] <= final["eval/i2t_recall_at_10"] <= 1.0
    assert summary["tokens_per_step"] == 16 and summary["params"] > 0 and summary["flops_per_token"] > 0
    with open(os.path.join(run.workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    scales = [r["train/clip/logit_scale"] for r in records if "train/clip/logit_scale" in r]
    assert scales and all(0 < s <= 100.0 + 1e-3 for s in scales)
    assert any("eval/zeroshot_object_heldout_top1_accuracy" in r for r in records)
    # Recall is higher-is-better in the summary's "best".
    curve = summary["curve"]
    assert summary["best"]["eval/i2t_recall_at_5"] == max(p["eval/i2t_recall_at_5"] for p in curve)


@pytest.mark.slow
def test_eight_devices_with_the_sharded_loss_match_one_device(devices):
    # (Both losses' sharded forms are checked in value and gradient in test_clip_loss.py.)
    def losses(n, shape):
        c = smoke()
        c.mesh.shape.update(shape)
        return first_losses(c, devices[:n], n=3)[2]  # the train steps alone: no evaluation, no checkpoint

    one = losses(1, dict(data=1, fsdp=1))
    eight = losses(8, dict(data=2, fsdp=4))
    np.testing.assert_allclose(eight, one, rtol=2e-5)


@pytest.mark.slow
def test_post_update_hook_clamps_the_logit_scale_inside_train_step(devices):
    s = loop.setup(smoke(), devices[:1])
    with jax.set_mesh(s.mesh):
        state = loop.init_state(s)
        state["params"]["logit_scale"] = jnp.float32(math.log(1000.0))
        b = s.task.train_batch(0)
        step = loop.jit_train_step(s, b)
        state, _ = step(state, loop.to_global(b, s.batch_shardings))
    assert float(state["params"]["logit_scale"]) <= math.log(100.0) + 1e-6


@pytest.mark.slow
def test_real_image_caption_folder_trains_and_reports_skipped_images(tmp_path, devices):
    data = tmp_path / "pairs"
    data.mkdir()
    rng = np.random.default_rng(0)
    colours = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 240)}
    for i in range(24):
        name = list(colours)[i % 3]
        img = np.clip(np.asarray(colours[name]) + rng.normal(0, 10, (20, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(data / f"{i:02d}.png")
        (data / f"{i:02d}.txt").write_text(f"a {name} square number {i}")
    (data / "99.png").write_bytes(b"corrupt")
    (data / "99.txt").write_text("broken image")
    c = smoke(**{"data.path": str(data), "data.eval_batch_size": 8, "data.val_fraction": 0.25})
    summary = loop.train_and_evaluate(c, str(tmp_path / "run"), devices[:1])
    assert "eval/i2t_recall_at_1" in summary["final"] and "eval/zeroshot_shape_heldout_top1_accuracy" not in summary["final"]
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        skipped = [json.loads(line)["eval/data_skipped_images"] for line in f if "eval/data_skipped_images" in line]
    assert skipped and skipped[-1] == 1.0


@pytest.mark.parametrize("over,error,match", [
    ({"vision.image_size": 30}, ConfigError, r"vision.image_size=30 is not divisible by vision.patch_size=8"),
    ({"clip.text_proj_dim": 32}, ConfigError, r"clip.image_proj_dim=16 differs from clip.text_proj_dim=32"),
    ({"clip.logit_scale_max": 5.0}, ConfigError, r"clip.logit_scale_max=5.0 is below the initial logit scale 14.29"),
    ({"clip.loss": "hinge"}, ConfigError, r"clip.loss='hinge' must be one of"),
    ({"clip.fixed_temperature": -0.1}, ConfigError, r"clip.fixed_temperature=-0.1 must be a number >= 0"),
    ({"clip.fixed_temperature": 0.005}, ConfigError,
     r"clip.logit_scale_max=100.0 is below the initial logit scale 200 \(clip.fixed_temperature=0.005"),
    ({"clip.loss_sub_batch": 5}, ConfigError, r"clip.loss_sub_batch=5 does not divide data.batch_size=16"),
    ({"clip.text_pooling": "cls"}, ConfigError, r"clip.text_pooling='cls' with model.causal=True"),
    ({"vision.pos_emb": "rope2d"}, ConfigError, r"vision.pos_emb='rope2d'"),
    ({"vision.n_heads": 3}, ConfigError, r"vision.n_heads=3 does not divide vision.d_model=32"),
    ({"model.vocab_size": 256}, ConfigError, r"model.vocab_size=256 is smaller than the 'bytes' tokenizer"),
    ({"data.tokenizer": "bpe"}, ConfigError, r"data.tokenizer='bpe' is not a registered tokenizer"),
    ({"vision.image_size": 48, "vision.patch_size": 8}, DataError, r"vision.image_size=48 must be 32 or 64"),
])
def test_bad_config_is_a_one_line_error_naming_the_field(devices, over, error, match):
    with pytest.raises(error, match=match) as e:
        loop.setup(smoke(**over), devices[:1])
    assert "\n" not in str(e.value)


def test_empty_caption_in_a_data_file_is_a_one_line_error(tmp_path, devices):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "pairs.jsonl").write_text('{"image": "x.png", "caption": " "}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl line 1: empty caption"):
        loop.setup(smoke(**{"data.path": str(tmp_path / "pairs.jsonl")}), devices[:1])


@pytest.mark.slow
def test_cli_reports_bad_input_in_one_line_with_exit_status_2(tmp_path):
    out = subprocess.run([sys.executable, "train.py", "--config", "experiments/configs/clip_shapes.py:smoke",
                          "--workdir", str(tmp_path), "--config.vision.patch_size=5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == "error: vision.image_size=32 is not divisible by vision.patch_size=5"


@pytest.mark.slow
def test_clip_benchmark_runs_on_smoke_sizes(capsys):
    from benchmarks import clip as bench

    bench.main(["--smoke"])
    out = capsys.readouterr().out
    assert "images/s" in out and "MFU" in out and "shard_map local loss" in out


@pytest.mark.slow
def test_negatives_smoke_study_tunes_then_reports_the_trend_and_tables(tmp_path):
    from experiments.studies import clip_negatives
    from experiments.study import load_study, run_study
    from experiments.study.results import load_results

    study = load_study("experiments/studies/clip_negatives.py:smoke")
    run_study(study, tmp_path, log=lambda *_: None)
    tuning = load_results(tmp_path / "tuning.jsonl")
    assert sorted((r["point"], r["seed"], r["tuning"]["optim.learning_rate"]) for r in tuning) == [
        ("neg16", 0, 3e-3), ("neg4", 0, 3e-3)]
    records = load_results(tmp_path / "results.jsonl")
    assert sorted((r["point"], r["seed"]) for r in records) == [("neg16", 0), ("neg16", 1), ("neg4", 0), ("neg4", 1)]
    # Fixed batch and steps: every point trains on the same 2 x 16 pairs; only the negatives differ.
    assert {(r["steps"], r["tokens"]) for r in records} == {(2, 32)}
    assert all(r["tuned"] == {"optim.learning_rate": 3e-3} for r in records)
    assert all(0.0 <= r["final"][clip_negatives.PRIMARY] <= 1.0 for r in records)
    # Step 2's loss is computed on the initial weights (the first update is warmup's zero rate), and a
    # seed gives the same weights and batch at both points: fewer negatives, a lower loss, at any rate.
    for seed in (0, 1):
        first = {p: read_metrics(tmp_path / "runs" / p / f"seed_{seed}")[0] for p in ("neg4", "neg16")}
        assert first["neg4"]["step"] == first["neg16"]["step"] == 2
        assert first["neg4"]["train/clip/contrastive_loss"] < first["neg16"]["train/clip/contrastive_loss"] - 0.5
    report = (tmp_path / "report.md").read_text()
    assert "loss_sub_batch" in report and "Tuning stage" in report and "Holm" in report
    tables = clip_negatives.accuracy_tables(tmp_path).read_text()
    assert "`neg4`" in tables and "above chance" in tables
