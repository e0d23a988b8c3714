"""The task registry: one declaration per task, and every list of tasks derived from it."""
from __future__ import annotations

import subprocess
import sys
from typing import Literal

import pyarrow as pa
import pytest

from helpers.cli import REPO
from lmsweep.core import task_registry as registry
from lmsweep.core.task import MIN_EXACT_MATCH, Task, TaskParams, Tolerance


@pytest.fixture
def scratch_registry():
    """Register test tasks for one test only."""
    registry.all_tasks()
    saved = dict(registry._TASKS)
    yield
    registry._TASKS.clear()
    registry._TASKS.update(saved)


def test_every_list_of_tasks_is_the_registry():
    from lmsweep.jobs.spec import TASK_NAMES, ExperimentSpec
    from lmsweep.results.schema import COMMON, row_key, schema_for, task_columns

    names = registry.task_names()
    assert set(names) == {"generate", "next_token", "attention", "classify", "tokenize", "loglikelihood",
                          "hidden_states", "logit_lens", "ablate"}
    assert TASK_NAMES == names and list(task_columns()) == list(names)
    union = ExperimentSpec.model_fields["task"].annotation
    assert {a.model_fields["type"].default for a in union.__args__} == set(names)
    for name in names:
        task = registry.get_task(name)
        assert schema_for(name).names == [c for c, _ in COMMON] + [c for c, _ in task.columns]
        assert row_key(name) == list(task.row_key) and row_key(name)[0] == "unit_id"
        assert set(task.row_key) <= set(schema_for(name).names)


def test_a_name_is_registered_once(scratch_registry):
    class Again(TaskParams):
        type: Literal["generate"] = "generate"

    with pytest.raises(ValueError, match="task 'generate' is registered twice"):
        @registry.register_task("generate")
        class Generate2(Task):
            Params = Again


def test_params_must_carry_the_tasks_name_as_their_type(scratch_registry):
    class Wrong(TaskParams):
        type: Literal["other"] = "other"

    with pytest.raises(TypeError, match=r'needs `type: Literal\["mine"\] = "mine"`'):
        @registry.register_task("mine")
        class Mine(Task):
            Params = Wrong
    with pytest.raises(TypeError, match="subclass of lmsweep.core.task.Task"):
        registry.register_task("mine")(Wrong)


def test_a_tolerance_name_means_one_thing(scratch_registry):
    class P(TaskParams):
        type: Literal["loose"] = "loose"

    with pytest.raises(ValueError, match="tolerance 'min_exact_match'"):
        @registry.register_task("loose")
        class Loose(Task):
            Params = P
            tolerances = (Tolerance("min_exact_match", 0.5, "another meaning"),)


def test_a_new_task_is_one_declaration(scratch_registry, tmp_path):
    """Registered, a task is known to the schema and the tolerances; its typed variant carries the defaults."""
    from lmsweep.results.schema import schema_for

    class CountParams(TaskParams):
        type: Literal["count"] = "count"
        lowercase: bool = False

    @registry.register_task("count")
    class Count(Task):
        Params = CountParams
        auto_class = None
        columns = (("num_words", pa.int32()),)
        tolerances = (MIN_EXACT_MATCH,)

    assert "count" in registry.task_names()
    assert schema_for("count").names[-1] == "num_words"
    assert registry.get_task("count").variant({"type": "count"}).lowercase is False
    assert "min_exact_match" in registry.tolerance_fields()


def test_validating_a_spec_imports_no_torch():
    """Planning and `lmsweep validate` build the task union from every task module: none may import torch,
    transformers or pandas at import time."""
    code = ("import sys\nfrom lmsweep.jobs.spec import load_spec\nfrom lmsweep.jobs import plan\n"
            f"load_spec({str(REPO / 'configs' / 'sentiment.yaml')!r})\n"
            "heavy = [m for m in ('torch', 'transformers', 'pandas') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
