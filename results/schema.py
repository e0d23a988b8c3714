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
    ("backend", pa.string()), ("device", pa.string()),   # device: "cpu" or "cuda:<i>" the rank was bound to
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
    # One row per (unit, layer, head); head = -1 is the mean over the selected heads (head_mean).
    # The seq_len × seq_len matrix [query, key] is flattened row-major into `attention` (float16) or
    # `attention_f32` (dtype: float32); the other is null. results.plots.attention_matrix reshapes it.
    "attention": [
        ("layer", pa.int32()), ("head", pa.int32()), ("kv_head", pa.int32()), ("num_layers", pa.int32()),
        ("num_heads", pa.int32()), ("num_kv_heads", pa.int32()), ("seq_len", pa.int32()),
        ("truncated", pa.bool_()), ("tokens", pa.list_(pa.string())), ("token_ids", pa.list_(pa.int32())),
        ("attention", pa.large_list(pa.float16())), ("attention_f32", pa.large_list(pa.float32())),
    ],
    # The gold label is the common `label` column; the variant's parameters are repeated as columns.
    "classify": [
        ("method", pa.string()), ("pipeline_task", pa.string()), ("template", pa.string()),
        ("shots", pa.int32()), ("fewshot_seed", pa.int64()), ("length_norm", pa.bool_()),
        ("label_set", pa.string()), ("candidate_labels", pa.list_(pa.string())),
        ("label_scores", pa.list_(pa.float64())), ("label_num_tokens", pa.list_(pa.int32())),
        ("predicted_label", pa.string()), ("correct", pa.bool_()), ("fewshot_indices", pa.list_(pa.int32())),
        ("tokens", pa.list_(pa.string())), ("token_labels", pa.list_(pa.string())),
        ("token_scores", pa.list_(pa.float32())), ("entities", pa.string()),
    ],
    "tokenize": [
        ("tokens", pa.list_(pa.string())), ("token_texts", pa.list_(pa.string())),
        ("token_ids", pa.list_(pa.int32())), ("num_tokens", pa.int32()), ("num_special_tokens", pa.int32()),
        ("special_tokens", pa.list_(pa.string())), ("num_chars", pa.int32()), ("chars_per_token", pa.float64()),
        ("vocab_size", pa.int32()), ("tokenizer_class", pa.string()),
    ],
}

# Columns that identify one row: a unit may have several rows (e.g. num_return_sequences > 1).
ROW_KEY: dict[str, list[str]] = {"generate": ["unit_id", "sequence_index"],
                                "attention": ["unit_id", "layer", "head"]}

ERROR_SCHEMA = pa.schema([
    ("unit_id", pa.string()), ("element", pa.int32()), ("rank", pa.int32()), ("model", pa.string()),
    ("error", pa.string()), ("host", pa.string()), ("failed_at", pa.timestamp("ms", tz="UTC")),
])


def schema_for(task: str) -> pa.Schema:
    return pa.schema(COMMON + TASK_COLUMNS[task], metadata={"lmsweep_schema_version": str(SCHEMA_VERSION),
                                                             "lmsweep_task": task})


def row_key(task: str) -> list[str]:
    return ROW_KEY.get(task, ["unit_id"])
