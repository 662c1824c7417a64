"""The MoE studies (moe_vs_dense, moe_collapse) expand and smoke-run as declared; the MoE benchmark runs.

Split from test_moe.py, which tests the layer itself."""
import pytest

from models.flops import param_count


def test_moe_vs_dense_study_matches_flops_and_params(tmp_path):
    from experiments.study import expand, load_study
    from experiments.studies import moe_vs_dense as mvd
    from models.flops import train_flops_per_token

    study = load_study("experiments/studies/moe_vs_dense.py")
    assert len(study.seeds) >= 5 and study.primary == "eval/bpb" and study.tuning.metric == "eval/bpb"
    assert study.tuning.grid == {"optim.learning_rate": mvd.LRS}
    study.seeds = study.seeds[:1]  # one config per arm is enough here
    runs = {r.point: r for r in expand(study, tmp_path)}
    assert list(runs) == ["moe", "dense_flops", "dense_params"]
    assert all(r.config.data.corpus == "stdlib" and r.config.data.tokenizer == "bpe:1024" for r in runs.values())
    moe = runs["moe"].config.model.moe
    assert (moe.num_experts, moe.top_k, moe.dispatch, moe.balance_weight) == (mvd.E, 2, "dropless", 0.01)
    fpt = {p: train_flops_per_token(r.config.model, r.config.data.seq_len) for p, r in runs.items()}
    params = {p: param_count(r.config.model) for p, r in runs.items()}
    assert fpt["moe"] == pytest.approx(fpt["dense_flops"], rel=0.01)
    assert params["moe"] == pytest.approx(params["dense_params"], rel=0.01)
    # The FFN ratios are E/2 = 4; the embedding and attention (the same in every arm) shrink them in total.
    assert params["moe"] > 1.8 * params["dense_flops"] and fpt["dense_params"] > 1.6 * fpt["moe"]
    assert len({r.steps for r in runs.values()}) == 1  # the same tokens for every arm
    assert all(r.steps * 2048 == mvd.TOKENS for r in runs.values())


# Held-out bpb at steps 1-4 per (arm, seed) and wall seconds per run, for the crossing analysis.
_CURVES = {("moe", 0): [2.9, 2.8, 2.7, 2.6], ("moe", 1): [2.9, 2.8, 2.7, 2.6],
           ("dense_params", 0): [3.0, 2.9, 2.6, 2.5],   # below from step 3 on
           ("dense_params", 1): [3.0, 2.5, 2.9, 2.3],   # below at 2, above at 3, below at 4
           ("dense_flops", 0): [3.1, 3.0, 2.9, 2.8], ("dense_flops", 1): [3.1, 3.0, 2.9, 2.8]}
_WALL = {("moe", 0): 8.0, ("moe", 1): 4.0, ("dense_params", 0): 12.0, ("dense_params", 1): 8.0,
         ("dense_flops", 0): 4.0, ("dense_flops", 1): 4.0}


def test_moe_vs_dense_smoke_study_writes_the_crossing(tmp_path, capsys):
    """The smoke study through the runner (a fake train function: no compilation), then crossing.md."""
    from experiments.study import expand, load_study, run_study
    from experiments.studies import moe_vs_dense as mvd

    study = load_study("experiments/studies/moe_vs_dense.py:smoke")
    assert [r.point for r in expand(study, tmp_path / "x")] == [a for a in mvd.ARMS for _ in (0, 1)]

    def train(cfg, workdir):
        point = "moe" if cfg.model.ffn == "moe" else ("dense_flops" if cfg.model.d_ff == 64 else "dense_params")
        curve = [{"step": s + 1, "eval/bpb": v, "eval/loss": v} for s, v in enumerate(_CURVES[point, cfg.seed])]
        fpt = {"moe": 100.0, "dense_flops": 100.0, "dense_params": 250.0}[point]
        return {"steps": 4, "tokens": 4 * 256, "params": 1, "flops_per_token": fpt, "train_flops": fpt * 4 * 256,
                "wall_time_s": _WALL[point, cfg.seed], "final": curve[-1], "best": curve[-1], "curve": curve}

    run_study(study, tmp_path, train_fn=train, log=lambda *_: None, report=False)
    assert mvd.main([str(tmp_path)]) == 0
    md = (tmp_path / "crossing.md").read_text()
    # seed 0: below from step 3 on; seed 1: below at 2, above at 3, below for good from 4; tokens 256 per step;
    # FLOPs 250 vs 100 per token; wall s/step: dense_params 3 and 2 (median 2.5), moe 2 and 1 (median 1.5).
    assert "| 0 | 3 | 3 | 768 | 1.92e+05 | 7.68e+04 | 9 | 6 | -0.1000 |" in md
    assert "| 1 | 2 | 4 | 1.02e+03 | 2.56e+05 | 1.02e+05 | 8 | 4 | -0.3000 |" in md
    # The seed means: 2.7 < 2.8 at step 2, 2.75 > 2.7 at 3, 2.4 < 2.6 at 4.
    assert "| pooled (mean curves) | 2 | 4 | 1.02e+03 | 2.56e+05 | 1.02e+05 | 10 | 6 |  |" in md
    assert "in 2 of 2 seeds, and from some evaluation to the end in 2." in md and "| `dense_params` | 2 | n/a | 256 | 6.4e+04 | 2.500 | 8 12 |" in md
    assert "| 4 | 1.02e+03 | 1.02e+05 | 6 | 2.4000 | 2.6000 | -0.2000 |" in md
    assert mvd.main([str(tmp_path / "none")]) == 2 and "run the study first" in capsys.readouterr().err


