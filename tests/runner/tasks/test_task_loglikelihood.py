"""The loglikelihood task: stored scores equal a direct transformers computation (SmolLM2, fp32), rolling
windows score each token once with the context they promise, batches do not change scores, and a
pair's continuation is part of its unit id."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.cli import REPO, cli
from helpers.task_runs import rows, run_spec
from helpers.tolerances import logprob_tolerance, max_abs_logit
from lmsweep.runner.tasks import loglikelihood
from lmsweep.runner.tasks.loglikelihood import logit_groups, rolling_windows

PAIRS = [("The capital of France is", " Paris"), ("The capital of France is", " Rome"),
         ("Question: What is two plus two?\nAnswer: ", "four"),           # the trailing space moves
         ("One, two, three,", " four, five, six")]
TEXTS = ["Once upon a time there was a small cat who lived in a house.",
         "The animal didn't cross the street because it was too tired."]


def prompt_file(path, pairs=PAIRS, texts=TEXTS):
    lines = [{"id": f"pair{i}", "text": c, "continuation": x} for i, (c, x) in enumerate(pairs)]
    lines += [{"id": f"text{i}", "text": t} for i, t in enumerate(texts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def spec(models: str, prompts: str, task: str = "{type: loglikelihood}", batch: int = 8) -> str:
    return f"name: ll\nmodels: {models}\nprompts: [{{name: p, file: {prompts}}}]\ntask: {task}\n" \
           f"execution: {{batch_size: {batch}}}\n"


def direct_logprobs(model, sequence: list[int], first: int) -> list[float]:
    """log p(token t | all tokens before t) for t >= first, from one unpadded forward pass."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([sequence])).logits[0].float(), -1)
    return [float(logp[t - 1, sequence[t]]) for t in range(first, len(sequence))]


@pytest.fixture(scope="module")
def smol_runs(tmp_path_factory, smollm2_dir):
    """SmolLM2 in float32 on pairs and texts, in one batch and one unit per batch."""
    tmp = tmp_path_factory.mktemp("ll")
    prompts = prompt_file(tmp / "pairs.jsonl")
    models = "[{alias: smol, source: 'package:smollm2-135m-instruct', dtype: float32}]"
    return {b: rows(run_spec(tmp / f"b{b}", spec(models, prompts, batch=b))).set_index("prompt_id")
            for b in (1, 8)}


def direct_sequences(tok) -> dict[str, tuple[list[int], int]]:
    """Each prompt's whole token sequence and the position of its first scored token, as the task scores it."""
    out = {}
    for i, (context, continuation) in enumerate(PAIRS):
        if context.endswith(" "):
            context, continuation = context[:-1], " " + continuation
        out[f"pair{i}"] = (tok(context + continuation)["input_ids"], len(tok(context)["input_ids"]))
    for i, text in enumerate(TEXTS):
        out[f"text{i}"] = ([tok.bos_token_id, *tok(text)["input_ids"]], 1)      # the first token after BOS
    return out


@pytest.fixture(scope="module")
def smol_direct(smollm2_dir):
    """SmolLM2 as transformers loads it, each prompt's sequence, and the fp32 per-token tolerance for it."""
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    sequences = direct_sequences(tok)
    tol = logprob_tolerance(model.config, max_abs_logit(model, [seq for seq, _ in sequences.values()]))
    return tok, model, sequences, tol


def assert_within(got: pd.Series, want: dict[str, list[float]], tol: float) -> None:
    """Per token within `tol` (helpers/tolerances.py), and so each sum within k·tol for its k tokens."""
    for key, w in want.items():
        g = list(got.loc[key, "token_logprobs"])
        assert len(g) == len(w), key
        worst = max(abs(a - b) for a, b in zip(g, w))
        assert worst <= tol, f"{key}: per-token |Δ log p| {worst:.2e} > {tol:.2e}"
        assert abs(got.loc[key, "logprob"] - sum(w)) <= len(w) * tol, key


