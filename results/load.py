"""Read an experiment's rows with pyarrow datasets (no per-file Python loop) into pandas."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmsweep.errors import UsageError, did_you_mean
from lmsweep.jobs.plan import read_plan
from lmsweep.results.integrity import live_parts, read_parts
from lmsweep.results.schema import ERROR_SCHEMA, row_key, schema_for
from lmsweep.results.writer import errors_dir, results_dir

MAX_CHUNKS = 256
FEW_FILES = 256


def load_table(exp_dir: str | Path, columns: list[str] | None = None, filters=None,
               all_rows: bool = False) -> pa.Table:
    """Rows of the experiment's task, de-duplicated by row key, restricted to the current plan."""
    return _read(exp_dir, columns, filters, all_rows)[0]


def _read(exp_dir: str | Path, columns: list[str] | None, filters, all_rows: bool):
    """load_table's rows and the plan they were read against."""
    exp_dir = Path(exp_dir)
    plan = read_plan(exp_dir)
    task = plan.meta["task"]["type"]
    schema = schema_for(task)
    _known_columns(task, schema, columns, "columns")
    terms = _filter_terms(filters)
    _known_columns(task, schema, [t[0] for t in terms], "filters")
    directory = results_dir(exp_dir, task)
    if not directory.is_dir():
        return (schema.empty_table() if columns is None else schema.empty_table().select(columns)), plan
    keys = row_key(task)
    want = None if columns is None else list(dict.fromkeys(columns + keys))
    if filters is not None and not isinstance(filters, pc.Expression):
        # pandas/pyarrow style [("model", "=", "a"), ...] or [[...], [...]] (OR of ANDs)
        filters = pq.filters_to_expression(filters)
    # Never from a damaged part: read_parts quarantines unreadable files and reads on without them.
    table = read_parts(exp_dir, directory, schema, columns=want, filter=filters)
    # A scan of 10,000 parts gives 10,000 chunks per column, which every later step pays for; a compacted
    # tree gives a few, and copying them into one would double the memory of a large load for nothing.
    if table.column(0).num_chunks > MAX_CHUNKS:
        table = table.combine_chunks()
    if not all_rows:
        # Restrict to the plan after the scan, not in its filter: a pushed-down `isin` builds its hash set
        # of all planned ids once per part file (measured: 4x slower than the whole scan at 10,000 parts).
        planned = plan.units(columns=["unit_id"]).column("unit_id")
        mask = pc.is_in(table.column("unit_id"), value_set=planned)
        if not pc.all(mask).as_py():
            table = table.filter(mask)
    table = _dedupe(table, keys)
    if table.num_rows == 0 and terms:
        _warn_unmatched(exp_dir, directory, schema, terms)
    return (table if columns is None else table.select(columns)), plan


def unit_from_prefix(exp_dir: str | Path, unit: str, field: str = "unit") -> str:
    """The full unit id of the row that `unit` (an id or a unique prefix of one) names."""
    ids = pc.unique(load_table(exp_dir, columns=["unit_id"]).column("unit_id")).to_pylist()
    matches = sorted(u for u in ids if u.startswith(unit))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no result row for unit {unit!r} in {exp_dir} ({len(ids)} units have rows)", field=field)
    raise UsageError(f"unit prefix {unit!r} matches {len(matches)} units ({', '.join(matches[:3])}, …); "
                     "give more characters", field=field)


class FilterWarning(UserWarning):
    """A `load` filter asked for a value the experiment does not have (the warning names the values it has)."""


COLUMN_DOCS = "docs/results.md#column-reference"


def _known_columns(task: str, schema: pa.Schema, names, what: str) -> None:
    """One line for a column the task's rows do not have, instead of pyarrow's schema dump."""
    unknown = [c for c in (names or []) if c not in schema.names]
    if unknown:
        raise UsageError(f"unknown column {unknown[0]!r}{did_you_mean(unknown[0], schema.names)}; a {task} "
                         f"experiment's columns are listed in {COLUMN_DOCS}", field=what)


def _filter_terms(filters) -> list[tuple[str, str, object]]:
    """The (column, op, value) terms of a list-of-tuples filter (a pyarrow expression is not looked into)."""
    if filters is None or isinstance(filters, pc.Expression):
        return []
    groups = filters if filters and isinstance(filters[0], list) else [filters]
    return [tuple(t) for g in groups for t in g if isinstance(t, (tuple, list)) and len(t) == 3]


