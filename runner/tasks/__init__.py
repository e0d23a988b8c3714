"""The tasks: one module (or folder) each, registered with `@register_task` (see registry.py).

`base.py` says what a task declares; `registry.py` finds the tasks and derives every list from them;
docs/adding-a-task.md walks through adding one.
"""
from __future__ import annotations

from lmsweep.core.task_registry import all_tasks, get_task, register_task, task_names

__all__ = ["all_tasks", "get_task", "register_task", "task_names"]