@pytest.mark.slow
def test_scores_equal_a_direct_transformers_computation(smol_runs, smol_direct):
    df = smol_runs[8]
    tok, model, sequences, tol = smol_direct
    want = {key: direct_logprobs(model, seq, first) for key, (seq, first) in sequences.items()}
    for i, (context, continuation) in enumerate(PAIRS):
        seq, first = sequences[f"pair{i}"]
        r = df.loc[f"pair{i}"]
        assert list(r["scored_token_ids"]) == seq[first:]
        moved = " " + continuation if context.endswith(" ") else continuation    # the trailing space moves
        assert tok.decode(list(r["scored_token_ids"])) == moved
        assert r["num_scored_tokens"] == len(want[f"pair{i}"]) and r["continuation"] == moved
        assert r["perplexity"] == pytest.approx(math.exp(-r["logprob"] / len(want[f"pair{i}"])))
    for i, text in enumerate(TEXTS):
        r = df.loc[f"text{i}"]
        assert list(r["scored_token_ids"]) == sequences[f"text{i}"][0][1:] and r["num_windows"] == 1
        assert pd.isna(r["continuation"]) and "".join(r["scored_tokens"]) == text
    assert_within(df, want, tol)
    assert df.loc["pair0", "logprob"] > df.loc["pair1", "logprob"]           # Paris beats Rome


@pytest.mark.slow
def test_batch_of_one_equals_batch_of_eight(smol_runs, smol_direct):
    """Batches change float32 summation orders, not scores: the same tokens, each log-probability within the
    derived fp32 tolerance (a fixed 1e-5 on a 60-token sum failed on a fresh clone: 2.7e-5)."""
    one, many = smol_runs[1], smol_runs[8].loc[smol_runs[1].index]
    assert (one["scored_token_ids"].map(list) == many["scored_token_ids"].map(list)).all()
    assert_within(one, {key: list(many.loc[key, "token_logprobs"]) for key in one.index}, smol_direct[3])
    assert (one["is_greedy"] == many["is_greedy"]).all()


@pytest.mark.slow
def test_pairs_sharing_a_context_are_distinct_units(smol_runs):
    df = smol_runs[8]
    assert df.loc["pair0", "unit_id"] != df.loc["pair1", "unit_id"]
    assert df["unit_id"].is_unique and len(df) == len(PAIRS) + len(TEXTS)


@pytest.mark.parametrize("length,first,window,stride", [(2, 1, 4, 4), (10, 1, 4, 4), (23, 1, 8, 3), (23, 9, 8, 8),
                                                         (23, 20, 8, 1), (5, 1, 2, 1)])
def test_rolling_windows_score_each_target_once_with_the_promised_context(length, first, window, stride):
    windows = rolling_windows(length, first, window, stride)
    targets = [t for w in windows for t in range(w.first, w.end + 1)]
    assert targets == list(range(first, length))                         # each once, in order
    for k, w in enumerate(windows):
        assert 0 <= w.start < w.first and w.end - w.start <= window
        if k:                                                           # later windows: max_length - stride before
            assert w.first - w.start >= window - stride + 1 or w.start == 0
    if first == 1 and stride == window:                                 # lm-eval's disjoint windows
        assert len(windows) == math.ceil((length - 1) / window)


@pytest.mark.slow
def test_long_texts_roll_with_the_stride(tiny_llama, tmp_path):
    """With stride 1, every token is predicted from exactly the max_length tokens before it (or all of them);
    with stride = max_length, the windows are disjoint (lm-eval's loglikelihood_rolling)."""
    text, context = " ".join(TEXTS * 2), "Once upon a time"
    prompts = prompt_file(tmp_path / "long.jsonl", pairs=[(context, " " + TEXTS[1])], texts=[text])
    models = f"[{{alias: tiny, source: {tiny_llama}}}]"
    window = 8
    dfs = {s: rows(run_spec(tmp_path / f"s{s}", spec(models, prompts, f"{{type: loglikelihood, max_length: {window}, "
                                                                       f"stride: {s}}}"))).set_index("prompt_id")
           for s in (1, window)}
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()

    def most_context(seq, first):
        return [direct_logprobs(model, seq[max(0, t - window):t + 1], min(t, window))[0]
                for t in range(first, len(seq))]

    seq = [tok.bos_token_id, *tok(text)["input_ids"]]
    pair_seq, pair_first = tok(context + " " + TEXTS[1])["input_ids"], len(tok(context)["input_ids"])
    tol = logprob_tolerance(model.config, max_abs_logit(model, [seq, pair_seq]))
    for key, sequence, first in (("text0", seq, 1), ("pair0", pair_seq, pair_first)):
        r = dfs[1].loc[key]
        assert len(sequence) - first > window and list(r["scored_token_ids"]) == sequence[first:]
        assert max(abs(a - b) for a, b in zip(r["token_logprobs"], most_context(sequence, first))) <= tol
    assert dfs[1].loc["text0", "num_windows"] == len(seq) - window
    disjoint = dfs[window].loc["text0"]
    assert disjoint["num_windows"] == math.ceil((len(seq) - 1) / window)
    assert list(disjoint["scored_token_ids"]) == seq[1:]
    assert disjoint["logprob"] != pytest.approx(dfs[1].loc["text0", "logprob"])    # less context, other scores


