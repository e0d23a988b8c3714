"""Read an experiment's rows with pyarrow datasets (no per-file Python loop) into pandas."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmsweep.jobs.plan import read_plan
from lmsweep.results.integrity import live_parts, read_parts
from lmsweep.results.schema import ERROR_SCHEMA, row_key, schema_for
from lmsweep.results.writer import errors_dir, results_dir


def load_table(exp_dir: str | Path, columns: list[str] | None = None, filters=None,
               all_rows: bool = False) -> pa.Table:
    """Rows of the experiment's task, de-duplicated by row key, restricted to the current plan."""
    exp_dir = Path(exp_dir)
    plan = read_plan(exp_dir)
    task = plan.meta["task"]["type"]
    schema = schema_for(task)
    directory = results_dir(exp_dir, task)
    if not directory.is_dir():
        return schema.empty_table() if columns is None else schema.empty_table().select(columns)
    keys = row_key(task)
    want = None if columns is None else list(dict.fromkeys(columns + keys))
    if filters is not None and not isinstance(filters, pc.Expression):
        # pandas/pyarrow style [("model", "=", "a"), ...] or [[...], [...]] (OR of ANDs)
        filters = pq.filters_to_expression(filters)
    # Never from a damaged part: read_parts quarantines unreadable files and reads on without them.
    table = read_parts(exp_dir, directory, schema, columns=want, filter=filters)
    # One chunk per column: a scan of 10,000 parts gives 10,000 chunks, which every later step pays for.
    table = table.combine_chunks()
    if not all_rows:
        # Restrict to the plan after the scan, not in its filter: a pushed-down `isin` builds its hash set
        # of all planned ids once per part file (measured: 4x slower than the whole scan at 10,000 parts).
        planned = plan.units(columns=["unit_id"]).column("unit_id")
        mask = pc.is_in(table.column("unit_id"), value_set=planned)
        if not pc.all(mask).as_py():
            table = table.filter(mask)
    table = _dedupe(table, keys)
    return table if columns is None else table.select(columns)


def _dedupe(table: pa.Table, keys: list[str]) -> pa.Table:
    """A unit written twice (two runs racing) keeps one copy; the copies are identical by construction."""
    if table.num_rows == 0:
        return table
    idx = pa.array(range(table.num_rows))
    firsts = table.select(keys).append_column("_i", idx).group_by(keys, use_threads=False) \
        .aggregate([("_i", "min")]).column("_i_min")
    if len(firsts) == table.num_rows:
        return table
    return table.take(pc.take(firsts, pc.sort_indices(firsts)))     # the first copies, in their order


def load(exp_dir: str | Path, columns: list[str] | None = None, filters=None) -> pd.DataFrame:
    """The experiment as one pandas DataFrame, one row per result row, sorted by element and unit."""
    df = load_table(exp_dir, columns, filters).to_pandas()
    sort = [c for c in ("element", "unit_id", "sequence_index") if c in df.columns]
    return df.sort_values(sort, kind="stable", ignore_index=True) if sort else df


@dataclass
class Status:
    planned: int
    done: int
    failed: int
    missing: int
    per_element: pd.DataFrame      # element, model, planned, done, failed, missing
    failures: pd.DataFrame         # unit_id, element, error (latest per unit, for units not done)

    @property
    def complete(self) -> bool:
        return self.done == self.planned

    @property
    def per_model(self) -> pd.DataFrame:
        """model, elements, planned, done, failed, missing."""
        return self.per_element.groupby("model", sort=True).agg(
            elements=("element", "size"), planned=("planned", "sum"), done=("done", "sum"),
            failed=("failed", "sum"), missing=("missing", "sum")).reset_index()


def done_unit_ids(exp_dir: Path, task: str) -> set[str]:
    """Unit ids with a row. DuckDB reads one column of many small files at about half pyarrow's CPU per
    file (benchmarks/results.py); a part it cannot read goes through read_parts, which quarantines it."""
    directory = results_dir(exp_dir, task)
    if not directory.is_dir():
        return set()
    files = [str(p) for p in live_parts(directory)]
    if not files:
        return set()
    import duckdb

    from lmsweep.results.scan import connect

    con = connect()
    try:
        ids = con.sql(f"SELECT DISTINCT unit_id FROM read_parquet({files!r}, "
                                   "hive_partitioning = false)").arrow().read_all().column("unit_id")
        if not ids.null_count:
            return set(ids.to_pylist())
    except duckdb.Error:
        pass
    table = read_parts(exp_dir, directory, schema_for(task), columns=["unit_id"])
    return set(pc.unique(table.column("unit_id")).drop_null().to_pylist()) if table is not None else set()


def status(exp_dir: str | Path) -> Status:
    """Plan minus results: done, failed (with the error) and missing units, per element."""
    exp_dir = Path(exp_dir)
    plan = read_plan(exp_dir)
    units = plan.units(columns=["unit_id", "element", "model"]).to_pandas()
    done = done_unit_ids(exp_dir, plan.meta["task"]["type"])
    units["done"] = units["unit_id"].isin(done)
    errs = read_parts(exp_dir, errors_dir(exp_dir), ERROR_SCHEMA)
    failures = errs.to_pandas() if errs is not None else ERROR_SCHEMA.empty_table().to_pandas()
    failures = failures[failures["unit_id"].isin(units["unit_id"]) & ~failures["unit_id"].isin(done)]
    failures = failures.sort_values("failed_at").drop_duplicates("unit_id", keep="last")
    units["failed"] = ~units["done"] & units["unit_id"].isin(failures["unit_id"])
    units["missing"] = ~units["done"] & ~units["failed"]
    per = units.groupby(["element", "model"], sort=True).agg(
        planned=("unit_id", "size"), done=("done", "sum"), failed=("failed", "sum"),
        missing=("missing", "sum")).reset_index()
    return Status(planned=len(units), done=int(units["done"].sum()), failed=int(units["failed"].sum()),
                  missing=int(units["missing"].sum()), per_element=per,
                  failures=failures[["unit_id", "element", "model", "error"]].reset_index(drop=True))
