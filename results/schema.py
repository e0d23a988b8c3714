"""The Parquet schema of result rows: one per task, sharing the common columns. Versioned.

This file is the contract between the runner (writer) and everyone who reads results; the README's
column reference is written from it.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

COMMON = [
    ("experiment", pa.string()), ("spec_hash", pa.string()), ("unit_id", pa.string()),
    ("unit_key", pa.string()), ("element", pa.int32()), ("rank", pa.int32()),
    ("model", pa.string()), ("model_source", pa.string()), ("model_fingerprint", pa.string()),
    ("backend", pa.string()),
    ("prompt_set", pa.string()), ("prompt_id", pa.string()), ("prompt_text", pa.string()),
    ("label", pa.string()),
    ("variant", pa.int32()), ("point", pa.int32()), ("decoding", pa.string()), ("seed", pa.int64()),
    ("do_sample", pa.bool_()), ("num_beams", pa.int32()), ("temperature", pa.float64()),
    ("top_k", pa.int32()), ("top_p", pa.float64()), ("repetition_penalty", pa.float64()),
    ("no_repeat_ngram_size", pa.int32()), ("max_new_tokens", pa.int32()),
    ("num_return_sequences", pa.int32()),
    ("num_prompt_tokens", pa.int32()),
    ("batch_size", pa.int32()), ("batch_latency_s", pa.float64()),
    ("host", pa.string()), ("finished_at", pa.timestamp("ms", tz="UTC")),
    ("schema_version", pa.int32()),
]

TASK_COLUMNS: dict[str, list[tuple[str, pa.DataType]]] = {
    "generate": [
        ("sequence_index", pa.int32()), ("text", pa.string()), ("token_ids", pa.list_(pa.int32())),
        ("num_new_tokens", pa.int32()), ("finish_reason", pa.string()), ("tokens_per_s", pa.float64()),
    ],
    "next_token": [
        ("topk_ids", pa.list_(pa.int32())), ("topk_tokens", pa.list_(pa.string())),
        ("topk_probs", pa.list_(pa.float32())), ("entropy", pa.float64()),
    ],
}

# Columns that identify one row: a unit may have several rows (e.g. num_return_sequences > 1).
ROW_KEY: dict[str, list[str]] = {"generate": ["unit_id", "sequence_index"]}

ERROR_SCHEMA = pa.schema([
    ("unit_id", pa.string()), ("element", pa.int32()), ("rank", pa.int32()), ("model", pa.string()),
    ("error", pa.string()), ("host", pa.string()), ("failed_at", pa.timestamp("ms", tz="UTC")),
])


def schema_for(task: str) -> pa.Schema:
    return pa.schema(COMMON + TASK_COLUMNS[task], metadata={"lmsweep_schema_version": str(SCHEMA_VERSION),
                                                             "lmsweep_task": task})


def row_key(task: str) -> list[str]:
    return ROW_KEY.get(task, ["unit_id"])
