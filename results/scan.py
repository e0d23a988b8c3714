"""An experiment as a lazy DuckDB relation: aggregate results bigger than memory without loading them.

`scan(EXP)` reads the same files `load` does (the live parts: a compaction's replaced parts are
skipped) and applies the same two rules, in SQL, so nothing is materialised until a query runs:

- the plan restriction: a semi join with `plan.parquet` on `unit_id`;
- de-duplication by row key: a window over the key columns only (never the payload) finds the later
  copies of a row written twice, and an anti join drops them.

DuckDB streams the Parquet row groups and spills to disk above `SET memory_limit`, so e.g. the mean
attention to the first token per layer and head of an attention sweep many times the size of memory
runs in bounded memory (docs/results.md, "Bigger than memory").

Both take the integrity path `load` takes (results/integrity.py): before a relation is built, the parts'
`unit_id` columns are read with page checksums verified, and a part that cannot be read (truncated,
garbage) or is not a part of this task (no `unit_id`) is moved to EXP/quarantine/ with a `.reason` note;
its units count as missing. A part of an older version without a newer column reads with that column null.

`sql` (`lmsweep results --sql`) runs a query string, so its connection can reach nothing but the experiment:
the parts are registered as an Arrow dataset (the plan as an Arrow table) and then external access is
switched off and the configuration locked. A query that writes a file (COPY ... TO, EXPORT, ATTACH), reads
one (read_csv, read_text, glob), installs or loads an extension or touches the network fails, and the CLI
says so on one line (`error: --sql: <DuckDB's message>`, exit 2).
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from lmsweep.errors import UsageError
from lmsweep.jobs.plan import read_plan
from lmsweep.results.integrity import PARQUET, check_part, live_parts, quarantine, read_parts
from lmsweep.results.schema import row_key, schema_for
from lmsweep.results.writer import results_dir

VIEW = "results"
PART_COLUMN = "_lmsweep_part"           # sql(): the index of a row's part file, for de-duplication
# Run on sql()'s connection once its views exist; lock_configuration last, so no query can undo them.
LOCKDOWN = ("SET enable_external_access = false", "SET autoinstall_known_extensions = false",
            "SET autoload_known_extensions = false", "SET allow_community_extensions = false",
            "SET python_enable_replacements = false", "SET lock_configuration = true")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def checked_parts(exp_dir: Path, task: str) -> list[str]:
    """The live parts of the task, through `load`'s integrity path: the unit_id columns are read with page
    checksums verified; a part that cannot be read, or has rows without a unit_id (not a part of this
    task), is quarantined. What is left reads."""
    directory = results_dir(exp_dir, task)
    if not directory.is_dir():
        return []
    schema = schema_for(task)
    ids = read_parts(exp_dir, directory, schema, columns=["unit_id"])
    if ids is not None and ids.column("unit_id").null_count:
        for path in live_parts(directory):
            reason = check_part(path, schema)
            if reason is not None and path.exists():
                quarantine(exp_dir, path, reason)
    return [str(p) for p in live_parts(directory)]


def _empty(task: str) -> str:
    """No rows yet: an empty relation with the task's columns and types."""
    names = ", ".join(f"NULL::{_duck_type(f.type)} AS {_ident(f.name)}" for f in schema_for(task))
    return f"SELECT {names} LIMIT 0"


def scan_sql(exp_dir: Path) -> str:
    """The SELECT behind `scan`: the experiment's plan-restricted, de-duplicated rows."""
    exp_dir = Path(exp_dir)
    plan = read_plan(exp_dir)
    task = plan.task_type
    files = checked_parts(exp_dir, task)
    if not files:
        return _empty(task)
    columns = ", ".join(_ident(f.name) for f in schema_for(task))
    # union_by_name: a part of an older version without a newer column reads it as null, as `load` does
    source = (f"read_parquet([{', '.join(map(_quote, files))}], filename = true, file_row_number = true, "
              "hive_partitioning = false, union_by_name = true)")
    keys = ", ".join(map(_ident, row_key(task)))
    planned = _quote(str(exp_dir / "plan.parquet"))
    # The files are named twice, not through a CTE: DuckDB materialises a CTE used twice, payload and all.
    later_copies = (f"SELECT filename, file_row_number FROM (SELECT filename, file_row_number, row_number() "
                    f"OVER (PARTITION BY {keys} ORDER BY filename, file_row_number) AS copy FROM {source}) "
                    f"WHERE copy > 1")
    return (f"SELECT {columns} FROM {source} "
            f"SEMI JOIN (SELECT unit_id FROM read_parquet({planned})) AS planned USING (unit_id) "
            f"ANTI JOIN ({later_copies}) AS later_copies USING (filename, file_row_number)")


