"""Stages that serve every task and engine name none: results/ and submit/ ask the task (runner/tasks, e.g.
`Task.plot`, `Task.report_plots`, `Task.legibility`) or read the engine from the run (the plan, a sidecar)
instead of comparing with a task's or an engine's name.

Checked on the source: no string constant of a module under results/ or submit/ is a registered task's name
(generate, next_token, loglikelihood, attention, hidden_states, classify, tokenize, and any added later) or a
registered engine's (hf, deepspeed, vllm: runner/engines). Docstrings and comments may name them; so may prose
in a longer string. A column named like a task (the attention task's `attention` column) counts: the task that
declares it reads it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lmsweep.core.engine import engine_names
from lmsweep.core.task_registry import task_names

REPO = Path(__file__).resolve().parents[1]
STAGES = ["results", "submit"]
TASKS = {"generate", "next_token", "loglikelihood", "attention", "hidden_states", "classify", "tokenize"}
ENGINES = {"hf", "deepspeed", "vllm"}


def names() -> set[str]:
    """Every registered task's and engine's name, and those known today (should a registry lose one)."""
    return TASKS | set(task_names()) | ENGINES | set(engine_names())


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the Constant nodes that are a module's, class's or function's docstring."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def named(path: Path, forbidden: set[str]) -> list[str]:
    """`path:line: 'name'` for each string constant (f-string pieces included) equal to a forbidden name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = docstrings(tree)
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    hits = sorted((node.lineno, node.col_offset, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                  and node.value.strip() in forbidden)
    return [f"{where}:{line}: {value!r}" for line, _, value in hits]


def stage_files(stage: str) -> list[Path]:
    files = sorted((REPO / stage).rglob("*.py"))
    assert files, stage
    return files


def test_the_checker_catches_names_and_spares_docstrings_and_comments(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""The generate task: a docstring may name it."""\n'
                     "# so may a comment: vllm\n"
                     "def f(task, backend):\n"
                     '    """attention, hidden_states."""\n'
                     '    if task == "generate":\n'
                     '        return {"vllm": 1}[backend]\n'
                     '    x = f"{task}" + "classify"\n'
                     '    return ("hf", "a deepspeed run", "generated")\n')
    found = named(probe, names())
    assert [line.split(": ", 1)[1] for line in found] == ["'generate'", "'vllm'", "'classify'", "'hf'"], found
    assert [int(line.split(":")[1]) for line in found] == [5, 6, 7, 8]


def test_every_registered_task_and_engine_is_in_the_forbidden_names():
    assert TASKS <= set(task_names()) and ENGINES <= set(engine_names())


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_module_names_a_task_or_an_engine(stage):
    found = [hit for path in stage_files(stage) for hit in named(path, names())]
    assert not found, ("these modules name a task or an engine; ask the task (lmsweep/core/task.py: Task) or read "
                       "the engine from the plan or a sidecar instead:\n" + "\n".join(found))
