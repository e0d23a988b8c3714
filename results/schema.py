"""The Parquet schema of result rows: one per task, sharing the common columns. Versioned.

The common columns are here; each task's own columns and row key are declared by the task
(runner/tasks, `Task.columns` and `Task.row_key`). Together they are the contract between the runner
(writer) and everyone who reads results; docs/results.md and docs/tasks.md are written from them.
"""
from __future__ import annotations

import pyarrow as pa

from lmsweep.core.task_registry import all_tasks, get_task
from lmsweep.jobs.decoding import columns as decoding_columns

SCHEMA_VERSION = 2   # 2: `reproducible` (parts of version 1 read it as null)

COMMON = [
    ("experiment", pa.string()), ("spec_hash", pa.string()), ("unit_id", pa.string()),
    ("unit_key", pa.string()), ("element", pa.int32()), ("rank", pa.int32()),
    ("model", pa.string()), ("model_source", pa.string()), ("model_fingerprint", pa.string()),
    ("backend", pa.string()), ("device", pa.string()),   # device: "cpu" or "cuda:<i>" the rank was bound to
    ("reproducible", pa.string()),   # what a rerun of the row promises: a key of lmsweep.core.engine.PROMISES
    ("prompt_set", pa.string()), ("prompt_id", pa.string()), ("prompt_text", pa.string()),
    ("label", pa.string()),
    ("variant", pa.int32()), ("point", pa.int32()), ("decoding", pa.string()), ("seed", pa.int64()),
    # each decoding parameter as its own typed column, in the table's order (jobs/decoding.py PARAMS)
    *[(name, pa.type_for_alias(arrow_type)) for name, arrow_type in decoding_columns()],
    ("num_prompt_tokens", pa.int32()),
    ("batch_size", pa.int32()), ("batch_latency_s", pa.float64()),
    ("host", pa.string()), ("finished_at", pa.timestamp("ms", tz="UTC")),
    ("schema_version", pa.int32()),
]

ERROR_SCHEMA = pa.schema([
    ("unit_id", pa.string()), ("element", pa.int32()), ("rank", pa.int32()), ("model", pa.string()),
    ("error", pa.string()), ("host", pa.string()), ("failed_at", pa.timestamp("ms", tz="UTC")),
])


def task_columns() -> dict[str, list[tuple[str, pa.DataType]]]:
    """Each task's own columns, by task name."""
    return {t.name: list(t.columns) for t in all_tasks()}


def schema_for(task: str) -> pa.Schema:
    columns = list(get_task(task).columns)
    common = {name for name, _ in COMMON}
    clash = [name for name, _ in columns if name in common]
    if clash:
        raise ValueError(f"task {task!r} declares {clash[0]!r}, a common column (results.schema.COMMON): a task "
                         "fills common columns, it does not redeclare them")
    return pa.schema(COMMON + columns,
                     metadata={"lmsweep_schema_version": str(SCHEMA_VERSION), "lmsweep_task": task})


def row_key(task: str) -> list[str]:
    """Columns that identify one row: a unit may have several rows (e.g. num_return_sequences > 1)."""
    return list(get_task(task).row_key)
