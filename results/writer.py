"""Atomic Parquet part files: written under a dot-name, then renamed, so readers never see a partial file."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from results.schema import ERROR_SCHEMA, schema_for


def results_dir(exp_dir: Path, task: str) -> Path:
    return exp_dir / "results" / f"task={task}"


def errors_dir(exp_dir: Path) -> Path:
    return exp_dir / "errors"


def part_name(element: int, rank: int) -> str:
    """Unique per writer and call: element, rank, a nanosecond clock and the pid."""
    return f"part-e{element:05d}-r{rank:04d}-{time.time_ns()}-{os.getpid()}.parquet"


def write_atomic(table: pa.Table, directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    tmp = directory / f".{name}.tmp"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:       # the bytes must be on disk before the name says "done"
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


class PartWriter:
    """One writer per (element, rank); each `write` call makes one part file."""

    def __init__(self, exp_dir: Path, task: str, element: int, rank: int):
        self.exp_dir, self.task, self.element, self.rank = exp_dir, task, element, rank
        self.schema = schema_for(task)

    def write(self, rows: list[dict]) -> Path | None:
        if not rows:
            return None
        table = pa.Table.from_pylist(rows, schema=self.schema)
        return write_atomic(table, results_dir(self.exp_dir, self.task), part_name(self.element, self.rank))

    def write_errors(self, rows: list[dict]) -> Path | None:
        if not rows:
            return None
        table = pa.Table.from_pylist(rows, schema=ERROR_SCHEMA)
        return write_atomic(table, errors_dir(self.exp_dir), part_name(self.element, self.rank))
