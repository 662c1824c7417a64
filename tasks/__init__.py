"""Tasks by config string (`config.task`).

This floor imports every built-in layer plug-in from the floors below that
`models/` cannot import itself: `moe` registers `model.ffn = "moe"`.
"""
import moe  # noqa: F401  (plug-in: registers the "moe" FFN type)
from nn.errors import ConfigError
from tasks.base import Task
from tasks.classify import ListOpsTask
from tasks.clip import CLIPTask
from tasks.lm import LMTask

TASKS: dict[str, type[Task]] = {"lm": LMTask, "listops": ListOpsTask, "clip": CLIPTask}


def get_task(name: str) -> type[Task]:
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is not a known task; choose one of {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["Task", "LMTask", "ListOpsTask", "CLIPTask", "TASKS", "get_task"]
