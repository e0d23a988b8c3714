"""Task registry: each task is one module with the same small interface.

    MODEL_CLASS: str                   transformers Auto class to load the model with
    ATTN: str | None                   attention implementation the task needs (None = model default)
    batch_key(unit) -> hashable        units with equal keys may share a batch
    run(ctx, units) -> (rows, errors)  rows: task columns + unit_id (+ row key); errors: unit_id → message

Adding a task: one module here, its parameters in jobs/tasks.py, its columns in results/schema.py.
"""
from __future__ import annotations

from types import ModuleType

from runner.tasks import generate, next_token

TASKS: dict[str, ModuleType] = {"generate": generate, "next_token": next_token}