def test_collapse_study_expands_every_arm_and_counts_collapsed_seeds(tmp_path):
    from experiments.study import expand, load_study
    from experiments.studies import moe_collapse as mc

    # Every arm of the full study builds and validates (no training) with the fields it is about.
    study = load_study("experiments/studies/moe_collapse.py")
    assert len(study.seeds) >= 5 and study.tuning.metric == "eval/bpb"
    study.seeds = study.seeds[:1]  # one config per arm is enough here (each build reads the config file)
    moe = {r.point: r.config.model.moe for r in expand(study, tmp_path)}
    assert list(moe) == list(mc.ARMS)
    assert [moe[a].balance_weight for a in ("no_loss", "loss_1e-3", "loss_1e-2", "loss_1e-1")] == [0, 1e-3, 1e-2, 1e-1]
    assert moe["loss_seq_1e-2"].balance_groups == "sequence" and moe["loss_1e-2"].balance_groups == "batch"
    assert moe["capacity_1"].dispatch == "capacity" and moe["capacity_1"].eval_capacity_factor == 1.0
    assert moe["expert_choice"].router == "expert_choice" and moe["noise"].noise_anneal_steps == mc.STEPS
    assert moe["noise"].balance_weight == 0 and moe["noise_loss_1e-2"].noise == "gaussian"
    assert all(m.z_loss_weight == 0 and m.num_experts == 16 for m in moe.values())
    # collapse.md counts on hand-made curves (E=16: collapsed when entropy < 0.5 or >= 8 experts starved).
    ev = lambda step, h, starved: {"step": step, "eval/moe/load_entropy": h, "eval/moe/starved_experts": starved}  # noqa: E731
    records = [
        {"point": "a", "seed": 0, "curve": [ev(0, 0.9, 0), ev(10, 0.4, 3), ev(200, 0.9, 1)]},   # recovers
        {"point": "a", "seed": 1, "curve": [ev(0, 0.45, 0), ev(10, 0.8, 9), ev(200, 0.7, 8)]},  # at 0, stays
        {"point": "a", "seed": 2, "curve": [ev(0, 0.9, 0), ev(50, 0.9, 7.5), ev(200, 0.51, 7.9)]},  # never
        {"point": "b", "seed": 0, "curve": [ev(0, 0.9, 0), ev(50, 0.9, 8), ev(200, 0.9, 8)]},   # late, stays
    ]
    t = mc.collapse_table(records, 16)
    assert {k: t["a"][k] for k in ("seeds", "at_0", "early", "final", "ever", "recovered")} == dict(
        seeds=3, at_0=1, early=2, final=1, ever=2, recovered=1)
    assert t["a"]["first"] == [10, 0] and t["b"]["first"] == [50] and (t["b"]["early"], t["b"]["final"]) == (0, 1)
    md = mc.collapse_markdown(records, 16)
    assert "| `b` | 1 | 0 | 0 | 1 | 1 | 0 | 50 | 8.0 | 0.90 | n/a |" in md
    assert "| `a` | 0.0 | 6.0 | 7.5 | 5.6 |" in md and "| `b` | 0.0 | n/a | 8.0 | 8.0 |" in md  # steps 0, 10, 50, 200


@pytest.mark.slow
def test_collapse_smoke_study_evaluates_from_step_0_and_writes_collapse_md(tmp_path):
    from experiments.study.results import load_results
    from experiments.study import load_study, run_study
    from experiments.studies import moe_collapse as mc

    run_study(load_study("experiments/studies/moe_collapse.py:smoke"), tmp_path, log=lambda *_: None)
    records = load_results(tmp_path / "results.jsonl")
    assert sorted({(r["point"], r["seed"]) for r in records}) == [(p, s) for p in ("loss_seq_1e-2", "no_loss")
                                                                for s in (0, 1)]
    assert all([c["step"] for c in r["curve"]] == [0, 3] for r in records)  # the initialisation is evaluated
    assert all(0 < c["eval/moe/load_entropy"] <= 1 + 1e-6 and 0 <= c["eval/moe/starved_experts"] <= 4
               for r in records for c in r["curve"])
    report = (tmp_path / "report.md").read_text()
    assert "primary metric `eval/moe/starved_experts`" in report and "lower is better" in report
    assert mc.main([str(tmp_path)]) == 0
    md = (tmp_path / "collapse.md").read_text()
    assert "| `no_loss` | 2 |" in md and "| `loss_seq_1e-2` | 2 |" in md


@pytest.mark.slow
def test_moe_benchmark_runs_on_tiny_sizes(capsys):
    from benchmarks import moe as bench

    bench.main(["--tokens", "64", "--d-model", "16", "--d-ff", "32", "--experts", "4", "--overhead-experts", "4",
                "--repeats", "1"])
    out = capsys.readouterr().out
    assert "dropless (blocked)" in out and "overhead" in out


# --------------------------------------------------------------------------- the objective (tasks.base.collect_aux)
