"""Results are plain Parquet: pyarrow, pandas (and polars, duckdb when installed) read them without lmsweep.

Each reader runs in a fresh interpreter that never imports an lmsweep module, as a collaborator's
notebook would; the test process itself checks the answers against `results.load`.
"""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

import lmsweep
from helpers.cli import cli
from lmsweep.results.schema import SCHEMA_VERSION, schema_for, task_columns
from lmsweep.results.writer import PartWriter

SPEC = """
name: readers
models:
  - {{alias: tiny, source: {model}}}
prompts: ["Shakespeare was a", "Once upon a time", "The capital of France is"]
task: generate
decoding:
  max_new_tokens: 6
  include: [{{}}, {{num_beams: 2}}]
execution:
  batch_size: 2
"""

# Runs in a subprocess; prints JSON. Fails if any lmsweep package got imported along the way.
PRELUDE = """
import json, sys
exp = sys.argv[1]
out = {}
"""
EPILOGUE = """
ours = [m for m in sys.modules if m.split('.')[0] in ('jobs', 'results', 'runner', 'submit', 'lmsweep')]
assert not ours, ours
print(json.dumps(out))
"""
READERS = {
    "pyarrow": """
import pyarrow.dataset as ds
t = ds.dataset(exp + "/results", format="parquet", partitioning="hive").to_table()
out["rows"] = t.num_rows
out["units"] = sorted(set(t.column("unit_id").to_pylist()))
out["types"] = {f.name: str(f.type) for f in t.schema}
out["task"] = sorted(set(t.column("task").to_pylist()))
out["version"] = t.schema.metadata[b"lmsweep_schema_version"].decode() if t.schema.metadata else None
""",
    "pandas": """
import pandas as pd
df = pd.read_parquet(exp + "/results/task=generate")
out["rows"] = len(df)
out["units"] = sorted(set(df["unit_id"]))
out["token_ids_0"] = [int(x) for x in df.sort_values(["unit_id", "sequence_index"])["token_ids"].iloc[0]]
plan = pd.read_parquet(exp + "/plan.parquet")
out["in_plan"] = bool(df["unit_id"].isin(plan["unit_id"]).all())
""",
    "polars": """
import polars as pl
df = pl.read_parquet(exp + "/results/**/*.parquet", hive_partitioning=True)
out["rows"] = df.height
out["units"] = sorted(set(df["unit_id"].to_list()))
out["task"] = sorted(set(df["task"].to_list()))
""",
    "duckdb": """
import duckdb
sql = f"select unit_id, task from read_parquet('{exp}/results/*/*.parquet', hive_partitioning=true)"
rows = duckdb.sql(sql).fetchall()
out["rows"] = len(rows)
out["units"] = sorted({r[0] for r in rows})
out["task"] = sorted({r[1] for r in rows})
""",
}


@pytest.fixture(scope="module")
def exp(tmp_path_factory, tiny_llama) -> Path:
    tmp = tmp_path_factory.mktemp("readers")
    spec = tmp / "spec.yaml"
    spec.write_text(SPEC.format(model=tiny_llama))
    cli("run", str(spec), "--output-dir", str(tmp / "runs"), "--quiet", check=True)
    return tmp / "runs" / "readers"


