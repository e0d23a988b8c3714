"""Planning: content-addressed unit ids, seeds on sampled points only, elements sized by cost."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.cli import FIXTURES
from lmsweep.errors import ExperimentError
from lmsweep.jobs.plan import plan_spec, read_plan, write_plan
from lmsweep.jobs.spec import load_spec

SPEC = """
name: planned
models:
  - {{alias: a, source: {model}}}
prompts:
  - name: p
    items: {items}
task: generate
decoding:
  max_new_tokens: 16
  seeds: [0, 1, 2]
  include: [{{}}, {{temperature: 0.7}}]
execution:
  walltime: "00:00:10"
  tokens_per_second: 20
"""


def plan_for(tmp_path: Path, model: Path, items: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(SPEC.format(model=model, items=items))
    return plan_spec(load_spec(path))


def test_units_are_prompts_times_points_with_seeds_only_when_sampling(tmp_path, tiny_llama):
    plan = plan_for(tmp_path, tiny_llama, '["one", "two"]')
    units = plan.units.to_pylist()
    assert len(units) == 2 * (1 + 3)
    greedy = [u for u in units if u["point"] == 0]
    assert {u["seed"] for u in greedy} == {None}
    assert {u["seed"] for u in units if u["point"] == 1} == {0, 1, 2}
    assert len({u["unit_id"] for u in units}) == len(units)


def test_unit_ids_depend_only_on_what_decides_the_output(tmp_path, tiny_llama):
    a = plan_for(tmp_path, tiny_llama, '["one", "two"]', "a.yaml")
    b = plan_for(tmp_path, tiny_llama, '["one", "changed"]', "b.yaml")
    ids_a = {(u["prompt_index"], u["point"], u["seed"]): u["unit_id"] for u in a.units.to_pylist()}
    ids_b = {(u["prompt_index"], u["point"], u["seed"]): u["unit_id"] for u in b.units.to_pylist()}
    same = {k for k in ids_a if ids_a[k] == ids_b[k]}
    assert same == {k for k in ids_a if k[0] == 0}          # prompt 0 unchanged, prompt 1 changed
    again = plan_for(tmp_path, tiny_llama, '["one", "two"]', "c.yaml")
    assert again.units.column("unit_id").to_pylist() == a.units.column("unit_id").to_pylist()


def test_elements_fit_the_walltime_budget(tmp_path, tiny_llama):
    plan = plan_for(tmp_path, tiny_llama, "[" + ", ".join(f'"prompt {i}"' for i in range(40)) + "]")
    budget = 10 * 0.8 * 20    # walltime s × fill × tokens/s
    assert len(plan.elements) > 1
    assert sum(e.n_units for e in plan.elements) == plan.n_units
    for e in plan.elements:
        assert e.est_seconds * 20 <= budget or e.n_units == 1


def test_written_plan_round_trips(tmp_path, tiny_llama):
    plan = plan_for(tmp_path, tiny_llama, '["one", "two"]')
    write_plan(plan, tmp_path / "exp")
    files = read_plan(tmp_path / "exp")
    assert files.meta["spec_hash"] == plan.spec_hash
    assert files.units().num_rows == plan.n_units
    assert pq.read_table(tmp_path / "exp" / "prompts.parquet").column("prompt_text").to_pylist() == ["one", "two"]
    assert [p.label() for p in files.points] == ["greedy", "sample t=0.7"]
    assert not list((tmp_path / "exp").glob(".*.tmp"))


def test_read_plan_types_the_execution_settings_and_models(tmp_path, tiny_llama):
    """Workers read plan.json through typed views built once: the spec's own models, not raw dicts."""
    plan = plan_for(tmp_path, tiny_llama, '["one"]')
    write_plan(plan, tmp_path / "exp")
    files = read_plan(tmp_path / "exp")
    assert files.execution.walltime_seconds == 10 and files.execution.batch_size == 8
    model = files.models["a"]
    assert (model.path, model.fingerprint, model.dtype, model.tensor_parallel) == (
        plan.models["a"]["path"], plan.models["a"]["fingerprint"], "float32", 1)
    assert files.task_type == "generate" and files.variants == plan.variants
    assert [e.model for e in files.elements] == ["a"] and files.model_field("a") == "models[0]"


def test_a_plan_written_before_the_typed_reader_still_loads():
    """tests/fixtures/plans/format1 was written by lmsweep (its spec.yaml beside it) before read_plan typed
    plan.json: the plan on disk is unchanged, so an experiment planned then can still be run and loaded."""
    files = read_plan(FIXTURES / "plans" / "format1")
    ex = files.execution
    assert (ex.backend, ex.batch_size, ex.threads_per_rank) == ("hf", "auto", 2)
    assert ex.pbs is None and ex.slurm is None          # scheduler blocks are submit's; the plan view omits them
    model = files.models["smol"]
    assert (model.source, model.dtype, model.kind, model.kernel_inject) == (
        "package:smollm2-135m-instruct", "bfloat16", "package", None)
    assert files.spec_hash == "f5e0b5b164a78959" and files.task_type == "generate"
    assert [e.n_units for e in files.elements] == [10] and files.units(0).num_rows == 10
    assert [p.max_new_tokens for p in files.points] == [2, 4, 32, 32]


def test_a_damaged_plan_json_is_an_experiment_error_naming_the_field(tmp_path):
    for name in ("plan.json", "plan.parquet", "prompts.parquet"):
        (tmp_path / name).write_bytes((FIXTURES / "plans" / "format1" / name).read_bytes())
    (tmp_path / "plan.json").write_text((tmp_path / "plan.json").read_text().replace('"bfloat16"', '"float8"'))
    with pytest.raises(ExperimentError, match=r"plan.json: models.smol.dtype: does not read as a plan"):
        read_plan(tmp_path)
