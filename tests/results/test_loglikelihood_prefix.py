"""loglikelihood's scoring prefix (issue 26c): whole texts scored after the BOS (the default), after nothing, or
after a given string; the unit id changes only when a prefix other than the BOS is set."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.task_runs import rows, run_spec
from helpers.tolerances import logprob_tolerance, max_abs_logit

TEXTS = ["Once upon a time there was a small cat.", "The street was quiet."]


def experiment(tmp_path, tiny_llama, prefix: str | None):
    task = "{type: loglikelihood}" if prefix is None else f"{{type: loglikelihood, prefix: {json.dumps(prefix)}}}"
    items = ", ".join(json.dumps(t) for t in TEXTS)
    return rows(run_spec(tmp_path / (prefix or "default").replace("\n", "nl"),
                         f"name: ll\nmodels: [{{alias: tiny, source: {tiny_llama}}}]\nprompts: [{items}]\n"
                         f"task: {task}\n")).set_index("prompt_text")


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefix")
    return {p: experiment(tmp, tiny_llama, p) for p in (None, "bos", "none", "\n")}


def direct(model, sequence: list[int], first: int) -> list[float]:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([sequence])).logits[0].float(), -1)
    return [float(logp[t - 1, sequence[t]]) for t in range(first, len(sequence))]


def test_bos_is_the_default_and_keeps_the_unit_ids(runs):
    assert list(runs["bos"]["unit_id"]) == list(runs[None]["unit_id"])
    assert list(runs["bos"]["logprob"]) == list(runs[None]["logprob"])
    for other in ("none", "\n"):
        assert not set(runs[other]["unit_id"]) & set(runs[None]["unit_id"])


def test_none_and_a_string_prefix_score_the_texts_own_tokens(runs, tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    cases = {"none": lambda ids: (ids, 1), "\n": lambda ids: ([*newline, *ids], len(newline)),
             None: lambda ids: ([tok.bos_token_id, *ids], 1)}
    seqs = {(p, t): cases[p](tok(t, add_special_tokens=False)["input_ids"]) for p in cases for t in TEXTS}
    tol = logprob_tolerance(model.config, max_abs_logit(model, [s for s, _ in seqs.values()]))
    for (prefix, text), (sequence, first) in seqs.items():
        r = runs[prefix].loc[text]
        want = direct(model, sequence, first)
        assert list(r["scored_token_ids"]) == sequence[first:]
        assert max(abs(a - b) for a, b in zip(r["token_logprobs"], want)) <= tol
    text_tokens = len(tok(TEXTS[0], add_special_tokens=False)["input_ids"])
    assert runs["\n"].loc[TEXTS[0], "num_scored_tokens"] == text_tokens
    assert runs["none"].loc[TEXTS[0], "num_scored_tokens"] == text_tokens - 1
