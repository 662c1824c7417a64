"""Bad input: one line on stderr naming the field and value, exit status 2, nothing compiled or lost.

The cases run in-process through `loop.train_and_evaluate`, the very call
train.py makes, and check the `InputError` it raises (train.py prints exactly
`error: {message}` and exits with 2 for every `InputError`); one test runs the
real command line for the exit status and the one-line output.
"""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import smoke_cfg
from nn.errors import CheckpointMismatchError, ConfigError, DataError, InputError, MeshError
from trainer import loop

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


def test_command_line_prints_one_error_line_and_exits_2(tmp_path):
    """The contract the in-process cases rely on: train.py turns an InputError into one line and status 2."""
    out = run_train(tmp_path / "w", "--config.model.n_heads=3")
    line = assert_one_line_error(out, "model.n_heads=3", "model.d_model=32")
    assert line.startswith("error: ") and not (tmp_path / "w").exists()  # failed before anything was written


def _set(c, dotted: str, value):
    *parents, leaf = dotted.split(".")
    node = c
    for p in parents:
        node = node[p]
    node[leaf] = value


def assert_input_error(cfg, workdir, devices, exc, *needles) -> str:
    """`train_and_evaluate` raises `exc` (an InputError) with a one-line message holding every needle."""
    assert issubclass(exc, InputError)
    with pytest.raises(exc) as e:
        loop.train_and_evaluate(cfg, str(workdir), devices)
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


CASES = {
    "heads_do_not_divide_width": ({"model.n_heads": 3}, ConfigError, ["model.n_heads=3", "model.d_model=32"]),
    "kv_heads_do_not_divide_heads": ({"model.n_kv_heads": 3}, ConfigError, ["model.n_kv_heads=3", "model.n_heads=2"]),
    "unknown_attention": ({"model.attention": "sparse"}, ConfigError, ["model.attention='sparse'"]),
    "unknown_ffn": ({"model.ffn": "wide"}, ConfigError, ["model.ffn='wide'"]),
    "mesh_does_not_match_devices": ({"mesh.shape.data": 4}, MeshError, ["mesh.shape=", "needs 4 devices", "1 are available"]),
    "missing_data_path": ({"data.path": "/nonexistent/corpus.txt"}, DataError,
                          ["data.path='/nonexistent/corpus.txt'", "does not exist"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_error(name, tmp_path, devices):
    overrides, exc, needles = CASES[name]
    c = smoke_cfg()
    for k, v in overrides.items():
        _set(c, k, v)
    assert_input_error(c, tmp_path / "w", devices[:1], exc, *needles)
    assert not (tmp_path / "w").exists()  # failed before anything was written


def test_batch_not_divisible_by_data_parallel_size(tmp_path, devices):
    c = smoke_cfg()
    c.data.batch_size = 12
    assert_input_error(c, tmp_path / "w", devices, ConfigError, "data.batch_size=12", "data-parallel size 8")


def test_empty_data_file(tmp_path, devices):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    c = smoke_cfg()
    c.data.path = str(empty)
    assert_input_error(c, tmp_path / "w", devices[:1], DataError, f"data.path={str(empty)!r}", "is empty")


def test_non_utf8_data_file(tmp_path, devices):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 au lait ".encode("latin-1") * 100)
    c = smoke_cfg()
    c.data.path = str(bad)
    assert_input_error(c, tmp_path / "w", devices[:1], DataError, "is not UTF-8", "offset 3")


@pytest.mark.slow
def test_incompatible_checkpoint_is_refused_and_kept(smoke_run, tmp_path, devices):
    w = tmp_path / "w"
    shutil.copytree(smoke_run.workdir, w)
    before = sorted(os.listdir(w / "checkpoints"))
    metrics_before = (w / "metrics.jsonl").read_text()
    c = smoke_cfg()
    c.model.d_model = 64
    assert_input_error(c, w, devices[:1], CheckpointMismatchError, "model.d_model=32", "model.d_model=64")
    assert sorted(os.listdir(w / "checkpoints")) == before == ["3", "6"]
    assert (w / "metrics.jsonl").read_text() == metrics_before
