"""`lmsweep results --sql` reads the experiment and nothing else (issue 20): a query that would write a file,
read one outside the experiment, attach a database or install an extension is refused with one line
(`error: --sql: <DuckDB's message>`, exit 2) and leaves nothing behind; a SELECT over `results` and `units`
still works. `--sql` and `lmsweep.scan` read through `load`'s integrity path: a truncated or foreign part
is quarantined, not a traceback.
"""
from __future__ import annotations

import io
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lmsweep
from helpers.cli import cli
from lmsweep.results.writer import results_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from benchmarks.results import synthetic_plan, write_parts
    from lmsweep.jobs.plan import write_plan

    exp = tmp_path_factory.mktemp("sql") / "bench"
    plan = synthetic_plan(20, elements=2)
    write_plan(plan, exp)
    write_parts(exp, plan, rows_per_file=4)
    return exp


@pytest.fixture()
def exp(built, tmp_path):
    return shutil.copytree(built, tmp_path / "bench")


def refused(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: --sql: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "configuration" in proc.stderr, proc.stderr          # refused by the lockdown, not by chance
    return proc.stderr


@pytest.mark.parametrize("query,written", [
    ("COPY (SELECT * FROM results) TO '{out}/copied.csv'", "copied.csv"),
    ("COPY results TO '{out}/copied.parquet' (FORMAT parquet)", "copied.parquet"),
    ("ATTACH '{out}/new.duckdb' AS x; CREATE TABLE x.t AS SELECT * FROM results", "new.duckdb"),
    ("EXPORT DATABASE '{out}/exported'", "exported"),
    ("INSTALL httpfs", None),
    ("LOAD httpfs", None),
    ("SELECT * FROM read_csv('/etc/passwd')", None),
    ("SELECT * FROM read_text('{out}/../bench/plan.json')", None),
    ("SELECT * FROM glob('/etc/*')", None),
    ("SET enable_external_access = true; COPY (SELECT 1) TO '{out}/after.csv'", "after.csv"),
    ("RESET lock_configuration", None),
], ids=["copy-csv", "copy-parquet", "attach-create", "export", "install", "load", "read_csv-passwd",
        "read_text", "glob", "re-enable", "unlock"])
def test_sql_cannot_write_read_elsewhere_or_install(exp, tmp_path, query, written):
    out = tmp_path / "out"
    out.mkdir()
    before = sorted(p.relative_to(exp) for p in exp.rglob("*"))
    proc = cli("results", str(exp), "--sql", query.format(out=out))
    refused(proc)
    assert not list(out.iterdir()), list(out.iterdir())                   # nothing written anywhere
    assert sorted(p.relative_to(exp) for p in exp.rglob("*")) == before
    assert "root:" not in proc.stdout                                     # /etc/passwd was not read


def test_a_normal_select_still_works(exp):
    proc = cli("results", str(exp), "--csv", "--sql",
               "SELECT decoding, count(*) AS n FROM results JOIN units USING (unit_id) GROUP BY 1 ORDER BY 1")
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(io.StringIO(proc.stdout)).set_index("decoding")["n"].to_dict()
    assert got == lmsweep.load(exp).groupby("decoding").size().to_dict() and sum(got.values()) == 20


def truncate_one(exp) -> str:
    part = sorted(results_dir(exp, "generate").glob("part-*.parquet"))[0]
    data = part.read_bytes()
    part.write_bytes(data[:len(data) // 2])
    return part.name


def foreign_one(exp) -> str:
    name = "part-e00001-r0000-1-0bbfd16a-1-0.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), results_dir(exp, "generate") / name)
    return name


def quarantined(exp, name) -> bool:
    q = exp / "quarantine" / "results" / "task=generate"
    return (q / name).is_file() and (q / f"{name}.reason").is_file()


@pytest.mark.parametrize("damage", [truncate_one, foreign_one], ids=["truncated", "foreign"])
def test_results_sql_quarantines_a_damaged_part_like_load(exp, damage):
    name = damage(exp)
    proc = cli("results", str(exp), "--csv", "--sql", "SELECT count(*) AS n FROM results")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert quarantined(exp, name) and "quarantined" in proc.stderr
    n = int(proc.stdout.split()[-1])
    assert n == len(lmsweep.load(exp)) and n <= 20


@pytest.mark.parametrize("damage", [truncate_one, foreign_one], ids=["truncated", "foreign"])
def test_scan_quarantines_a_damaged_part_like_load(exp, damage):
    name = damage(exp)
    rows = lmsweep.scan(exp).df()
    assert quarantined(exp, name)
    pd.testing.assert_series_equal(rows["unit_id"].sort_values(ignore_index=True),
                                   lmsweep.load(exp)["unit_id"].sort_values(ignore_index=True),
                                   check_dtype=False)