def _warn_unmatched(exp_dir: Path, directory: Path, schema: pa.Schema, terms) -> None:
    """No row matched: name each equality term whose value the experiment does not have, with the values it
    has (`("model", "=", "smollm2")` when the model is called `smollm2-135m-instruct`)."""
    import warnings

    if not directory.is_dir():
        return
    for column, op, value in terms:
        if op not in ("=", "==", "in"):
            continue
        wanted = list(value) if op == "in" else [value]
        table = read_parts(exp_dir, directory, schema, columns=[column])
        if table is None or pa.types.is_nested(schema.field(column).type):
            continue
        have = pc.unique(table.column(column)).to_pylist()
        missing = [v for v in wanted if v not in have]
        if missing:
            shown = ", ".join(repr(v) for v in sorted(have, key=str)[:20]) + (" …" if len(have) > 20 else "")
            warnings.warn(f"filter ({column!r}, {op!r}, {value!r}) matches no row: {exp_dir} has no {column} "
                          f"{missing[0]!r}{did_you_mean(str(missing[0]), map(str, have))}; its {column} values: "
                          f"{shown}", FilterWarning, stacklevel=4)


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
    table, plan = _read(exp_dir, columns, filters, False)
    sort = [c for c in ("element", "unit_id", "sequence_index") if c in table.column_names]
    if sort:        # in Arrow (stable): pandas sorts Arrow-backed strings ten times slower
        table = table.take(pc.sort_indices(table, sort_keys=[(c, "ascending") for c in sort]))
    df = table.to_pandas()
    # the prompt sets in spec order, for summaries that list them as the spec does (rows come in hash order)
    spec = plan.meta.get("spec") or {}
    df.attrs["prompt_sets"] = [p.get("name") for p in spec.get("prompts", []) if isinstance(p, dict)]
    return df


@dataclass
class Status:
    planned: int
    done: int
    failed: int
    missing: int
    per_element: pd.DataFrame      # element, model, planned, done, failed, missing
    failures: pd.DataFrame         # unit_id, element, error (latest per unit, for units not done)
    # element → why it crashed as a whole (its EXP/errors/element-NNNNN.json), for unfinished elements
    crashed: dict[int, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)     # "path (why)" of crash records that did not read

    @property
    def complete(self) -> bool:
        return self.done == self.planned

    def counts(self, units: bool = False) -> str:
        """`3/5 done, 0 failed, 2 missing; element 1 crashed: ...`: the line `status` and `run` end with."""
        return (f"{self.done}/{self.planned}{' units' if units else ''} done, {self.failed} failed, "
                f"{self.missing} missing{self.crash_note()}")

    def crash_note(self, shown: int = 3) -> str:
        """`; element 0 crashed: <error>` per crashed element (the first `shown`), or ""."""
        if not self.crashed:
            return ""
        items = sorted(self.crashed.items())
        note = "".join(f"; element {e} crashed: {line}" for e, line in items[:shown])
        more = len(items) - shown
        return note + (f"; {more} more element(s) crashed (lmsweep.status(EXP).crashed)" if more > 0 else "")

    def warnings(self) -> list[str]:
        return [f"warning: skipped damaged crash record {s}" for s in self.skipped]

    @property
    def per_model(self) -> pd.DataFrame:
        """model, elements, planned, done, failed, missing."""
        return self.per_element.groupby("model", sort=True).agg(
            elements=("element", "size"), planned=("planned", "sum"), done=("done", "sum"),
            failed=("failed", "sum"), missing=("missing", "sum")).reset_index()


def done_unit_ids(exp_dir: Path, task: str) -> set[str]:
    return set(done_ids(exp_dir, task).to_pylist())