def read_without_lmsweep(reader: str, exp: Path) -> dict:
    code = PRELUDE + READERS[reader] + EPILOGUE
    proc = subprocess.run([sys.executable, "-c", code, str(exp)], capture_output=True, text=True, timeout=300,
                          cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_pyarrow_reads_the_documented_schema_without_lmsweep(exp):
    got = read_without_lmsweep("pyarrow", exp)
    df = lmsweep.load(exp)
    assert got["rows"] == len(df) == 6 and got["units"] == sorted(df["unit_id"])
    assert got["task"] == ["generate"] and got["version"] == str(SCHEMA_VERSION) == "2"
    def plain(t: str) -> str:     # a list's child field is "item" in Arrow and may read back as "element"
        return t.replace("item: ", "").replace("element: ", "")
    expected = {f.name: plain(str(f.type)) for f in schema_for("generate")}
    assert {k: plain(v) for k, v in got["types"].items() if k != "task"} == expected
    assert expected["token_ids"] == "list<int32>" and expected["temperature"] == "double"


@pytest.mark.slow
def test_pandas_reads_a_task_directory_without_lmsweep(exp):
    got = read_without_lmsweep("pandas", exp)
    df = lmsweep.load(exp)
    assert got["rows"] == len(df) and got["units"] == sorted(df["unit_id"]) and got["in_plan"]
    assert got["token_ids_0"] == list(df.sort_values(["unit_id", "sequence_index"])["token_ids"].iloc[0])


@pytest.mark.slow
@pytest.mark.parametrize("reader", ["polars", "duckdb"])
def test_polars_and_duckdb_read_without_lmsweep(exp, reader):
    pytest.importorskip(reader, reason=f"{reader} is an optional test reader (pip install '.[test]')")
    got = read_without_lmsweep(reader, exp)
    assert got["rows"] == 6 and got["units"] == sorted(lmsweep.load(exp)["unit_id"]) and got["task"] == ["generate"]


@pytest.mark.slow
def test_load_filters_and_columns_push_down(exp):
    beam = lmsweep.load(exp, columns=["unit_id", "decoding"], filters=[("decoding", "=", "beam2")])
    assert list(beam.columns) == ["unit_id", "decoding"] and len(beam) == 3 and set(beam["decoding"]) == {"beam2"}
    st = lmsweep.status(exp)
    assert st.complete and list(st.per_model["done"]) == [6]


def sample(typ: pa.DataType):
    """A non-null value of any schema type, so every column of every task carries data."""
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return [sample(typ.value_type), sample(typ.value_type)]
    if pa.types.is_string(typ):
        return "x"
    if pa.types.is_boolean(typ):
        return True
    if pa.types.is_integer(typ):
        return 3
    if pa.types.is_floating(typ):
        return 0.5
    if pa.types.is_timestamp(typ):
        return datetime(2026, 1, 1, tzinfo=timezone.utc)
    raise AssertionError(f"no sample for {typ}; extend sample() for the new type")


ALL_TASKS = """
import pyarrow.dataset as ds, pandas as pd
for task in tasks:
    d = exp + "/results/task=" + task
    if reader == "pyarrow":
        t = ds.dataset(d, format="parquet").to_table()
        out[task] = [t.num_rows, t.column_names, str(t.column(last[task])[0])]
    elif reader == "pandas":
        df = pd.read_parquet(d)
        out[task] = [len(df), list(df.columns), str(df[last[task]].iloc[0])]
    elif reader == "polars":
        import polars as pl
        df = pl.read_parquet(d + "/*.parquet")
        out[task] = [df.height, df.columns, str(df[last[task]][0])]
    else:
        import duckdb
        # .df(), not .fetchall(): Python datetimes with a time zone (finished_at) would need pytz
        df = duckdb.sql(f"select * from read_parquet('{d}/*.parquet')").df()
        out[task] = [len(df), list(df.columns), str(df[last[task]].iloc[0])]
"""


@pytest.mark.parametrize("reader", ["pyarrow", "pandas", "polars", "duckdb"])
def test_every_task_schema_reads_in_every_reader_without_lmsweep(tmp_path, reader):
    """All column types of all tasks (lists, float16 arrays, timestamps) as parts from the real writer."""
    if reader in ("polars", "duckdb"):
        pytest.importorskip(reader, reason=f"{reader} is an optional test reader (pip install '.[test]')")
    TASK_COLUMNS = task_columns()
    for task in TASK_COLUMNS:
        schema = schema_for(task)
        PartWriter(tmp_path, task, 0, 0).write([{f.name: sample(f.type) for f in schema}])
    last = {task: cols[-1][0] for task, cols in TASK_COLUMNS.items()}
    code = PRELUDE + f"reader = {reader!r}\ntasks = {list(TASK_COLUMNS)!r}\nlast = {last!r}\n" + ALL_TASKS + EPILOGUE
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for task in TASK_COLUMNS:
        rows, columns, last = got[task]
        assert rows == 1 and columns[:len(schema_for(task).names)] == schema_for(task).names, task
        assert "0.5" in last or "3" in last or "x" in last or "True" in last, (task, last)


def test_bench_writes_real_parts_and_compares_with_a_naive_loop(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.results", "--files", "40", "--rows-per-file", "3",
                           "--dir", str(tmp_path), "--json", "--only", "parts"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)["parts"]
    assert r["files"] == 40 and r["rows"] == 120 and r["naive_over_load"] > 0
    assert r["compacted_files"] == 20            # one per element of the synthetic plan
    parts = list((tmp_path / "bench" / "results" / "task=generate").glob("part-*.parquet"))
    assert len(parts) == 40
    assert lmsweep.status(tmp_path / "bench").complete
