"""Summaries fit the terminal: at 80 and 120 columns no line is wider, no header is broken, and the
columns left out are named (and shown by --wide / --csv)."""
from __future__ import annotations

import io

import pandas as pd
import pytest
from rich.console import Console

from helpers.cli import cli
from lmsweep.console import fit_columns, print_df

SUMMARY_COLUMNS = ["model", "decoding", "units", "rows", "mean_new_tokens", "tokens_per_s", "latency_p50_s",
                   "latency_p90_s", "latency_p99_s", "distinct_1", "distinct_2", "repetition_rate", "finish_eos",
                   "finish_length"]


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    from benchmarks.results import synthetic_plan, write_parts
    from lmsweep.jobs.plan import write_plan

    plan = synthetic_plan(40, elements=2)
    exp = tmp_path_factory.mktemp("width") / "bench"
    write_plan(plan, exp)
    write_parts(exp, plan, rows_per_file=8)
    return exp


def header_cells(out: str) -> list[str]:
    """The header row's cell texts (a header broken over two lines would show as a second ┃ line)."""
    heads = [line for line in out.splitlines() if line.startswith("┃")]
    assert len(heads) == 1, "\n".join(heads)
    return [c.strip() for c in heads[0].strip("┃").split("┃")]


@pytest.mark.parametrize("width", [80, 120])
def test_results_summary_fits_the_terminal_and_names_what_it_leaves_out(exp, width):
    proc = cli("results", str(exp), "--summary", env={"COLUMNS": str(width)}, check=True)
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= width
    shown = header_cells(proc.stdout)
    assert shown == SUMMARY_COLUMNS[:len(shown)] and 4 <= len(shown) < len(SUMMARY_COLUMNS)
    caption = " ".join(lines[lines.index(next(x for x in lines if x.startswith("└"))) + 1:])
    for name in SUMMARY_COLUMNS[len(shown):]:
        assert name in caption
    assert "--wide" in caption


def test_wider_terminal_shows_more_columns_and_wide_shows_them_all(exp):
    n = {w: len(header_cells(cli("results", str(exp), "--summary", env={"COLUMNS": str(w)}).stdout))
         for w in (80, 120)}
    assert n[120] > n[80]
    wide = cli("results", str(exp), "--summary", "--wide", env={"COLUMNS": "80"}, check=True).stdout
    assert header_cells(wide) == SUMMARY_COLUMNS
    csv = cli("results", str(exp), "--summary", "--csv", env={"COLUMNS": "80"}, check=True).stdout
    assert list(pd.read_csv(io.StringIO(csv)).columns) == SUMMARY_COLUMNS


def test_a_long_value_wraps_in_its_cell_instead_of_pushing_the_next_columns_out():
    df = pd.DataFrame({"unit_id": ["a" * 20], "text": ["word " * 40], "finish_reason": ["eos"]})
    rows = [[str(v) for v in df.iloc[0]]]
    assert [i for i, _ in fit_columns(list(df.columns), rows, 100)] == [0, 1, 2]
    assert [i for i, _ in fit_columns(list(df.columns), rows, 60)] == [0, 1]      # text squeezed into 33
    for width in (60, 100):
        buf = io.StringIO()
        print_df(df, "rows", out=Console(file=buf, width=width))
        out = buf.getvalue()
        assert max(len(line) for line in out.splitlines()) <= width
        assert header_cells(out)[:2] == ["unit_id", "text"]
        assert out.count("word") == 40                  # wrapped, not cut


@pytest.mark.slow
def test_lmsweep_run_summary_fits_80_columns(tmp_path, tiny_llama):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: w\nmodels:\n  - {{alias: tiny, source: {tiny_llama}}}\n"
                    "prompts: [\"Once upon a time\", \"The capital of France is\"]\ntask: generate\n"
                    "decoding:\n  max_new_tokens: 4\nexecution:\n  threads_per_rank: 1\n")
    proc = cli("run", str(spec), "--output-dir", str(tmp_path / "runs"), env={"COLUMNS": "80"}, check=True)
    table = proc.stdout[proc.stdout.index("summary:"):]
    assert max(len(line) for line in table.splitlines()) <= 80
    assert "more column(s)" in table and "┃ model" in table
