"""The classify task: each method's stored scores equal a direct transformers computation; few-shot
choice is deterministic; the plan pairs methods with model kinds; metrics; the sentiment example."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from helpers.cli import REPO, cli
from helpers.task_runs import make_tiny_bert, rows, run_spec
from helpers.tolerances import logprob_tolerance, max_abs_logit
from lmsweep.jobs.errors import SpecError
from lmsweep.results.metrics import accuracy, classification_summary, confusion_matrix, macro_f1
from lmsweep.runner.tasks.classify import ClassifyVariant, build_context, fewshot_indices

REVIEWS = """
prompts:
  - name: reviews
    items:
      - {id: a, label: good, text: "This game is great fun and I loved every level."}
      - {id: b, label: bad, text: "Terrible controls, I hated it."}
      - {id: c, label: good, text: "Once upon a time there was a small cat who lived in a house."}
"""
EXAMPLES = """
  examples:
    - {label: good, text: "I loved every level."}
    - {label: bad, text: "I hated it."}
    - {label: good, text: "Great fun."}
"""


def spec(models: str, task: str, name: str = "cls") -> str:
    return f"name: {name}\nmodels: {models}\n{REVIEWS}\ntask:\n{task}"


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(tiny_llama).eval()


def direct_logprob(tok, model, context: str, continuation: str) -> tuple[float, int, float]:
    """Summed log-probability of `continuation` after `context`, in one unpadded forward pass; its token count
    and the fp32 tolerance of that sum (helpers/tolerances.py: per token, times the tokens)."""
    ctx = tok(context)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    tol = len(cont) * logprob_tolerance(model.config, float(logits.abs().max()))
    return sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)), len(cont), tol


def test_label_likelihood_matches_transformers(tiny_llama, tmp_path, llama):
    task = f"""  type: classify
  method: label_likelihood
  labels:
    - {{bad: terrible, good: great}}         # several tokens each in the tiny vocabulary
    - {{bad: street, good: the}}             # one token each: the single-pass path
  template: "Review: {{text}}\\nSentiment:"
  shots: [0, 2]
  length_norm: [false, true]
{EXAMPLES}"""
    df = rows(run_spec(tmp_path, spec(f"[{{alias: tiny, source: {tiny_llama}}}]", task)))
    assert len(df) == 3 * 2 * 2 * 2
    tok, model = llama
    worst = 0.0
    for _, r in df.iterrows():
        labels = json.loads(r["label_set"])
        params = ClassifyVariant(template=r["template"], labels=labels, label_prefix=" ", example_separator="\n\n",
                                 examples=[{"label": "good", "text": "I loved every level."},
                                           {"label": "bad", "text": "I hated it."},
                                           {"label": "good", "text": "Great fun."}])
        context = build_context(params, r["prompt_text"], list(r["fewshot_indices"]))
        assert len(r["fewshot_indices"]) == r["shots"]
        for name, score, n_tok in zip(r["candidate_labels"], r["label_scores"], r["label_num_tokens"]):
            expected, n, tol = direct_logprob(tok, model, context, " " + labels[name])
            assert n_tok == n
            if r["length_norm"]:                                   # a mean: its tolerance is tol / n
                expected, tol = expected / n, tol / n
            worst = max(worst, abs(score - expected) / tol)        # relative to its tolerance
        assert r["predicted_label"] == r["candidate_labels"][max(range(2), key=lambda j: r["label_scores"][j])]
        assert r["correct"] == (r["predicted_label"] == r["label"])
    assert worst <= 1
    assert df["label_num_tokens"].map(max).max() > 1               # multi-token labels were scored


def test_label_likelihood_with_chat_template(tiny_llama, tmp_path, llama):
    text = f"""name: chat
models: [{{alias: tiny, source: {tiny_llama}}}]
prompts:
  - {{name: p, chat_template: true, system_prompt: "Classify the review.",
     items: [{{id: a, label: good, text: "I loved every level."}}]}}
