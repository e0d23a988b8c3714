"""The README stays the reference: every result column and every subcommand is documented."""
from __future__ import annotations

from pathlib import Path

from lmsweep.cli import build_parser
from lmsweep.results.schema import COMMON, TASK_COLUMNS

REPO = Path(__file__).resolve().parents[1]


def docs_text() -> str:
    return "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])


def test_every_result_column_is_documented():
    text = docs_text()
    columns = [name for name, _ in COMMON] + [name for cols in TASK_COLUMNS.values() for name, _ in cols]
    missing = [c for c in columns if c not in text]
    assert not missing, f"document these columns in README.md: {missing}"


def test_every_subcommand_is_documented():
    text = docs_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = [name for name in sub.choices if f"lmsweep {name}" not in text]
    assert not missing, f"document these commands in README.md: {missing}"


def test_quick_start_has_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "make test"
