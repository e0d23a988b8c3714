"""lmsweep.scan and `lmsweep results --sql`: the same rows as lmsweep.load, lazily, through DuckDB."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import lmsweep
from helpers.cli import cli
from lmsweep.results.compact import compact_dir
from lmsweep.results.schema import row_key, schema_for
from lmsweep.results.writer import PartWriter, results_dir


@pytest.fixture()
def tree(tmp_path):
    """A generate experiment written with the real PartWriter, plus what a bare reader would get wrong:
    a unit written twice, and a row of a unit the plan no longer has."""
    from benchmarks.results import synthetic_plan, write_parts
    from lmsweep.jobs.plan import write_plan

    plan = synthetic_plan(40, elements=2)
    exp = tmp_path / "bench"
    write_plan(plan, exp)
    write_parts(exp, plan, rows_per_file=4)
    first = sorted(results_dir(exp, "generate").glob("part-*.parquet"))[0]
    rows = pq.read_table(first).to_pylist()
    writer = PartWriter(exp, "generate", 0, 1)
    writer.write(rows[:2])                                        # written twice
    writer.write([{**rows[0], "unit_id": "0" * 20}])              # not in the plan
    return exp


def by_key(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["unit_id", "sequence_index"], ignore_index=True)


def test_scan_is_lazy_and_gives_the_rows_load_gives(tree):
    rel = lmsweep.scan(tree)
    assert isinstance(rel, duckdb.DuckDBPyRelation)
    df = rel.df()
    loaded = lmsweep.load(tree)
    assert len(df) == len(loaded) == 40 and list(df.columns) == list(loaded.columns)
    pd.testing.assert_frame_equal(by_key(df)[["unit_id", "text", "num_new_tokens", "decoding"]],
                                  by_key(loaded)[["unit_id", "text", "num_new_tokens", "decoding"]])
    counted = rel.aggregate("decoding, count(*) AS n").df().set_index("decoding")["n"].sort_index()
    assert counted.to_dict() == loaded.groupby("decoding").size().sort_index().to_dict()


def test_scan_skips_the_parts_a_finished_merge_replaced(tree):
    """A merge stopped after its merged file is in place (old parts still there) reads once."""
    class Stop(Exception):
        pass

    steps = []

    def hook():
        steps.append(1)
        if len(steps) == 3:
            raise Stop

    with pytest.raises(Stop):
        compact_dir(results_dir(tree, "generate"), schema_for("generate"), row_key("generate"), 0, hook=hook)
    assert lmsweep.scan(tree).count("*").fetchall() == [(40,)]
    assert len(lmsweep.load(tree)) == 40


def test_results_sql_runs_duckdb_over_the_view_results(tree):
    proc = cli("results", str(tree), "--csv", "--sql",
               "SELECT decoding, count(*) AS n, avg(num_new_tokens) AS mean_new FROM results GROUP BY 1 ORDER BY 1")
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(io.StringIO(proc.stdout)).set_index("decoding")
    want = lmsweep.load(tree).groupby("decoding").agg(n=("unit_id", "size"), mean_new=("num_new_tokens", "mean"))
    assert got["n"].to_dict() == want["n"].to_dict()
    np.testing.assert_allclose(got["mean_new"], want["mean_new"])
    proc = cli("results", str(tree), "--csv", "--sql", "SELECT count(*) AS n FROM units")
    assert proc.stdout.split() == ["n", "40"]


def test_results_sql_error_is_one_line_and_exit_2(tree):
    proc = cli("results", str(tree), "--sql", "SELECT nope FROM results")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--sql" in proc.stderr and "nope" in proc.stderr


def test_attention_bench_mode_aggregates_under_a_memory_limit_and_matches_numpy(tmp_path):
    """The docs' bigger-than-memory example at a small size: DuckDB's per-layer-head mean attention to the
    first token equals numpy's over the loaded matrices."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.results", "--attention-mb", "4", "--memory-limit",
                           "64MB", "--dir", str(tmp_path), "--json", "--only", "attention"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)["attention"]
    exp = tmp_path / "attention"
    df = lmsweep.load(exp)
    want = {}
    for (layer, head), g in df.groupby(["layer", "head"]):
        first = [np.asarray(a, np.float32).reshape(n, n)[:, 0].mean() for a, n in zip(g["attention"], g["seq_len"])]
        want[f"{layer},{head}"] = float(np.mean(first))
    assert set(r["means"]) == set(want)
    np.testing.assert_allclose([r["means"][k] for k in sorted(want)], [want[k] for k in sorted(want)], rtol=1e-3)
    assert r["peak_rss_mb"] > 0 and r["data_mb"] > 0
