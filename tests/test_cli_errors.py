"""Every bad command line is one line `error: ...`, exit status 2, and writes nothing.

In-process through each entry point's `main` (the same path the command
takes); tests/test_bad_input.py keeps one real subprocess per entry point.
"""
import os

import pytest

import train
from experiments.study import runner

SMOKE = "experiments/configs/lm_tiny.py:smoke"


@pytest.fixture
def cwd_is_empty(tmp_path, monkeypatch):
    """Runs the command from an empty folder, so anything it writes there is seen."""
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    return here


def _one_line_error(capsys, code, match):
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err


@pytest.mark.parametrize("args, match", [
    (["--config", SMOKE, "--workdir", "W", "--config.model.foo=1"], "'model.foo' is not a config field"),
    (["--config", SMOKE, "--workdir", "W", "--config.train.num_step=5"], "did you mean 'train.num_steps'?"),
    (["--config", SMOKE, "--workdir", "W", "--config.model.d_model=abc"], "--config.model.d_model='abc' is not a valid int"),
    (["--config", SMOKE, "--workdir", "W", "--config.train.tensorboard=maybe"], "is not a valid bool"),
    (["--config", SMOKE, "--workdir", "W", "--config.optim.learning_rate=fast"], "is not a valid float"),
    (["--config", SMOKE, "--workdir", "W", "--config.model.d_model"], "--config.model.d_model has no value"),
    (["--config", SMOKE, "--workdir", "W", "--bogus"], "unknown argument '--bogus'"),
    (["--config", SMOKE], "the following arguments are required: --workdir"),
    (["--workdir", "W"], "the following arguments are required: --config"),
    (["--config", SMOKE, "--workdir", ""], "--workdir is empty"),
    (["--config", "experiments/configs/nope.py", "--workdir", "W"], "config file 'experiments/configs/nope.py' does not exist"),
    (["--config", "experiments/configs/lm_tiny.py:smoek", "--workdir", "W"], "did you mean 'smoke'?"),
    (["--config", "experiments/configs/moe_lm.py:expert=16", "--workdir", "W"], "did you mean 'experts'?"),
    (["--config", "experiments/configs/moe_lm.py:experts=abc", "--workdir", "W"], "experts='abc' must be an integer"),
    (["--config", SMOKE, "--workdir", "W", "--mode", "serve"], "argument --mode: invalid choice: 'serve'"),
    (["--config", SMOKE, "--workdir", "W", "--config.mesh.rules=zero3"], "mesh.rules='zero3' is not a known preset"),
    (["--config", SMOKE, "--workdir", "W", "--config.train.stop_at=-1"], "train.stop_at=-1 must be an integer >= 0"),
    (["--config", SMOKE, "--workdir", "W", "--config.model.n_heads=3"], "model.n_heads=3 does not divide model.d_model=32"),
    (["--config", SMOKE, "--workdir", "W", "--config.model.attention=flash"], "model.attention='flash' is not a known"),
    (["--config", SMOKE, "--workdir", "W", "--config.mesh.shape.data=3"], "mesh"),
    (["--config", SMOKE, "--workdir", "W", "--config.data.path=/no/such/file.txt"], "/no/such/file.txt"),
    (["--config", SMOKE, "--workdir", "W", "--config.data.batch_size=0"], "data.batch_size=0 must be a positive integer"),
    (["--config", SMOKE, "--workdir", "W", "--config.optim.accum_steps=3"], "not divisible by optim.accum_steps=3"),
    (["--config", SMOKE, "--workdir", "W", "--mode=eval"], "holds no checkpoints/ folder"),
    (["--config", SMOKE, "--workdir", "W", "--init_from=/no/run"], "train.init_from='/no/run': '/no/run' holds no"),
])
def test_train_cli_bad_input(args, match, capsys, cwd_is_empty):
    _one_line_error(capsys, train.main(args), match)
    assert os.listdir(cwd_is_empty) == []  # nothing written: no workdir, no checkpoints/ folder


def test_train_cli_workdir_that_is_a_file_or_unwritable(tmp_path, capsys, cwd_is_empty):
    afile = tmp_path / "file"
    afile.write_text("x")
    _one_line_error(capsys, train.main(["--config", SMOKE, "--workdir", str(afile)]), "is an existing file")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _one_line_error(capsys, train.main(["--config", SMOKE, "--workdir", str(locked / "run")]), "cannot be written")
    assert afile.read_text() == "x"


def test_train_cli_config_file_with_a_syntax_error(tmp_path, capsys, cwd_is_empty):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(arg=None):\n    return {\n")
    _one_line_error(capsys, train.main(["--config", str(bad), "--workdir", "W"]), "syntax error in")


@pytest.mark.parametrize("args, match", [
    (["experiments/studies/nope.py", "--out", "O"], "study file 'experiments/studies/nope.py' does not exist"),
    (["nope", "--out", "O"], "neither a file nor experiments/studies/nope.py"),
    (["experiments/studies/lm_isoflop.py:smoek", "--out", "O"], "did you mean 'smoke'?"),
])
def test_study_cli_bad_input(args, match, capsys, cwd_is_empty):
    _one_line_error(capsys, runner.main(args), match)


def test_study_cli_out_is_an_existing_file(tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    _one_line_error(capsys, runner.main(["experiments/studies/lm_isoflop.py:smoke", "--out", str(out)]),
                    "is an existing file, not a results folder")
    assert out.read_text() == "keep me"


def test_a_longformer_window_covering_the_sequence_is_a_logged_warning(devices, caplog):
    from experiments.configs.defaults import apply_smoke, base_config
    from trainer import loop

    c = apply_smoke(base_config())
    c.model.attention = "longformer"
    c.model.longformer.update(window=64, num_global=0)  # seq_len 32: the band reaches everything
    with caplog.at_level("WARNING", logger="train"):
        loop.setup(c, devices[:1])
    notes = [r.getMessage() for r in caplog.records if "longformer.window" in r.getMessage()]
    assert notes == ["model.longformer.window=64 reaches every position of data.seq_len=32: this is dense "
                     "attention at Longformer's cost (choose a window below the sequence length)"]
    caplog.clear()
    c.model.longformer.window = 8
    with caplog.at_level("WARNING", logger="train"):
        loop.setup(c, devices[:1])
    assert not [r for r in caplog.records if "longformer.window" in r.getMessage()]
