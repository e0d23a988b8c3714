"""docs/spec.md keeps up with the code (issue 26e): its task list and its unknown-task example are every
registered task; validate warns, and run refuses, where the spec's engine is not importable."""
from __future__ import annotations

import importlib.util
import re

import pytest

from helpers.cli import REPO, cli, write_spec
from lmsweep.core.task_registry import task_names

DOC = (REPO / "docs" / "spec.md").read_text()


def test_the_task_key_lists_every_registered_task():
    listed = re.search(r"- `task`: a name \((.*?)\)", DOC, re.S).group(1)
    assert set(re.findall(r"`(\w+)`", listed)) == set(task_names())


def test_the_unknown_task_example_is_what_validate_prints(tmp_path):
    shown = next(line for line in DOC.splitlines() if "unknown task 'next_tokens'" in line)
    spec = write_spec(tmp_path / "t.yaml", "name: t\nmodels: [package:smollm2-135m-instruct]\nprompts: [hi]\n"
                                           "task: next_tokens\n")
    proc = cli("validate", "t.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == shown, (spec, proc.stderr)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is importable here")
def test_validate_warns_and_run_refuses_where_the_engine_is_not_importable(tmp_path):
    spec = write_spec(tmp_path / "v.yaml", "name: v\nmodels: [package:smollm2-135m-instruct]\nprompts: [hi]\n"
                                           "task: generate\nexecution:\n  backend: vllm\n")
    proc = cli("validate", str(spec))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(f"warning: {spec}:6: execution.backend: backend vllm: vllm is not importable in "
                                  "this environment; backend vllm needs the vllm package")
    assert proc.stdout.startswith("ok: ")
    run = cli("run", str(spec), "--output-dir", str(tmp_path / "runs"))
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {spec}:6: execution.backend: backend vllm: vllm is not importable")
    assert not (tmp_path / "runs").exists()
