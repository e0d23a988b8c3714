"""Task registry: each task is one module with the same small interface.

    MODEL_CLASS: str | None            transformers Auto class to load the model with; None = tokenizer only
    model_class(params) -> str | None  optional: the class when it depends on the task variant (classify)
    ATTN: str | None                   attention implementation the task needs (None = model default)
    batch_key(unit) -> hashable        units with equal keys may share a batch
    run(ctx, units) -> (rows, errors)  rows: task columns + unit_id (+ row key); errors: unit_id → message

Adding a task: one module here, its parameters in jobs/tasks.py, its columns in results/schema.py.
"""
from __future__ import annotations

from types import ModuleType

from lmsweep.runner.tasks import attention, classify, generate, next_token, tokenize

TASKS: dict[str, ModuleType] = {"generate": generate, "next_token": next_token, "attention": attention,
                                "classify": classify, "tokenize": tokenize}


def model_class_for(task: ModuleType, params: dict) -> str | None:
    """The Auto class a variant needs (all variants of one model need the same: the plan only pairs a
    model with variants that fit its kind)."""
    pick = getattr(task, "model_class", None)
    return pick(params) if pick is not None else task.MODEL_CLASS
