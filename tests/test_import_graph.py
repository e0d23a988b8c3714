"""The stages import in one direction (docs/development.md#package-layering).

    core (lmsweep/core/, lmsweep/errors.py, lmsweep/console.py)  <-  jobs  <-  results  <-  runner  <-  submit

Each stage imports only the core and the stages below it; the core imports no stage; the top level
(lmsweep/cli.py, lmsweep/regress.py, lmsweep/__main__.py) may import any. Checked on the source with `ast`:
every `import` and `from ... import`, at module level and inside functions, counts; only imports under
`if TYPE_CHECKING:` (type hints, never run) do not. The registries' plug-in discovery imports a stage's modules
by a name string (`importlib.import_module("lmsweep.runner.tasks." + name)`), which is not an import statement.

Fast (well under a second): a file is parsed only when its text could import a layer it must not, i.e. it names
`lmsweep.<layer>` of such a layer or imports relatively / `from lmsweep import`. A file that names none can only
import the core and the layers below its own, and an import graph whose every edge goes down has no cycle; so the
whole tree is parsed only to report a cycle once an edge that does not go down is found.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("jobs", "results", "runner", "submit")            # bottom to top: each may import those before it
RANK = {"core": 0, **{stage: i + 1 for i, stage in enumerate(STAGES)}}
TOP = {"cli", "regress", "__main__"}                         # lmsweep/<name>.py: the command, wiring every stage


def layer_of_module(module: str) -> str | None:
    """The layer an absolute module name belongs to ("core", a stage, "top"), None outside lmsweep."""
    parts = module.split(".")
    if parts[0] != "lmsweep":
        return None
    if len(parts) == 1:
        return "core"                                        # the package itself: `from lmsweep import X` is X's
    if parts[1] in STAGES:
        return parts[1]
    return "top" if parts[1] in TOP else "core"


def layer_of_file(path: Path) -> str:
    rel = path.relative_to(REPO).parts
    if rel[0] in STAGES:
        return rel[0]
    return "top" if len(rel) == 2 and Path(rel[1]).stem in TOP else "core"


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(tree: ast.AST, package: str) -> list[tuple[str, int]]:
    """(module, line) of each import that runs: module level and inside functions, not under TYPE_CHECKING.
    `from P import a, b` counts as P.a and P.b (a submodule or a name of P; either way P's layer or below).
    `package` resolves relative imports."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.extend((f"{base}.{alias.name}", node.lineno) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def package_of(path: Path) -> str:
    """The dotted package a file's relative imports start from (jobs/spec.py: lmsweep.jobs)."""
    rel = path.relative_to(REPO).with_suffix("").parts
    parts = ["lmsweep", *rel[1:]] if rel[0] in STAGES else list(rel)
    return ".".join(parts[:-1])


def allowed(source: str, target: str) -> bool:
    """May a module of layer `source` import one of layer `target`? (the top level may import anything)"""
    return source == "top" or target == source or (target != "top" and RANK[target] < RANK[source])


def could_break_rules(source: str, text: str) -> bool:
    """Whether a file's text names a layer its layer may not import (or imports in a way names do not show)."""
    if source == "top":
        return False
    if "from lmsweep import" in text or re.search(r"^\s*from \.", text, re.M):
        return True
    return any(f"lmsweep.{name}" in text for name in (*STAGES, *TOP)
               if not allowed(source, layer_of_module(f"lmsweep.{name}")))


def edges(everything: bool = False) -> dict[tuple[str, str], list[str]]:
    """(importing layer, imported layer) -> `file:line` of each import that makes it, across layers: every
    edge that does not go down (the files that could_break_rules), or with `everything` every edge."""
    out: dict[tuple[str, str], list[str]] = {}
    files = [p for folder in ("lmsweep", *STAGES) for p in sorted((REPO / folder).rglob("*.py"))]
    assert len(files) > 50, files
    for path in files:
        source = layer_of_file(path)
        text = path.read_text()
        if not everything and not could_break_rules(source, text):
            continue
        tree = ast.parse(text, filename=str(path))
        for module, line in imported_modules(tree, package_of(path)):
            target = layer_of_module(module)
            if target is not None and target != source:
                out.setdefault((source, target), []).append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return out


def cycles(graph: dict[tuple[str, str], list[str]]) -> list[tuple[str, str]]:
    """The edges that lie on a cycle (b reaches a back)."""
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            for a, b in graph:
                if a == node and b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen

    return sorted(e for e in graph if e[0] in reach(e[1]))


GRAPH = edges()


def test_the_checker_counts_function_imports_and_skips_type_checking():
    tree = ast.parse("from typing import TYPE_CHECKING\n"
                     "import lmsweep.jobs.spec\n"
                     "if TYPE_CHECKING:\n"
                     "    from lmsweep.submit.base import Scheduler\n"
                     "else:\n"
                     "    from lmsweep.results import load\n"
                     "def f():\n"
                     "    from lmsweep.runner.units import Unit\n"
                     "    from . import sibling\n")
    found = imported_modules(tree, "lmsweep.results")
    assert found == [("typing.TYPE_CHECKING", 1), ("lmsweep.jobs.spec", 2), ("lmsweep.results.load", 6),
                     ("lmsweep.runner.units.Unit", 8), ("lmsweep.results.sibling", 9)]
    assert [layer_of_module(m) for m, _ in found] == [None, "jobs", "results", "runner", "results"]
    assert layer_of_module("lmsweep.core.task") == layer_of_module("lmsweep.errors") == "core"
    assert layer_of_module("lmsweep.cli") == "top"
    assert cycles({("a", "b"): [], ("b", "c"): [], ("c", "a"): [], ("c", "d"): []}) == \
        [("a", "b"), ("b", "c"), ("c", "a")]


def test_a_file_is_skipped_only_when_it_names_no_layer_it_may_not_import():
    assert could_break_rules("jobs", "import lmsweep.runner.units")
    assert could_break_rules("jobs", '"""see lmsweep.submit.cli"""')          # a mention: parsed, then judged
    assert could_break_rules("results", "from . import sibling")
    assert could_break_rules("core", "from lmsweep.jobs.spec import ExperimentSpec")
    assert could_break_rules("runner", "from lmsweep.cli import main")
    assert not could_break_rules("runner", "from lmsweep.jobs.spec import X\nfrom lmsweep.results import load")
    assert not could_break_rules("top", "from lmsweep.submit import cli")


def test_no_cycle_between_the_stages():
    graph = edges(everything=True) if any(not allowed(*e) for e in GRAPH) else GRAPH
    stages = {e: where for e, where in graph.items() if "top" not in e}
    found = cycles(stages)
    assert not found, "\n".join(f"{a} -> {b}, e.g. {stages[(a, b)][0]}" for a, b in found)


def test_the_core_imports_no_stage():
    found = [w for (a, b), where in GRAPH.items() if a == "core" and b != "core" for w in where]
    assert not found, "the core (lmsweep/core/, errors, console) imports a stage:\n" + "\n".join(found)


def test_each_stage_imports_only_the_core_and_the_stages_below_it():
    found = [w for (a, b), where in GRAPH.items() if a in STAGES and not allowed(a, b) for w in where]
    assert not found, (f"a stage imports a stage above it (order: core <- {' <- '.join(STAGES)}):\n"
                       + "\n".join(found))