def _sandboxed_views(con: duckdb.DuckDBPyConnection, exp_dir: Path) -> None:
    """`results` and `units` on `con` without any file access of DuckDB's own: the parts as a registered
    Arrow dataset (a column numbers each row's part), the plan as an Arrow table. A unit written twice keeps
    the copy in the first part, as `load` does (the copies are identical by construction)."""
    plan = read_plan(exp_dir)
    task = plan.task_type
    schema = schema_for(task)
    con.register("_lmsweep_units", ds.dataset(str(exp_dir / "plan.parquet"), format="parquet"))
    con.execute("CREATE OR REPLACE TEMP VIEW units AS SELECT * FROM _lmsweep_units")
    files = checked_parts(exp_dir, task)
    if not files:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {VIEW} AS {_empty(task)}")
        return
    part = PART_COLUMN
    readable = pa.schema([f.with_type(_without_float16(f.type)) for f in schema])     # as read_parquet reads it
    parts = ds.FileSystemDataset.from_paths(
        files, schema=readable.append(pa.field(part, pa.int32())), format=PARQUET,
        filesystem=pafs.LocalFileSystem(),
        partitions=[pc.field(part) == pa.scalar(i, pa.int32()) for i in range(len(files))])
    con.register("_lmsweep_parts", parts)
    keys = ", ".join(map(_ident, row_key(task)))
    later_copies = (f"SELECT {keys}, {part} FROM (SELECT {keys}, {part}, min({part}) OVER (PARTITION BY {keys}) "
                    f"AS first_part FROM _lmsweep_parts) WHERE {part} > first_part")
    con.execute(f"CREATE OR REPLACE TEMP VIEW {VIEW} AS SELECT * EXCLUDE ({part}) FROM _lmsweep_parts "
                f"SEMI JOIN (SELECT unit_id FROM _lmsweep_units) AS planned USING (unit_id) "
                f"ANTI JOIN ({later_copies}) AS later_copies USING ({keys}, {part})")


def _without_float16(t: pa.DataType) -> pa.DataType:
    """float16 (attention weights) as float32, also inside lists: DuckDB scans no Arrow float16."""
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_large_list(t):
        return pa.large_list(_without_float16(t.value_type))
    if pa.types.is_list(t):
        return pa.list_(_without_float16(t.value_type))
    return t


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


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """No more file, extension or network access on `con`, and no setting can turn it back on."""
    for statement in LOCKDOWN:
        try:
            con.execute(statement)
        except duckdb.Error:
            if "lock_configuration" in statement or "external_access" in statement:
                raise
            # an option this DuckDB does not have; external access off covers what it would


def sql(exp_dir: str | Path, query: str, con: duckdb.DuckDBPyConnection | None = None) -> pd.DataFrame:
    """Run `query` with the experiment's rows as the view `results` (and the plan as `units`), on a
    connection that can read nothing else and write nothing (see the module's doc); `con` is locked too."""
    exp_dir = Path(exp_dir)
    con = con or connect()
    _sandboxed_views(con, exp_dir)
    lock_down(con)
    try:
        return con.sql(query).df()
    except duckdb.Error as e:
        first = str(e).splitlines()[0]
        hint = ("--sql reads the experiment's rows only: no files, extensions or network"
                if isinstance(e, duckdb.PermissionException) or "configuration has been locked" in first
                else f"the experiment's rows are the view `{VIEW}`, the plan's units `units`")
        raise UsageError(f"{first} ({hint})", field="--sql") from None
