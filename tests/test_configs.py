"""`:arg` parsing: typed arguments, unknown keys and bad values rejected, in every config and study file.

A typo in `--config file.py:smoek` once launched the full run, and
`moe_lm.py:expert=16` was ignored; every file now declares its arguments.
"""
import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from experiments.configs.defaults import apply_smoke, base_config, parse_arg
from nn.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(folder: str, entry: str) -> list[str]:
    paths = sorted(glob.glob(os.path.join(ROOT, "experiments", folder, "*.py")))
    return [os.path.relpath(p, ROOT) for p in paths if f"\ndef {entry}(" in open(p, encoding="utf-8").read()]


CONFIGS = _files("configs", "get_config")
STUDIES = _files("studies", "get_study")


def _load(path: str):
    spec = importlib.util.spec_from_file_location(f"_test_{os.path.basename(path)[:-3]}", os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_types_come_from_the_defaults():
    spec = dict(smoke=False, experts=8, lr=1e-3, name="x", dispatch=("dropless", "capacity"))
    a = parse_arg(None, **spec)
    assert (a.smoke, a.experts, a.lr, a.name, a.dispatch) == (False, 8, 1e-3, "x", "dropless")
    a = parse_arg(" smoke , experts=16,lr=2e-4,name=run a,dispatch=capacity", **spec)
    assert (a.smoke, a.experts, a.lr, a.name, a.dispatch) == (True, 16, 2e-4, "run a", "capacity")
    assert type(a.experts) is int and type(a.lr) is float
    assert parse_arg("smoke=false", **spec).smoke is False and parse_arg("smoke=true", **spec).smoke is True
    # Choices keep their type, and a repeated default is dropped from the list.
    assert parse_arg("size=64", size=(32, 64)).size == 64
    assert parse_arg(None, variant=("dense", "dense", "performer")).variant == "dense"


def test_unknown_key_names_the_file_and_the_closest_key():
    with pytest.raises(ConfigError) as info:
        parse_arg("smoek", smoke=False, experts=8)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("tests/test_configs.py:smoek: unknown argument 'smoek'")
    assert "did you mean 'smoke'?" in msg and "smoke, experts" in msg
    with pytest.raises(ConfigError, match="unknown argument 'zzz' \\(this file takes: smoke\\)"):
        parse_arg("zzz", smoke=False)  # nothing close: no suggestion


@pytest.mark.parametrize("arg, spec, match", [
    ("experts=abc", dict(experts=8), "experts='abc' must be an integer"),
    ("experts=1.5", dict(experts=8), "experts='1.5' must be an integer"),
    ("lr=fast", dict(lr=1e-3), "lr='fast' must be a number"),
    ("smoke=maybe", dict(smoke=False), "smoke='maybe' must be a boolean"),
    ("dispatch=foo", dict(dispatch=("dropless", "capacity")), r"dispatch='foo' must be one of \['dropless', 'capacity'\]"),
    ("experts", dict(experts=8), "argument 'experts' needs a value"),
])
def test_bad_value_names_key_value_and_expected(arg, spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_arg(arg, **spec)
    assert "\n" not in str(info.value)


def test_the_reported_typos_fail():
    moe_lm = _load("experiments/configs/moe_lm.py")
    with pytest.raises(ConfigError, match="unknown argument 'expert'; did you mean 'experts'"):
        moe_lm.get_config("expert=16")
    with pytest.raises(ConfigError, match="experts='abc' must be an integer"):
        moe_lm.get_config("experts=abc")
    c = moe_lm.get_config("experts=16,k=1,dispatch=capacity,every=2")
    assert (c.model.moe.num_experts, c.model.moe.top_k, c.model.moe.dispatch, c.model.ffn_every) == (16, 1, "capacity", 2)


def test_listops_variants_come_from_the_attention_registry():
    from attention.registry import ATTENTION_REGISTRY

    listops = _load("experiments/configs/listops.py")
    assert listops.get_config().model.attention == "dense"
    for name in ATTENTION_REGISTRY:
        assert listops.get_config(f"variant={name}").model.attention == name
    with pytest.raises(ConfigError, match="variant='sparse' must be one of"):
        listops.get_config("variant=sparse")


def test_files_are_found():
    assert {"experiments/configs/lm_tiny.py", "experiments/configs/moe_lm.py", "experiments/configs/listops.py",
            "experiments/configs/clip_shapes.py"} <= set(CONFIGS)
    assert "experiments/studies/lm_isoflop.py" in STUDIES and len(STUDIES) >= 5


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_takes_smoke_and_rejects_a_typo(path):
    mod = _load(path)
    assert mod.get_config("smoke").train.num_steps < mod.get_config().train.num_steps
    with pytest.raises(ConfigError, match=f"^{path}:smoek: unknown argument 'smoek'; did you mean 'smoke'"):
        mod.get_config("smoek")


@pytest.mark.parametrize("path", STUDIES)
def test_every_study_takes_smoke_and_rejects_a_typo(path):
    mod = _load(path)
    assert mod.get_study("smoke").name == mod.get_study().name
    with pytest.raises(ConfigError, match=f"^{path}:smoek: unknown argument 'smoek'; did you mean 'smoke'"):
        mod.get_study("smoek")


def test_smoke_configs_do_not_sample():
    assert apply_smoke(base_config()).sample.num_tokens == 0
    assert _load("experiments/configs/lm_tiny.py").get_config("smoke").sample.num_tokens == 0


@pytest.mark.slow
def test_cli_reports_a_bad_config_arg_in_one_line_with_status_2(tmp_path):
    cmd = [sys.executable, "train.py", "--config", "experiments/configs/lm_tiny.py:smoek", "--workdir", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip() == ("error: experiments/configs/lm_tiny.py:smoek: unknown argument 'smoek'; "
                                  "did you mean 'smoke'? (this file takes: smoke)")
    assert not os.listdir(tmp_path)  # nothing started


def test_study_cli_reports_a_bad_study_arg(tmp_path, capsys):
    from experiments.study.runner import main

    assert main(["experiments/studies/lm_isoflop.py:smoek", "--out", str(tmp_path / "out")]) == 2
    assert "error: experiments/studies/lm_isoflop.py:smoek: unknown argument 'smoek'" in capsys.readouterr().err
