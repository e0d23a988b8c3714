"""The docs stay true: README.md and docs/*.md document every subcommand and result column, their links,
commands and test references resolve, and the README stays short enough for a newcomer to read."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from lmsweep.cli import build_parser
from lmsweep.results.schema import COMMON, task_columns

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_MAX_LINES = 400

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def pages() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def docs_text() -> str:
    return "\n".join(p.read_text() for p in pages())


def prose(text: str) -> str:
    """Markdown without its fenced code blocks (where `#` lines are comments and `[x](y)` is code)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    text = re.sub(r"[^\w\- ]", "", text.replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(prose(page.read_text()))}


def test_every_result_column_is_documented():
    text = docs_text()
    columns = [name for name, _ in COMMON] + [name for cols in task_columns().values() for name, _ in cols]
    missing = [c for c in columns if c not in text]
    assert not missing, f"document these columns in docs/results.md (and docs/tasks.md): {missing}"


def test_every_subcommand_is_documented():
    text = docs_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = [name for name in sub.choices if f"lmsweep {name}" not in text]
    assert not missing, f"document these commands in README.md or docs/*.md: {missing}"


def test_quick_start_has_the_two_commands_and_ci_runs_the_test_one():
    readme = README.read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "make test"


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference material into docs/"


def test_readme_links_every_docs_page():
    linked = {(README.parent / target.split("#")[0]).resolve() for target in LINK.findall(prose(README.read_text()))}
    unlinked = [p.name for p in pages()[1:] if p.resolve() not in linked]
    assert not unlinked, f"link these pages from README.md: {unlinked}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):            # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {file.relative_to(REPO) if file.is_relative_to(REPO) else file})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


def test_every_python_dash_m_module_exists():
    modules = sorted(set(re.findall(r"python3? -m ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", docs_text())))
    assert "benchmarks.generate" in modules
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    assert not missing, f"the docs name modules that do not exist: {missing}"


def test_every_named_test_exists():
    """`tests/<area>/test_x.py::test_name` in the docs names a file and a test function that exist."""
    missing = []
    for path, name in sorted(set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", docs_text()))):
        file = REPO / path
        if not file.exists() or not re.search(rf"^\s*(async\s+)?def {name}\(", file.read_text(), re.M):
            missing.append(f"{path}::{name}")
    paths = sorted(set(re.findall(r"\btests/[\w/]+\.(?:py|sh|md|json)\b", docs_text())))
    missing += [p for p in paths if "*" not in p and not (REPO / p).exists()]
    assert not missing, f"the docs name tests or test files that do not exist: {missing}"


def test_every_named_source_file_exists():
    """Source paths the reference pages name (`runner/decode.py`, `configs/nightly.yaml`) exist; the guides
    for adding a task or a scheduler name files a newcomer is about to create, so they are left out."""
    folders = "jobs|runner|submit|results|configs|benchmarks|lmsweep"
    missing = []
    for page in pages():
        if page.name.startswith("adding-"):
            continue
        for path in re.findall(rf"(?<![\w/.])((?:{folders})/[\w/.-]+\.(?:py|yaml))", prose(page.read_text())):
            if not (REPO / path).exists():
                missing.append(f"{page.relative_to(REPO)}: {path}")
    assert not missing, f"the docs name source files that do not exist: {sorted(set(missing))}"


def test_the_regression_gates_example_runs_and_prints_what_it_says(tmp_path):
    """docs/results.md's regression gates section: its YAML is a valid `regression:` block and its Python
    prints, line for line, what the comment under each print says (results.stats is seeded and pure)."""
    import contextlib
    import io
    import runpy

    import yaml

    from lmsweep.jobs.spec import RegressionSpec

    text = (REPO / "docs" / "results.md").read_text()
    section = text[text.index("## Regression gates: drift or noise"):text.index("## Regression sweeps")]
    RegressionSpec.model_validate(yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))["regression"])
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        (tmp_path / "snippet.py").write_text(code)
        runpy.run_path(str(tmp_path / "snippet.py"))
    lines = code.splitlines()
    said = [lines[i + 1].removeprefix("# ").split(": ")[0] for i, line in enumerate(lines) if line.startswith("print(")]
    assert out.getvalue().splitlines() == said
