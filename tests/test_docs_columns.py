"""Documented access to result columns works: no Python snippet in README.md or docs/ reads a column whose
name is also a pandas DataFrame/Series attribute (`head`, `rank`) as an attribute (`df.head == 3` compares
the `DataFrame.head` method and is always false), and the attention snippet that once did runs on a real
experiment."""
from __future__ import annotations

import re
import runpy
from pathlib import Path

import pandas as pd
import pytest

from helpers.cli import REPO, cli
from lmsweep.results.schema import COMMON, task_columns

PYTHON_BLOCK = re.compile(r"^```(?:python|py|pycon)[^\n]*\n(.*?)^```", re.S | re.M)


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shadowed_columns() -> list[str]:
    """Result columns that `df.<name>` / `row.<name>` would not reach: pandas has an attribute of that name."""
    columns = {name for name, _ in COMMON} | {name for cols in task_columns().values() for name, _ in cols}
    return sorted(c for c in columns if hasattr(pd.DataFrame, c) or hasattr(pd.Series, c))


def attribute_reads(text: str, names: list[str]) -> list[str]:
    """`.name` not followed by a call, in the Python blocks of a page: the attribute, not the column."""
    pattern = re.compile(r"\.(" + "|".join(map(re.escape, names)) + r")\b(?!\s*\()")
    return [line.strip() for block in PYTHON_BLOCK.findall(text) for line in block.splitlines()
            if pattern.search(line)]


def test_the_shadowed_columns_are_head_and_rank():
    assert shadowed_columns() == ["head", "rank"]


def test_no_python_snippet_reads_a_shadowed_column_as_an_attribute():
    names = shadowed_columns()
    bad = [f"{page.relative_to(REPO)}: {line}" for page in pages() for line in attribute_reads(page.read_text(), names)]
    assert not bad, "read these columns with brackets (df[\"head\"]), not as attributes:\n" + "\n".join(bad)


def test_the_check_catches_the_old_snippet():
    old = '```python\nrow = df[(df.prompt_id == "animal") & (df.layer == 29) & (df.head == 3)].iloc[0]\n```\n'
    assert attribute_reads(old, shadowed_columns()) == [old.splitlines()[1]]
    assert attribute_reads("```python\ndf.head(5)\nr[\"head\"]\n```\n", shadowed_columns()) == []


@pytest.mark.slow
def test_the_attention_snippet_selects_layer_29_head_3(tmp_path, monkeypatch, smollm2_dir):
    """docs/tasks.md's snippet, run as written from a directory holding runs/attention."""
    cli("run", str(REPO / "configs" / "attention.yaml"), "--output-dir", str(tmp_path / "runs"), "--quiet",
        check=True)
    text = (REPO / "docs" / "tasks.md").read_text()
    snippet = next(b for b in PYTHON_BLOCK.findall(text) if "attention_matrix(row)" in b)
    (tmp_path / "snippet.py").write_text(snippet)
    monkeypatch.chdir(tmp_path)
    scope = runpy.run_path(str(tmp_path / "snippet.py"))
    row, m = scope["row"], scope["m"]
    assert (row["prompt_id"], row["layer"], row["head"]) == ("animal", 29, 3)
    assert m.shape == (row["seq_len"], row["seq_len"])
    df = scope["df"]
    assert (df.head == 3) is False                        # the trap the snippet avoids: a method, never 3
