"""`python -m inference.generate` on the session's smoke training run (conftest `smoke_run`):
samples, paged == contiguous, errors."""
import pytest

from inference import generate as cli


@pytest.mark.slow
def test_cli_samples_from_a_checkpoint_and_paged_matches(smoke_run, capsys):
    args = ["--workdir", smoke_run.workdir, "--prompt", "The ", "--prompt", "def f(x):", "--max_new_tokens", "12",
            "--temperature", "0"]
    assert cli.main(args) == 0
    contiguous = capsys.readouterr().out.splitlines()
    assert len(contiguous) == 2 and contiguous[0].startswith("The ") and contiguous[1].startswith("def f(x):")
    assert cli.main(args + ["--paged", "--block_size", "8", "--max_batch", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == contiguous
    # Sampling with nucleus filtering and a seed is reproducible.
    sampled = ["--workdir", smoke_run.workdir, "--prompt", "The ", "--temperature", "1.0", "--top_p", "0.9", "--seed", "3"]
    assert cli.main(sampled) == 0
    first = capsys.readouterr().out
    assert cli.main(sampled) == 0
    assert capsys.readouterr().out == first and first.startswith("The ")


@pytest.mark.parametrize("extra, match", [
    (["--prompt", "x" * 40], "prompt of 40 tokens does not fit the model context of 32 tokens"),
    (["--prompt", "ab", "--paged", "--pool_tokens", "100"], "block_size=16 does not divide the pool of 100 tokens"),
    (["--prompt", "ab", "--paged", "--block_size", "24"], "block_size=24 must be a positive power of two"),
    (["--prompt", "ab", "--paged", "--pool_tokens", "16"], "the pool of 1 blocks x 16 tokens is smaller than"),
    (["--prompt", "ab", "--step", "99"], "has no checkpoint at step 99"),
    (["--prompt", "ab", "--top_p", "1.5"], "top_p=1.5"),
    (["--prompt", "ab", "--paged", "--block_size", "0"], "--block_size=0 must be >= 1"),
    (["--prompt", "ab", "--max_batch", "0"], "--max_batch=0 must be >= 1"),
    (["--prompt", "ab", "--max_new_tokens", "0"], "--max_new_tokens=0 must be >= 1"),
])
def test_cli_bad_input_is_one_line_exit_2(smoke_run, capsys, extra, match):
    assert cli.main(["--workdir", smoke_run.workdir] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1


def test_cli_missing_workdir(tmp_path, capsys):
    assert cli.main(["--workdir", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "holds no checkpoints/ folder" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_says_when_max_new_tokens_does_not_fit(smoke_run, capsys):
    assert cli.main(["--workdir", smoke_run.workdir, "--prompt", "abcd", "--max_new_tokens", "100", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == ("note: --max_new_tokens=100 does not fit the model context of 32 tokens; "
                                    "the longest prompt stops after 28 new tokens")
    assert len(captured.out.splitlines()[0]) <= 32  # prompt + continuation never exceed the context
