"""Plan-time checks every task gets: the model kinds it runs on and the execution backends that serve it.
A mismatch is a SpecError naming the model, its kind and what the task needs, before anything is written."""
from __future__ import annotations

import pytest

from helpers.cli import cli
from helpers.task_runs import make_tiny_bert
from lmsweep.core.task import Task
from lmsweep.core.task_registry import all_tasks, get_task
from lmsweep.jobs.errors import SpecError
from lmsweep.jobs.model_facts import check_backend
from lmsweep.jobs.plan import plan_spec
from lmsweep.jobs.spec import load_spec

MINILM = "{alias: minilm, source: 'package:all-minilm-l6-v2'}"


def spec_file(tmp_path, models: str, task: str, extra: str = ""):
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: kinds\nmodels: [{models}]\nprompts: [\"Shakespeare was a\"]\ntask: {task}\n{extra}")
    return path


@pytest.mark.parametrize("task", ["generate", "next_token", "loglikelihood"])
def test_causal_lm_tasks_refuse_an_encoder_at_plan_time(task, tmp_path):
    """Before: planned, then every unit failed with AttributeError: 'NoneType' object has no attribute 'layers'."""
    spec = spec_file(tmp_path, MINILM, task)
    out = tmp_path / "runs"
    proc = cli("run", str(spec), "--output-dir", str(out), "--quiet")
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert "spec.yaml:2" in message and "'minilm'" in message and "package:all-minilm-l6-v2" in message
    assert "is an encoder model" in message and f"the {task} task runs on causal_lm models" in message
    assert not out.exists() or not any(out.iterdir())                      # nothing written


@pytest.mark.parametrize("task", ["attention", "hidden_states"])
def test_base_model_tasks_refuse_a_classification_head(task, tmp_path):
    head = make_tiny_bert(tmp_path / "clf", "sequence", {0: "neg", 1: "pos"})
    spec = load_spec(spec_file(tmp_path, f"{{alias: clf, source: {head}}}", f"{{type: {task}, layers: [0]}}"))
    with pytest.raises(SpecError, match=f"'clf' .* is a sequence_classification model; the {task} task runs on "
                                        "causal_lm or encoder models"):
        plan_spec(spec)


def test_tokenize_runs_on_any_kind(tmp_path):
    head = make_tiny_bert(tmp_path / "clf", "sequence", {0: "neg", 1: "pos"})
    plan = plan_spec(load_spec(spec_file(tmp_path, f"{MINILM}, {{alias: clf, source: {head}}}", "tokenize")))
    assert plan.n_units == 2


def test_every_task_declares_its_kinds_and_backends():
    for task in all_tasks():
        assert set(task.backends) <= {"hf", "deepspeed", "vllm"}, task.name
        variant = task.variant(task.Params().variants()[0]) if task.name != "classify" else None
        if variant is not None and task.auto_class is not None:
            assert task.model_kinds(variant), task.name                   # a model-loading task names kinds
    assert get_task("tokenize").model_kinds(get_task("tokenize").variant({"type": "tokenize"})) is None


def test_a_backend_the_task_does_not_declare_is_refused(tmp_path, tiny_llama):
    class HfOnly(Task):
        name = "hf_only"
        backends = ("hf",)

    spec = load_spec(spec_file(tmp_path, f"{{alias: tiny, source: {tiny_llama}}}", "next_token",
                               "execution: {backend: deepspeed}\n"))
    with pytest.raises(SpecError, match="the hf_only task cannot run on backend 'deepspeed'; backends that serve "
                                        "it: hf") as e:
        check_backend(spec, HfOnly())
    assert e.value.field == "execution.backend" and e.value.line == 5
    check_backend(spec, get_task("next_token"))                           # hf and deepspeed by default


def test_a_model_of_unknown_kind_is_admitted_only_where_the_task_needs_one_kind(tmp_path, tiny_llama):
    import json
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(tiny_llama, odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "architectures": ["OddForConditionalGeneration"]}))
    model = f"{{alias: odd, source: {odd}}}"
    assert plan_spec(load_spec(spec_file(tmp_path, model, "next_token"))).n_units == 1
    mixed = "{type: classify, labels: [a, b], method: [label_likelihood, embedding_similarity]}"
    with pytest.raises(SpecError, match="'odd' .* is a model of unknown kind .*; the classify task runs on causal_lm "
                                        "or encoder models"):
        plan_spec(load_spec(spec_file(tmp_path, model, mixed)))
