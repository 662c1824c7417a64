"""Bad input: one line on stderr naming the field and value, exit status 2, nothing compiled or lost."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train(workdir, *overrides, devices=1):
    env = {**os.environ, "CI": "1", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    cmd = [sys.executable, "train.py", "--config", "experiments/configs/lm_tiny.py:smoke", "--workdir", str(workdir),
           *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(out, *needles):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = [l for l in out.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


CASES = {
    "heads_do_not_divide_width": (["--config.model.n_heads=3"], ["model.n_heads=3", "model.d_model=32"]),
    "kv_heads_do_not_divide_heads": (["--config.model.n_kv_heads=3"], ["model.n_kv_heads=3", "model.n_heads=2"]),
    "unknown_attention": (["--config.model.attention=sparse"], ["model.attention='sparse'"]),
    "unknown_ffn": (["--config.model.ffn=wide"], ["model.ffn='wide'"]),
    "mesh_does_not_match_devices": (["--config.mesh.shape.data=4"], ["mesh.shape=", "needs 4 devices", "1 are available"]),
    "missing_data_path": (["--config.data.path=/nonexistent/corpus.txt"], ["data.path='/nonexistent/corpus.txt'", "does not exist"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_config_error(name, tmp_path):
    overrides, needles = CASES[name]
    out = run_train(tmp_path / "w", *overrides)
    assert_one_line_error(out, *needles)
    assert not (tmp_path / "w" / "checkpoints").exists()  # failed before anything was written


@pytest.mark.slow
def test_batch_not_divisible_by_data_parallel_size(tmp_path):
    out = run_train(tmp_path / "w", "--config.data.batch_size=12", devices=8)
    assert_one_line_error(out, "data.batch_size=12", "data-parallel size 8")


@pytest.mark.slow
def test_empty_data_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    out = run_train(tmp_path / "w", f"--config.data.path={empty}")
    assert_one_line_error(out, f"data.path={str(empty)!r}", "is empty")


@pytest.mark.slow
def test_non_utf8_data_file(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 au lait ".encode("latin-1") * 100)
    out = run_train(tmp_path / "w", f"--config.data.path={bad}")
    assert_one_line_error(out, "is not UTF-8", "offset 3")


@pytest.mark.slow
def test_incompatible_checkpoint_is_refused_and_kept(tmp_path):
    w = tmp_path / "w"
    assert run_train(w, "--config.train.num_steps=3").returncode == 0
    before = sorted(os.listdir(w / "checkpoints"))
    metrics_before = (w / "metrics.jsonl").read_text()
    out = run_train(w, "--config.train.num_steps=6", "--config.model.d_model=64")
    assert_one_line_error(out, "model.d_model=32", "model.d_model=64")
    assert sorted(os.listdir(w / "checkpoints")) == before
    assert (w / "metrics.jsonl").read_text() == metrics_before
