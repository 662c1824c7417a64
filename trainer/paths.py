"""Workdir paths through `etils.epath`: a local folder or any path epath opens (gs://, s3://, ...).

Everything the trainer writes into a workdir goes through these (checkpoints
go through Orbax, which takes the same paths). Local paths behave exactly as
before (made absolute, appended to in place); on an object store, where files
cannot be appended to or renamed atomically, a file is rewritten whole
(see `MetricWriter`) and "atomic" writes are a write of a temporary object
followed by a rename (a copy and a delete there).
"""
from __future__ import annotations

import json
import os
from typing import Any

from etils import epath


def is_local(path) -> bool:
    """True for a plain file-system path (no `scheme://`)."""
    return "://" not in str(path)


def workdir_path(path) -> epath.Path:
    """The workdir (or a file in it) as an epath.Path; local paths made absolute."""
    return epath.Path(os.path.abspath(path) if is_local(path) else str(path))


def write_json_atomic(path: epath.Path, obj: Any, **kw) -> None:
    """JSON to `path` through a temporary file and a rename: readers never see half a file."""
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(json.dumps(obj, **kw), encoding="utf-8")
    tmp.replace(path)


def read_json(path: epath.Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