def test_continuation_column_and_inline_meta(tiny_llama, tmp_path):
    models = f"[{{alias: tiny, source: {tiny_llama}}}]"
    text = f"""name: inline
models: {models}
prompts:
  - name: p
    items:
      - {{id: a, text: "The capital of France is", meta: {{answer: " Paris"}}}}
      - {{id: b, text: "The capital of France is", meta: {{answer: " Rome"}}}}
task: {{type: loglikelihood, continuation_column: answer}}
"""
    df = rows(run_spec(tmp_path, text)).set_index("prompt_id")
    assert list(df.loc[["a", "b"], "continuation"]) == [" Paris", " Rome"]
    assert (df["num_scored_tokens"] >= 1).all() and df["unit_id"].is_unique


@pytest.mark.slow
def test_an_example_config_runs(tmp_path, smollm2_dir):
    cli("run", str(REPO / "configs" / "loglikelihood.yaml"), "--output-dir", str(tmp_path), "--quiet", check=True)
    summary = cli("results", str(tmp_path / "loglikelihood"), "--summary", "--csv", check=True).stdout
    assert "perplexity" in summary.splitlines()[0]


def test_logits_are_bounded_per_forward_pass():
    lengths = [8192] * 8 + [10, 20, 5000]
    groups = logit_groups(lengths, 49152)
    assert [i for g in groups for i in g] == list(range(len(lengths)))   # every window once, in order
    assert all(len(g) == 1 or len(g) * max(lengths[i] for i in g) * 49152 <= loglikelihood.LOGITS_BUDGET
               for g in groups)
    assert len(groups[0]) == 1 and groups[-2:] == [[8, 9], [10]]         # 3 × 5000 × 49152 > 2^28
    assert logit_groups([3, 3, 3], 10, budget=1) == [[0], [1], [2]]


def test_splitting_a_batch_into_forward_passes_changes_no_score(tiny_llama, tmp_path, monkeypatch):
    prompts = prompt_file(tmp_path / "p.jsonl")
    models = f"[{{alias: tiny, source: {tiny_llama}}}]"
    task = "{type: loglikelihood, max_length: 8, stride: 4}"
    whole = rows(run_spec(tmp_path / "whole", spec(models, prompts, task))).set_index("prompt_id")
    monkeypatch.setattr(loglikelihood, "LOGITS_BUDGET", 1)                # one window per forward pass
    split = rows(run_spec(tmp_path / "split", spec(models, prompts, task))).set_index("prompt_id").loc[whole.index]
    assert (whole["num_windows"] > 1).any()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    seqs = [list(ids) for ids in whole["scored_token_ids"]]
    assert_within(split, {key: list(whole.loc[key, "token_logprobs"]) for key in whole.index},
                  logprob_tolerance(model.config, max_abs_logit(model, seqs)))


def test_pairs_sharing_a_context_score_as_each_pair_alone(tiny_llama, tmp_path, monkeypatch):
    """Pairs are scored with each distinct context run once (runner/shared_context.py); the scores, tokens and
    greedy flags are those of the per-pair path (one sequence per pair) within the derived fp32 tolerance."""
    from lmsweep.runner import shared_context

    pairs = PAIRS + [("The capital of France is", " the street"), ("One, two, three,", " four")]
    prompts = prompt_file(tmp_path / "p.jsonl", pairs=pairs)
    models = f"[{{alias: tiny, source: {tiny_llama}}}]"
    shared = rows(run_spec(tmp_path / "shared", spec(models, prompts))).set_index("prompt_id")
    monkeypatch.setattr(shared_context, "supported", lambda model: False)
    per_pair = rows(run_spec(tmp_path / "per_pair", spec(models, prompts))).set_index("prompt_id").loc[shared.index]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tol = logprob_tolerance(model.config, max_abs_logit(model, [tok(c + x)["input_ids"] for c, x in pairs]))
    assert (shared["scored_token_ids"].map(list) == per_pair["scored_token_ids"].map(list)).all()
    assert_within(shared, {key: list(per_pair.loc[key, "token_logprobs"]) for key in shared.index}, tol)
    assert (shared["is_greedy"] == per_pair["is_greedy"]).all() and (shared["num_windows"] == 1).all()
    assert (shared["num_scored_tokens"] > 1).any()
