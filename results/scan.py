"""An experiment as a lazy DuckDB relation: aggregate results bigger than memory without loading them.

`scan(EXP)` reads the same files `load` does (the live parts: a compaction's replaced parts are
skipped) and applies the same two rules, in SQL, so nothing is materialised until a query runs:

- the plan restriction: a semi join with `plan.parquet` on `unit_id`;
- de-duplication by row key: a window over the key columns only (never the payload) finds the later
  copies of a row written twice, and an anti join drops them.

DuckDB streams the Parquet row groups and spills to disk above `SET memory_limit`, so e.g. the mean
attention to the first token per layer and head of an attention sweep many times the size of memory
runs in bounded memory (docs/results.md, "Bigger than memory").
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from lmsweep.jobs.plan import read_plan
from lmsweep.results.integrity import live_parts
from lmsweep.results.schema import row_key, schema_for
from lmsweep.results.writer import results_dir

VIEW = "results"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def scan_sql(exp_dir: Path) -> str:
    """The SELECT behind `scan`: the experiment's plan-restricted, de-duplicated rows."""
    exp_dir = Path(exp_dir)
    plan = read_plan(exp_dir)
    task = plan.task_type
    files = [str(p) for p in live_parts(results_dir(exp_dir, task))] \
        if results_dir(exp_dir, task).is_dir() else []
    if not files:
        # No rows yet: an empty relation with the task's columns and types.
        names = ", ".join(f"NULL::{_duck_type(f.type)} AS {_ident(f.name)}" for f in schema_for(task))
        return f"SELECT {names} LIMIT 0"
    source = (f"read_parquet([{', '.join(map(_quote, files))}], filename = true, file_row_number = true, "
              "hive_partitioning = false)")
    keys = ", ".join(map(_ident, row_key(task)))
    planned = _quote(str(exp_dir / "plan.parquet"))
    # The files are named twice, not through a CTE: DuckDB materialises a CTE used twice, payload and all.
    later_copies = (f"SELECT filename, file_row_number FROM (SELECT filename, file_row_number, row_number() "
                    f"OVER (PARTITION BY {keys} ORDER BY filename, file_row_number) AS copy FROM {source}) "
                    f"WHERE copy > 1")
    return (f"SELECT * EXCLUDE (filename, file_row_number) FROM {source} "
            f"SEMI JOIN (SELECT unit_id FROM read_parquet({planned})) AS planned USING (unit_id) "
            f"ANTI JOIN ({later_copies}) AS later_copies USING (filename, file_row_number)")


def _duck_type(t) -> str:
    """A DuckDB type for an empty relation's column (only names and rough types matter with no rows)."""
    import pyarrow as pa

    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _duck_type(t.value_type) + "[]"
    return "VARCHAR"


def connect(memory_limit: str | None = None, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection without its progress bar (it would write over our own output)."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    if memory_limit:
        con.execute(f"SET memory_limit = {_quote(memory_limit)}")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def scan(exp_dir: str | Path, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyRelation:
    """The experiment's rows as a lazy DuckDB relation (plan-restricted, de-duplicated). Nothing is read
    until you ask for a result: `.aggregate(...)`, `.filter(...)`, `.df()`, `.arrow()`, `.fetchall()`;
    or `con.sql("... FROM rel")` with the relation registered, e.g. `con.register("results", rel)`."""
    con = con or connect()
    return con.sql(scan_sql(Path(exp_dir)))


def sql(exp_dir: str | Path, query: str, con: duckdb.DuckDBPyConnection | None = None) -> pd.DataFrame:
    """Run `query` with the experiment's rows as the view `results` (and the plan as `units`)."""
    from lmsweep.jobs.errors import SpecError

    exp_dir = Path(exp_dir)
    con = con or connect()
    con.execute(f"CREATE OR REPLACE TEMP VIEW {VIEW} AS {scan_sql(exp_dir)}")
    plan = _quote(str(exp_dir / "plan.parquet"))
    con.execute(f"CREATE OR REPLACE TEMP VIEW units AS SELECT * FROM read_parquet({plan})")
    try:
        return con.sql(query).df()
    except duckdb.Error as e:
        first = str(e).splitlines()[0]
        raise SpecError(f"{first} (the experiment's rows are the view `{VIEW}`, the plan's units `units`)",
                        field="--sql") from None