def done_ids(exp_dir: Path, task: str) -> pa.Array:
    """Distinct unit ids with a row. DuckDB reads one column of many small files at about half pyarrow's
    CPU per file (benchmarks/results.py); a part it cannot read goes through read_parts, which quarantines it."""
    none = pa.array([], pa.string())
    directory = results_dir(exp_dir, task)
    if not directory.is_dir():
        return none
    files = [str(p) for p in live_parts(directory)]
    if not files:
        return none
    if len(files) <= FEW_FILES:           # a compacted tree: pyarrow, without DuckDB's ~0.15 s start
        table = read_parts(exp_dir, directory, schema_for(task), columns=["unit_id"])
        return pc.unique(table.column("unit_id")).drop_null() if table is not None else none
    import duckdb

    from lmsweep.results.scan import connect

    con = connect()
    try:
        ids = con.sql(f"SELECT DISTINCT unit_id FROM read_parquet({files!r}, "
                      "hive_partitioning = false)").arrow().read_all().column("unit_id").combine_chunks()
        if not ids.null_count:
            return ids.cast(pa.string())
    except duckdb.Error:
        pass
    table = read_parts(exp_dir, directory, schema_for(task), columns=["unit_id"])
    return pc.unique(table.column("unit_id")).drop_null() if table is not None else none


def status(exp_dir: str | Path) -> Status:
    """Plan minus results: done, failed (with the error) and missing units, per element."""
    exp_dir = Path(exp_dir)
    plan = read_plan(exp_dir)
    units = plan.units(columns=["unit_id", "element", "model"])
    ids = units.column("unit_id")
    done_set = done_ids(exp_dir, plan.meta["task"]["type"])
    done = pc.is_in(ids, value_set=done_set)
    errs = read_parts(exp_dir, errors_dir(exp_dir), ERROR_SCHEMA)
    if errs is None:
        errs = ERROR_SCHEMA.empty_table()
    # Set membership in Arrow: pandas' isin on Arrow-backed strings loops in Python (1 s per 50,000 units).
    errs = errs.filter(pc.and_(pc.is_in(errs.column("unit_id"), value_set=ids),
                               pc.invert(pc.is_in(errs.column("unit_id"), value_set=done_set))))
    failures = errs.to_pandas().sort_values("failed_at").drop_duplicates("unit_id", keep="last")
    failed = pc.and_(pc.invert(done), pc.is_in(ids, value_set=pa.array(failures["unit_id"], pa.string())))
    units = units.select(["element", "model"]).to_pandas().assign(
        unit_id=1, done=done.to_numpy(zero_copy_only=False), failed=failed.to_numpy(zero_copy_only=False))
    units["missing"] = ~units["done"] & ~units["failed"]
    per = units.groupby(["element", "model"], sort=True).agg(
        planned=("unit_id", "size"), done=("done", "sum"), failed=("failed", "sum"),
        missing=("missing", "sum")).reset_index()
    unfinished = {int(e) for e, d, p in zip(per["element"], per["done"], per["planned"]) if d < p}
    crashed, skipped = element_errors(exp_dir, unfinished)
    return Status(planned=len(units), done=int(units["done"].sum()), failed=int(units["failed"].sum()),
                  missing=int(units["missing"].sum()), per_element=per,
                  failures=failures[["unit_id", "element", "model", "error"]].reset_index(drop=True),
                  crashed=crashed, skipped=skipped)


CRASH_RECORD_KEYS = {"element": int, "error": str, "exit_code": int}


def element_errors(exp_dir: Path, elements: set[int]) -> tuple[dict[int, str], list[str]]:
    """The crash records (EXP/errors/element-NNNNN.json, written by a worker whose element failed as a
    whole) of `elements`: element → its one line. A record that does not read as one is skipped and
    named in the second list ("path (why)"), never an error: it only explains, the units decide."""
    directory = errors_dir(exp_dir)
    crashed: dict[int, str] = {}
    skipped: list[str] = []
    if not directory.is_dir():
        return crashed, skipped
    for path in sorted(directory.glob("element-*.json")):
        try:
            record = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            continue                      # the element completed meanwhile and its worker deleted it
        except (OSError, ValueError) as e:
            skipped.append(f"{path} ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})")
            continue
        bad = [k for k, t in CRASH_RECORD_KEYS.items()
               if not isinstance(record, dict) or not isinstance(record.get(k), t) or isinstance(record.get(k), bool)]
        if bad:
            skipped.append(f"{path} (expected {{\"element\": int, \"error\": str, \"exit_code\": int, ...}}; "
                           f"{bad[0]!r} is missing or of another type)")
            continue
        if record["element"] in elements:
            line = " ".join(record["error"].split())
            crashed[record["element"]] = f"{line} (exit {record['exit_code']}" + \
                (f", {record['host']}" if isinstance(record.get("host"), str) else "") + \
                (f", {record['time']}" if isinstance(record.get("time"), str) else "") + ")"
    return crashed, skipped
