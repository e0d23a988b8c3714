"""lm-evaluation-harness's metrics (issue 26d) and summaries that read well (26e), checked against values
worked out by hand here: acc_norm divides by characters, acc_bytes by UTF-8 bytes, stderr is lm-eval's
mean_stderr; word/byte perplexity and bits-per-byte sum over the corpus before dividing."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from helpers.task_runs import run_spec
from lmsweep.results import lm_eval
from lmsweep.results.load import load
from lmsweep.results.summary import summarize


def test_mean_stderr_is_the_sample_deviation_over_root_n():
    # values 1, 0, 1, 1: mean 0.75, squared deviations 1/16, 9/16, 1/16, 1/16 → sample variance (12/16)/3 = 0.25
    assert lm_eval.mean_stderr([1, 0, 1, 1]) == pytest.approx(math.sqrt(0.25) / 2, rel=1e-15)
    assert math.isnan(lm_eval.mean_stderr([1.0]))


def test_word_and_byte_counts_follow_lm_eval():
    assert lm_eval.count_words("a  b\tc") == 3
    assert lm_eval.count_words(" a b ") == 4                  # re.split keeps the empty ends
    assert lm_eval.count_bytes("café 🎉") == 10                # é two bytes, the emoji four


def test_rolling_metrics_divide_the_corpus_sums():
    lls, texts = [-10.0, -20.0], ["one two", "three four five"]     # 5 words, 7 + 15 = 22 bytes
    got = lm_eval.rolling_metrics(lls, texts)
    assert got["word_perplexity"] == pytest.approx(math.exp(30 / 5), rel=1e-15)
    assert got["byte_perplexity"] == pytest.approx(math.exp(30 / 22), rel=1e-15)
    assert got["bits_per_byte"] == pytest.approx(30 / 22 / math.log(2), rel=1e-15)


def classify_rows(length_norm: bool):
    """Three label_likelihood rows over labels pos → 'yes' (3 chars, 3 bytes) and neg → 'nö' (2 chars, 3 bytes);
    summed log-likelihoods chosen so acc, acc_norm and acc_bytes disagree."""
    lls = [(-3.0, -2.5), (-3.3, -2.4), (-1.0, -4.0)]        # (neg, pos) in candidate order
    tokens = [2, 1]
    rows = []
    for (neg, pos), gold in zip(lls, ["pos", "pos", "neg"]):
        scores = [neg / tokens[0], pos / tokens[1]] if length_norm else [neg, pos]
        best = ["neg", "pos"][max(range(2), key=lambda i: scores[i])]
        rows.append({"model": "m", "method": "label_likelihood", "label": gold, "predicted_label": best,
                     "candidate_labels": ["neg", "pos"], "label_scores": scores, "label_num_tokens": tokens,
                     "length_norm": length_norm, "label_set": json.dumps({"neg": "nö", "pos": "yes"}),
                     "shots": 0, "template": "{text}", "fewshot_seed": 0, "pipeline_task": None})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("length_norm", [False, True])
def test_classify_summary_has_acc_norm_acc_bytes_and_their_stderr(length_norm):
    # by characters: row 1 neg -3/2 = -1.5 vs pos -2.5/3 = -0.83 → pos (right); row 2 -1.65 vs -0.8 → pos
    # (right); row 3 -0.5 vs -1.33 → neg (right): acc_norm 1. By bytes (3 each) the raw argmax: pos, pos, neg:
    # acc_bytes 1. The summary's own accuracy (by tokens under length_norm) gets lm-eval's stderr.
    df = classify_rows(length_norm)
    table = summarize(df, "classify")
    row = table.iloc[0]
    hits = (df["label"] == df["predicted_label"]).astype(float).tolist()
    assert row["accuracy_stderr"] == pytest.approx(lm_eval.mean_stderr(hits), rel=1e-12)
    assert row["acc_norm"] == 1.0 and row["acc_norm_stderr"] == 0.0
    assert row["acc_bytes"] == 1.0


def test_acc_norm_and_acc_bytes_part_where_characters_and_bytes_differ():
    # one row, gold neg: neg 'nö' ll -2.0 (2 chars, 3 bytes), pos 'yes' ll -2.9 (3 chars, 3 bytes)
    # chars: -1.0 vs -0.967 → pos (wrong); bytes: -0.667 vs -0.967 → neg (right)
    row = {"method": "label_likelihood", "candidate_labels": ["neg", "pos"], "label_scores": [-2.0, -2.9],
           "label_num_tokens": [1, 1], "length_norm": False, "label_set": json.dumps({"neg": "nö", "pos": "yes"})}
    assert lm_eval.choice_predictions(row) == ("pos", "neg")


PROMPTS = """
prompts:
  - name: zeta
    items:
      - {id: z1, text: "The cat sat", meta: {continuation: " on the mat"}}
      - {id: z2, text: "Once upon a time there was a cat."}
  - name: alpha
    items:
      - {id: a1, text: "A dog and a  cat."}
"""


@pytest.fixture(scope="module")
def ll(tiny_llama, tmp_path_factory):
    return load(run_spec(tmp_path_factory.mktemp("llsum"), f"name: ll\nmodels: [{{alias: tiny, source: {tiny_llama}}}]"
                                                           f"\n{PROMPTS}\ntask: loglikelihood\n"))


def test_loglikelihood_summary_splits_prompt_sets_and_kinds_in_spec_order(ll):
    table = summarize(ll, "loglikelihood")
    assert list(zip(table["prompt_set"], table["kind"])) == [("zeta", "pair"), ("zeta", "text"), ("alpha", "text")]
    assert "variant" not in table.columns                  # one configuration: nothing to tell apart
    for (prompt_set, kind), row in table.set_index(["prompt_set", "kind"]).iterrows():
        g = ll[(ll["prompt_set"] == prompt_set) & ll["continuation"].isna().eq(kind == "text")]
        assert row["perplexity"] == pytest.approx(math.exp(-g["logprob"].sum() / g["num_scored_tokens"].sum()))
        if kind == "text":
            text, lp = g["prompt_text"].iloc[0], g["logprob"].iloc[0]
            words, nbytes = len(text.split()), len(text.encode())
            assert row["word_perplexity"] == pytest.approx(math.exp(-lp / words), rel=1e-12)
            assert row["byte_perplexity"] == pytest.approx(math.exp(-lp / nbytes), rel=1e-12)
            assert row["bits_per_byte"] == pytest.approx(-lp / nbytes / math.log(2), rel=1e-12)
        else:
            assert math.isnan(row["word_perplexity"])


def test_tokenize_summary_shows_pieces_escaped_and_unk_is_not_special(tiny_llama, tmp_path):
    df = load(run_spec(tmp_path, f"name: tk\nmodels: [{{alias: tiny, source: {tiny_llama}}}, "
                                 "{alias: minilm, source: 'package:all-minilm-l6-v2'}]\n"
                                 "prompts: [{name: p, items: [{id: e, text: \"party 🎉  now\"}]}]\ntask: tokenize\n"))
    table = summarize(df, "tokenize").set_index("model")
    minilm = df[df["model"] == "minilm"].iloc[0]
    assert "[UNK]" in list(minilm["tokens"]) and list(minilm["special_tokens"]) == ["[CLS]", "[SEP]"]
    assert table.loc["minilm", "num_special_tokens"] == 2
    assert "�" not in table.loc["tiny", "tokens"] and "�" not in table.loc["minilm", "tokens"]
    tiny = df[df["model"] == "tiny"].iloc[0]
    assert table.loc["tiny", "tokens"].split("|") == [p.replace(" ", "␣") for p in tiny["tokens"]]
