"""Config files and dotted overrides, with one-line errors that name the field and the value.

    load_config_file("experiments/configs/lm_tiny.py:smoke")   # the file's get_config("smoke")
    override(config, "model.d_model", "256")                   # parsed by the field's current type

Used by `train.py` (`--config path[:arg]`, `--config.a.b=value`) and by the
study runner, so a typo in a field name, a value of the wrong type, a
missing config file or one with a syntax error is reported the same way
everywhere: a `ConfigError` whose message names the flag or field, the value
and, for an unknown field, the closest existing one.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any

import ml_collections

from nn.errors import ConfigError, InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config_file(spec: str, flag: str = "--config") -> ml_collections.ConfigDict:
    """`path[:arg]` -> the file's `get_config(arg)`; relative paths are tried from here, then the repo root."""
    path, _, arg = spec.partition(":")
    if not path:
        raise ConfigError(f"{flag}={spec!r} names no config file")
    full = path if os.path.isabs(path) or os.path.exists(path) else os.path.join(ROOT, path)
    if not os.path.isfile(full):
        raise ConfigError(f"{flag}={spec!r}: config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_config_{os.path.basename(full)[:-3]}", full)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{flag}={spec!r}: syntax error in {path} line {e.lineno}: {e.msg}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{flag}={spec!r}: {path} defines no get_config(arg)")
    try:
        config = module.get_config(arg or None)
    except InputError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{flag}={spec!r}: {type(e).__name__}: {e}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{flag}={spec!r}: get_config returned {type(config).__name__}, not a ConfigDict")
    return config


def _fields(node, prefix: str = "") -> list[str]:
    out = []
    for k in node.keys():
        out.append(prefix + k)
        if isinstance(node[k], ml_collections.ConfigDict):
            out.extend(_fields(node[k], prefix + k + "."))
    return out


def unknown_field_error(config, dotted: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(dotted, _fields(config), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: {dotted!r} is not a config field{hint}")


def _parent_and_leaf(config, dotted: str, where: str):
    node = config
    *parents, leaf = dotted.split(".")
    for name in parents:
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise unknown_field_error(config, dotted, where)
        node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise unknown_field_error(config, dotted, where)
    return node, leaf


def parse_value(text: str, current: Any, name: str) -> Any:
    """A command-line string as the type of the field's current value."""
    kind = type(current)
    try:
        if isinstance(current, bool):
            low = text.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        value = ast.literal_eval(text)
        if isinstance(current, (tuple, list)) and not isinstance(value, (tuple, list)):
            value = (value,)
        if current is not None and not isinstance(value, kind) and not (
                isinstance(current, (tuple, list)) and isinstance(value, (tuple, list))):
            raise ValueError
        return tuple(value) if isinstance(current, tuple) else value
    except (ValueError, SyntaxError):
        raise ConfigError(f"{name}={text!r} is not a valid {kind.__name__} "
                          f"(the field holds {current!r})") from None


def override(config, dotted: str, value: Any, where: str | None = None) -> None:
    """Sets `config.<dotted>`; a string value is parsed by the field's type (command-line overrides)."""
    where = where or f"--config.{dotted}"
    node, leaf = _parent_and_leaf(config, dotted, where)
    current = node[leaf]
    if isinstance(value, str) and not isinstance(current, str):
        value = parse_value(value, current, where)
    try:
        node[leaf] = value
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}={value!r}: {e}") from None
