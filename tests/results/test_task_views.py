"""Tasks own their views: `lmsweep plot <task>` is derived from the tasks that declare a plot, the report asks the
task for its figures, and the legibility join is the scoring task's declaration (lmsweep/core/task.py)."""
from __future__ import annotations

import sys

import pandas as pd

from helpers.cli import cli
from lmsweep.core import task_registry as registry
from lmsweep.core.task import Legibility, Task


def test_plot_commands_are_the_tasks_that_declare_a_plot():
    declared = [t.name for t in registry.all_tasks() if t.plot_help]
    assert declared == ["attention", "hidden_states"]
    proc = cli("plot", "--help", env={"COLUMNS": "200"})
    assert proc.returncode == 0 and "{" + ",".join(declared) + "}" in proc.stdout
    for name in declared:
        assert registry.get_task(name).plot_help in proc.stdout


class _Drawing(Task):
    """A task as a new one would declare a plot: its flags, and the files it wrote."""

    name = "drawing"
    plot_help = "a test plot"

    def plot_arguments(self, parser):
        parser.add_argument("experiment")
        parser.add_argument("--n", type=int, default=2)

    def plot(self, args):
        if args.n < 0:
            from lmsweep.errors import UsageError

            raise UsageError("--n must not be negative", field="--n")
        return [f"{args.experiment}/plot-{i}.png" for i in range(args.n)]


def test_a_new_task_with_a_plot_gets_its_command_flags_output_and_exit_codes(monkeypatch):
    drawing = _Drawing()
    monkeypatch.setattr(registry, "plot_tasks", lambda: [drawing])
    real = registry.get_task
    monkeypatch.setattr(registry, "get_task", lambda name: drawing if name == "drawing" else real(name))
    proc = cli("plot", "drawing", "EXP", "--n", "3")
    assert proc.returncode == 0 and proc.stdout.split("\n")[:3] == [f"wrote EXP/plot-{i}.png" for i in range(3)]
    bad = cli("plot", "drawing", "EXP", "--n", "-1")
    assert bad.returncode == 2 and "--n: --n must not be negative" in bad.stderr
    assert cli("plot", "attention", "EXP", "--unit", "u").returncode == 2          # not a plot command now


def test_report_figures_come_from_the_task():
    from lmsweep.runner.tasks.attention_views import report_heatmap

    rows = pd.DataFrame({"model": ["m"], "unit_id": ["u"], "prompt_id": ["p"], "seq_len": [2], "layer": [0],
                         "head": [0], "tokens": [["a", "b"]], "attention": [[1.0, 0.0, 0.5, 0.5]],
                         "attention_f32": [None]})
    assert registry.get_task("attention").report_plots(rows) == report_heatmap(rows) != []
    assert registry.get_task("classify").report_plots(rows) == []                      # no shots, no gold labels
    assert registry.get_task("tokenize").report_plots(rows) == []                      # the default: none


def test_exactly_one_task_declares_the_legibility_join():
    scorers = [t for t in registry.all_tasks() if t.legibility is not None]
    assert [t.name for t in scorers] == ["loglikelihood"]
    join = scorers[0].legibility
    assert isinstance(join, Legibility) and join.outputs_task in registry.task_names()
    assert {join.loglikelihood, join.tokens} <= {c for c, _ in scorers[0].columns}


def test_discovery_does_not_import_the_views():
    """`*_views` modules import matplotlib; validate and plan import every task module but them."""
    import subprocess

    code = ("import sys; from lmsweep.core.task_registry import all_tasks; all_tasks(); "
            "print(sorted(m for m in sys.modules if m.endswith('views') or m.startswith('matplotlib'))[:5])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