task: {{type: classify, labels: {{good: great, bad: terrible}}, label_prefix: ""}}
"""
    r = rows(run_spec(tmp_path, text)).iloc[0]
    tok, model = llama
    chat = tok.apply_chat_template([{"role": "system", "content": "Classify the review."},
                                    {"role": "user", "content": "I loved every level."}],
                                   tokenize=False, add_generation_prompt=True)
    ctx = tok(chat, add_special_tokens=False)["input_ids"]
    for name, score in zip(r["candidate_labels"], r["label_scores"]):
        cont = tok({"good": "great", "bad": "terrible"}[name], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0], -1)
        tol = len(cont) * logprob_tolerance(model.config, max_abs_logit(model, [ctx + cont]))
        assert abs(score - sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))) <= tol
    assert r["num_prompt_tokens"] == len(ctx)


def test_fewshot_choice_is_deterministic_and_never_shows_the_prompt():
    params = ClassifyVariant(shots=2, seed=7, examples=[{"text": f"t{i}", "label": "x"} for i in range(6)])
    first = fewshot_indices(params, "t3")
    assert first == fewshot_indices(params, "t3") and 3 not in first and len(set(first)) == 2
    draws = {tuple(fewshot_indices(params.model_copy(update={"seed": s}), "t3")) for s in range(10)}
    assert len(draws) > 1                                             # the seed changes the draw


def test_methods_are_paired_with_model_kinds(tiny_llama, tmp_path_factory):
    from lmsweep.jobs.plan import plan_spec
    from lmsweep.jobs.spec import load_spec

    tmp = tmp_path_factory.mktemp("kinds")
    encoder = make_tiny_bert(tmp / "enc", "encoder", {0: "LABEL_0", 1: "LABEL_1"})
    task = f"""  type: classify
  method: [label_likelihood, embedding_similarity]
  labels: {{bad: a bad review, good: a good review}}
  shots: [0, 2]
{EXAMPLES}"""
    path = tmp / "s.yaml"
    path.write_text(spec(f"[{{alias: lm, source: {tiny_llama}}}, {{alias: enc, source: {encoder}}}]", task))
    plan = plan_spec(load_spec(path))
    units = plan.units.to_pandas()
    methods = units.assign(method=[plan.variants[v]["method"] for v in units["variant"]])
    # the LM runs 0 and 2 shots; the encoder runs one embedding variant (shots do not apply to it)
    assert methods.groupby("model")["method"].agg(set).to_dict() == {
        "lm": {"label_likelihood"}, "enc": {"embedding_similarity"}}
    assert methods.groupby("model").size().to_dict() == {"lm": 6, "enc": 3}

    path.write_text(spec(f"[{{alias: lm, source: {tiny_llama}}}]", task))
    with pytest.raises(SpecError, match="embedding_similarity runs on encoder models.*lm: causal_lm"):
        plan_spec(load_spec(path))


def test_gold_label_outside_the_label_set_is_refused(tiny_llama, tmp_path):
    from lmsweep.jobs.plan import plan_spec
    from lmsweep.jobs.spec import load_spec

    path = tmp_path / "s.yaml"
    labels = "[{good: g, bad: b}, {good: g, awful: a}]"        # the second set has no 'bad'
    path.write_text(spec(f"[{{alias: lm, source: {tiny_llama}}}]", f"  type: classify\n  labels: {labels}\n"))
    with pytest.raises(SpecError, match="prompt 'b' .* gold label 'bad', which is not in the label set"):
        plan_spec(load_spec(path))


def test_embedding_similarity_matches_transformers(tmp_path):
    from lmsweep.jobs.model_sources import resolve

    minilm = resolve("package:all-minilm-l6-v2").path
    task = """  type: classify
  method: embedding_similarity
  labels: {bad: a negative review, good: a positive review}
