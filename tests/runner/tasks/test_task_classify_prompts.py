"""classify's prompts: templates refuse unknown placeholders and take doubled braces literally; few-shot
draws are label-balanced by default (few-shot unit ids say so); the scored prompt is stored; the
confusion matrix names its axes."""
from __future__ import annotations

from collections import Counter

import pytest
from transformers import AutoTokenizer

from helpers.cli import cli
from helpers.task_runs import rows, run_spec
from lmsweep.jobs.errors import SpecError
from lmsweep.jobs.plan import plan_spec
from lmsweep.jobs.spec import load_spec
from lmsweep.results.metrics import classification_summary
from lmsweep.runner.tasks.classify import ClassifyVariant, build_context, fewshot_indices, fill

EXAMPLES = [{"label": "good", "text": f"good {i}"} for i in range(4)] + \
           [{"label": "bad", "text": f"bad {i}"} for i in range(4)]


def spec_text(models: str, task: str) -> str:
    return f"""name: cls
models: {models}
prompts:
  - name: p
    items:
      - {{id: a, label: good, text: "I loved every level."}}
      - {{id: b, label: bad, text: "I hated it."}}
task: {task}
"""


@pytest.mark.parametrize("template,named", [("{text} {other}", "{other}"), ("{text} {0}", "{0}"),
                                            ("{text!r}", "{text!r}"), ("Review: {text} }", "{{ or }}")])
def test_an_unknown_placeholder_or_a_lone_brace_is_a_plan_time_error(template, named, tmp_path):
    """Before: `{other}` stayed in the prompt and the spec ran."""
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text("[{alias: m, source: 'package:smollm2-135m-instruct'}]",
                              f"{{type: classify, labels: [good, bad], template: {template!r}}}"))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert named in str(e.value) and "task" in str(e.value) and "spec.yaml:" in str(e.value)
    proc = cli("validate", str(path))
    assert proc.returncode == 2 and named in proc.stderr


def test_doubled_braces_are_literal_and_the_rendered_prompt_is_stored(tiny_llama, tmp_path):
    task = """
  type: classify
  labels: [good, bad]
  template: 'JSON {{"review": "{text}"}} ->'
  shots: 2
  examples: [{label: good, text: "Great fun."}, {label: bad, text: "Awful."}, {label: good, text: "Nice."}]
"""
    df = rows(run_spec(tmp_path, spec_text(f"[{{alias: tiny, source: {tiny_llama}}}]", task))).set_index("prompt_id")
    r = df.loc["a"]
    assert r["rendered_prompt"].endswith('JSON {"review": "I loved every level."} ->')
    variant = ClassifyVariant(labels={"good": "good", "bad": "bad"}, template='JSON {{"review": "{text}"}} ->', shots=2,
                              examples=[{"label": "good", "text": "Great fun."}, {"label": "bad", "text": "Awful."},
                                        {"label": "good", "text": "Nice."}])
    assert r["rendered_prompt"] == build_context(variant, "I loved every level.", list(r["fewshot_indices"]))
    assert fill("{{text}} is {text}", "x") == "{text} is x"


def test_the_rendered_prompt_is_what_the_chat_template_made(tiny_llama, tmp_path):
    text = f"""name: chat
models: [{{alias: tiny, source: {tiny_llama}}}]
prompts:
  - {{name: p, chat_template: true, items: [{{id: a, label: good, text: "I loved every level."}}]}}
task: {{type: classify, labels: {{good: great, bad: terrible}}}}
"""
    r = rows(run_spec(tmp_path, text)).iloc[0]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    assert r["rendered_prompt"] == tok.apply_chat_template([{"role": "user", "content": "I loved every level."}],
                                                           tokenize=False, add_generation_prompt=True)


def test_fewshot_draws_are_label_balanced_by_default():
    """Before: the plain draw gave some 2-shot prompts two examples of one label."""
    prompts = [f"prompt {i}" for i in range(40)]
    for shots in (2, 4, 6):
        balanced = ClassifyVariant(shots=shots, examples=EXAMPLES)
        plain = balanced.model_copy(update={"balanced": False})
        counts = [Counter(EXAMPLES[i]["label"] for i in fewshot_indices(balanced, p)) for p in prompts]
        assert all(c["good"] == c["bad"] == shots // 2 for c in counts)
        unbalanced = [Counter(EXAMPLES[i]["label"] for i in fewshot_indices(plain, p)) for p in prompts]
        assert any(c["good"] != c["bad"] for c in unbalanced)
        for p in prompts:                       # a draw that was balanced already is kept as it was
            drawn = fewshot_indices(plain, p)
            if Counter(EXAMPLES[i]["label"] for i in drawn)["good"] == shots // 2:
                assert fewshot_indices(balanced, p) == drawn


def test_balanced_draws_with_too_few_of_a_label_and_many_labels():
    few = ClassifyVariant(shots=4, examples=[{"label": "a", "text": "a0"}] + [{"label": "b", "text": f"b{i}"}
                                                                             for i in range(5)])
    assert all(Counter(few.examples[i].label for i in fewshot_indices(few, f"p{j}")) == {"a": 1, "b": 3}
               for j in range(10))
    many = ClassifyVariant(shots=10, examples=[{"label": f"l{i}", "text": f"t{i}-{j}"} for i in range(10)
                                               for j in range(3)])
    for j in range(5):                          # 10 labels, 10 shots: rejection rarely succeeds, dealing does
        drawn = fewshot_indices(many, f"p{j}")
        assert len(set(drawn)) == 10 and len({many.examples[i].label for i in drawn}) == 10
        assert drawn == fewshot_indices(many, f"p{j}")


def test_fewshot_unit_ids_name_the_draw_and_zero_shot_ids_do_not_move(tmp_path, tiny_llama):
    """Few-shot variants say `balanced` in their hashed parameters, so their ids moved with the new draw
    (rows drawn the old way rerun instead of counting as done); zero-shot units draw nothing and keep
    their ids whatever `balanced` says; the spec hash moves only when balanced is set off its default."""
    def plan(shots: int, extra: str):
        path = tmp_path / "spec.yaml"
        path.write_text(spec_text(f"[{{alias: tiny, source: {tiny_llama}}}]",
                                  f"{{type: classify, labels: [good, bad], shots: {shots}, examples: [{{label: good, "
                                  f"text: x}}, {{label: bad, text: y}}]{extra}}}"))
        return plan_spec(load_spec(path))

    def ids(shots: int, extra: str) -> list[str]:
        return sorted(plan(shots, extra).units.column("unit_id").to_pylist())

    assert ids(1, "") == ids(1, ", balanced: true")
    assert set(ids(1, ", balanced: false")).isdisjoint(ids(1, ""))
    assert [v["balanced"] for v in plan(1, "").variants] == [True]
    assert [v["balanced"] for v in plan(1, ", balanced: false").variants] == [False]
    assert "balanced" not in plan(0, "").variants[0] and ids(0, "") == ids(0, ", balanced: false")
    assert plan(1, "").spec_hash == plan(1, ", balanced: true").spec_hash != plan(1, ", balanced: false").spec_hash


def test_the_confusion_matrix_names_its_axes():
    import pandas as pd

    df = pd.DataFrame({"model": "m", "method": "label_likelihood", "label": ["neg", "neg", "pos"],
                       "predicted_label": ["neg", "pos", "pos"], "candidate_labels": [["neg", "pos"]] * 3})
    assert list(classification_summary(df)["confusion"]) == ["predicted neg pos; gold neg: 1 1; gold pos: 0 1"]
