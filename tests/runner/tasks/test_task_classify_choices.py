"""classify with per-item choices (lm-eval's doc_to_choice): one spec holds a mixed multiple-choice set, each
prompt scored among its own candidates exactly as transformers scores them; the choices are part of the unit
id only where a prompt has some; bad choices are plan-time errors naming the prompt."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.task_runs import make_tiny_bert, rows, run_spec
from helpers.tolerances import logprob_tolerance, max_abs_logit
from lmsweep.jobs.errors import SpecError
from lmsweep.jobs.plan import plan_spec
from lmsweep.jobs.spec import load_spec
from lmsweep.runner import shared_context
from lmsweep.runner.tasks.classify import item_choices

ITEMS = """
      - {id: review, label: good, text: "This game is great fun and I loved every level."}
      - {id: capital, label: Paris, text: "The capital of France is", meta: {choices: [Rome, Paris, the street]}}
      - {id: walk, label: park, text: "I skip across", meta: {choices: {street: the street, park: the park}}}
"""


def spec(models: str, items: str = ITEMS, task: str = "{type: classify, labels: {bad: terrible, good: great}}") -> str:
    return f"name: mc\nmodels: {models}\nprompts:\n  - name: mixed\n    items:{items}task: {task}\n"


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    """The mixed set scored with contexts shared (the default) and per (prompt, label) sequence."""
    tmp = tmp_path_factory.mktemp("choices")
    models = f"[{{alias: tiny, source: {tiny_llama}}}]"
    shared = rows(run_spec(tmp / "shared", spec(models))).set_index("prompt_id")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shared_context, "supported", lambda model: False)
        per_pair = rows(run_spec(tmp / "per_pair", spec(models))).set_index("prompt_id")
    return shared, per_pair


def test_each_prompt_is_scored_among_its_own_choices(runs, tiny_llama):
    df = runs[0]
    assert list(df.loc["review", "candidate_labels"]) == ["bad", "good"]          # the spec's label set
    assert list(df.loc["capital", "candidate_labels"]) == ["Rome", "Paris", "the street"]     # a list: as given
    assert list(df.loc["walk", "candidate_labels"]) == ["park", "street"]          # a mapping: by name
    assert json.loads(df.loc["walk", "label_set"]) == {"park": "the park", "street": "the street"}
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    multi = 0
    for key, r in df.iterrows():
        words = json.loads(r["label_set"])
        context = tok(r["prompt_text"])["input_ids"]
        for name, score, n_tok in zip(r["candidate_labels"], r["label_scores"], r["label_num_tokens"]):
            cont = tok(" " + words[name], add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([context + cont])).logits[0].float(), -1)
            want = sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(cont))
            tol = len(cont) * logprob_tolerance(model.config, max_abs_logit(model, [context + cont]))
            assert n_tok == len(cont) and abs(score - want) <= tol, (key, name)
            multi += len(cont) > 1
        assert r["correct"] == (r["predicted_label"] == r["label"])
    assert multi >= 2                                     # several-token choices went through the cache


def test_the_shared_context_path_agrees_with_the_per_pair_path(runs, tiny_llama):
    shared, per_pair = runs
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tol = logprob_tolerance(model.config, max_abs_logit(model, [tok(t)["input_ids"] for t in shared["prompt_text"]]))
    for key, r in shared.iterrows():
        other = per_pair.loc[key]
        assert list(r["candidate_labels"]) == list(other["candidate_labels"])
        for a, b, n in zip(r["label_scores"], other["label_scores"], r["label_num_tokens"]):
            assert abs(a - b) <= n * tol, key
    assert (shared["unit_id"] == per_pair["unit_id"]).all()


def test_choices_enter_the_unit_id_only_where_a_prompt_has_them(tiny_llama, tmp_path):
    models = f"[{{alias: tiny, source: {tiny_llama}}}]"

    def ids(items: str) -> dict[str, str]:
        path = tmp_path / "s.yaml"
        path.write_text(spec(models, items))
        plan = plan_spec(load_spec(path))
        units = plan.units.to_pandas()
        return {plan.prompts[i].id: uid for i, uid in zip(units["prompt_index"], units["unit_id"])}

    mixed = ids(ITEMS)
    plain = ids('\n      - {id: review, label: good, text: "This game is great fun and I loved every level."}\n')
    assert mixed["review"] == plain["review"]             # a prompt without choices keeps its id
    other = ids(ITEMS.replace("[Rome, Paris, the street]", "[Rome, Paris]"))
    assert other["capital"] != mixed["capital"] and other["walk"] == mixed["walk"]


@pytest.mark.parametrize("items,task,message", [
    ('\n      - {id: q, label: Berlin, text: "x", meta: {choices: [Rome, Paris]}}\n', None,
     "prompt 'q' of set 'mixed' has gold label 'Berlin', which is not among its choices"),
    ('\n      - {id: q, text: "x", meta: {choices: 3}}\n', None,
     "prompt 'q' of set 'mixed': column 'choices': expected a list of label texts or a mapping"),
    ('\n      - {id: q, text: "x", meta: {choices: [Rome]}}\n', None, "needs at least two choices"),
    ('\n      - {id: q, text: "x", meta: {choices: [Rome, Rome]}}\n', None, "a choice appears twice"),
    ('\n      - {id: q, text: "x"}\n', "{type: classify}",
     "task.labels: required for label_likelihood.*prompt 'q' of set 'mixed' has no choices of its own"),
])
def test_bad_choices_are_refused_at_plan_time(tiny_llama, tmp_path, items, task, message):
    path = tmp_path / "s.yaml"
    path.write_text(spec(f"[{{alias: tiny, source: {tiny_llama}}}]", items, task or
                         "{type: classify, labels: {bad: terrible, good: great}}"))
    with pytest.raises(SpecError, match=message):
        plan_spec(load_spec(path))


def test_text_classification_refuses_choices(tmp_path):
    """It predicts the model's own labels (id2label): choices it cannot score are refused, not ignored."""
    head = make_tiny_bert(tmp_path / "seq", "sequence", {0: "NEG", 1: "POS"})
    path = tmp_path / "s.yaml"
    path.write_text(spec(f"[{{alias: seq, source: {head}}}]", '\n      - {id: q, text: "x", meta: {choices: [a, b]}}\n',
                         "{type: classify, method: pipeline}"))
    with pytest.raises(SpecError, match="text-classification does not score; per-item choices need"):
        plan_spec(load_spec(path))


def test_choices_from_a_file_column_a_csv_cell_or_a_dataset_list():
    assert item_choices('{"choices": ["b", "a"]}', "choices") == {"b": "b", "a": "a"}
    assert item_choices({"opts": '["x y", "z"]'}, "opts") == {"x y": "x y", "z": "z"}        # JSON in a CSV cell
    assert item_choices({"choices": {"yes": "Yes.", "no": "No."}}, "choices") == {"yes": "Yes.", "no": "No."}
    assert item_choices("{}", "choices") is None
    with pytest.raises(ValueError, match="empty choice text"):
        item_choices({"choices": ["a", " "]}, "choices")