"""
    df = rows(run_spec(tmp_path, spec("[{alias: minilm, source: 'package:all-minilm-l6-v2'}]", task)))
    tok, model = AutoTokenizer.from_pretrained(minilm), AutoModel.from_pretrained(minilm).eval()

    def embed(text):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            v = model(**enc).last_hidden_state[0].mean(0)
        return v / v.norm()

    labels = {n: embed(t) for n, t in {"bad": "a negative review", "good": "a positive review"}.items()}
    for _, r in df.iterrows():
        q = embed(r["prompt_text"])
        expected = [float(q @ labels[n]) for n in r["candidate_labels"]]
        assert max(abs(a - b) for a, b in zip(r["label_scores"], expected)) < 1e-5
    assert df["correct"].notna().all()


def test_pipeline_text_and_token_classification_on_tiny_heads(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heads")
    seq = make_tiny_bert(tmp / "seq", "sequence", {0: "NEG", 1: "POS"})
    nli = make_tiny_bert(tmp / "nli", "sequence", {0: "contradiction", 1: "neutral", 2: "entailment"}, seed=1)
    ner = make_tiny_bert(tmp / "ner", "token", {0: "O", 1: "B-PER", 2: "I-PER"})

    text_task = "  type: classify\n  method: pipeline\n  labels: {bad: NEG, good: POS}\n"
    df = rows(run_spec(tmp / "t", spec(f"[{{alias: seq, source: {seq}}}]", text_task)))
    tok, model = AutoTokenizer.from_pretrained(seq), AutoModel.from_pretrained(seq)
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(seq).eval()
    for _, r in df.iterrows():
        with torch.no_grad():
            probs = torch.softmax(model(**tok(r["prompt_text"], return_tensors="pt")).logits[0], -1).tolist()
        assert list(r["candidate_labels"]) == ["bad", "good"]            # NEG/POS mapped to the gold names
        assert max(abs(a - b) for a, b in zip(r["label_scores"], probs)) < 1e-5
        assert r["correct"] == (r["predicted_label"] == r["label"])

    zs_task = ("  type: classify\n  method: pipeline\n  pipeline_task: zero-shot-classification\n"
               "  labels: {bad: a bad game, good: a good game}\n")
    df = rows(run_spec(tmp / "z", spec(f"[{{alias: nli, source: {nli}}}]", zs_task)))
    assert all(abs(sum(s) - 1) < 1e-5 for s in df["label_scores"])     # softmax over the candidates

    ner_task = "  type: classify\n  method: pipeline\n  pipeline_task: token-classification\n"
    df = rows(run_spec(tmp / "n", spec(f"[{{alias: ner, source: {ner}}}]", ner_task)))
    tok = AutoTokenizer.from_pretrained(ner)
    from transformers import AutoModelForTokenClassification
    model = AutoModelForTokenClassification.from_pretrained(ner).eval()
    for _, r in df.iterrows():
        enc = tok(r["prompt_text"], return_tensors="pt")
        with torch.no_grad():
            best = model(**enc).logits[0].argmax(-1).tolist()
        assert list(r["token_labels"]) == [model.config.id2label[i] for i in best]
        assert list(r["tokens"]) == tok.convert_ids_to_tokens(enc["input_ids"][0])
        assert isinstance(json.loads(r["entities"]), list)
        assert pd.isna(r["predicted_label"]) and pd.isna(r["correct"])


def test_metrics_on_a_known_confusion():
    gold = pd.Series(["pos", "pos", "pos", "neg", "neg", "neu"])
    pred = pd.Series(["pos", "neg", "pos", "neg", "pos", "neg"])
    assert accuracy(gold, pred) == pytest.approx(3 / 6)
    cm = confusion_matrix(gold, pred, ["neg", "neu", "pos"])
    assert cm.to_numpy().tolist() == [[1, 0, 1], [1, 0, 0], [1, 0, 2]]
    # F1: neg 2·1/(2+3)=0.4, neu 0, pos 2·2/(3+3)=0.667
    assert macro_f1(gold, pred) == pytest.approx((0.4 + 0 + 2 / 3) / 3)


def test_summary_has_one_row_per_configuration():
    df = pd.DataFrame({
        "model": ["m"] * 4, "method": ["label_likelihood"] * 4, "shots": [0, 0, 2, 2], "template": ["{text}"] * 4,
        "label_set": ['{"a": "x", "b": "y"}'] * 4, "label": ["a", "b", "a", "b"],
        "predicted_label": ["a", "a", "a", "b"], "candidate_labels": [["a", "b"]] * 4,
    })
    out = classification_summary(df)
    assert list(out["shots"]) == [0, 2] and list(out["accuracy"]) == [0.5, 1.0]
    assert list(out["confusion"]) == ["predicted a b; gold a: 1 0; gold b: 1 0",
                                      "predicted a b; gold a: 1 0; gold b: 0 1"]
    assert "template" not in out.columns                               # constant columns are dropped
    no_gold = classification_summary(df.assign(label=None))
    assert list(no_gold["predicted"]) == ["a: 2", "a: 1; b: 1"] and list(no_gold["n"]) == [2, 2]


@pytest.mark.slow
def test_sentiment_example_reports_accuracy_per_method_shots_template(tmp_path, smollm2_dir):
    spec_file = REPO / "configs" / "sentiment.yaml"
    cli("run", str(spec_file), "--output-dir", str(tmp_path), "--quiet", check=True, timeout=1200)
    proc = cli("results", str(tmp_path / "sentiment"), "--summary", "--csv", check=True)
    from io import StringIO

    table = pd.read_csv(StringIO(proc.stdout))
    assert {"model", "method", "shots", "template", "accuracy", "macro_f1", "confusion"} <= set(table.columns)
    ll = table[table["method"] == "label_likelihood"]
    assert set(ll["model"]) == {"smollm2"} and set(ll["shots"]) == {0, 2, 4}
    assert ll.groupby(["shots", "template"]).size().eq(2).all()          # × two label sets
    emb = table[table["method"] == "embedding_similarity"]
    assert set(emb["model"]) == {"minilm"} and set(emb["shots"]) == {0} and len(emb) == 4
    assert table["accuracy"].between(0, 1).all() and (table["n"] == 12).all()
    assert ll[ll["shots"] == 4]["accuracy"].mean() > 0.6                  # few-shot SmolLM2 beats chance
