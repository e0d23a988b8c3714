"""generate records each sequence's log-probability under the model's raw next-token distribution (before
penalties, temperature and the sampling noise): `token_logprobs` per token and `logprob` their sum. Checked
against a direct teacher-forced transformers computation of the same tokens, on every path that produces
them (the decode loop for greedy and sampled rows, the scoring pass after beam search), and shown not to be
the processed distribution the sampler drew from."""
from __future__ import annotations

import math

import pytest
import torch

from helpers.task_runs import rows, run_spec
from helpers.tolerances import logprob_tolerance, max_abs_logit

SPEC = """name: lp
models: [{{alias: tiny, source: {model}}}]
prompts: ["Shakespeare was a", "I skip across the street and the park every", "Once upon"]
task: generate
decoding:
  max_new_tokens: 10
  seeds: [0, 1]
  include:
    - {{}}
    - {{repetition_penalty: 1.5}}
    - {{temperature: 0.5}}
    - {{temperature: 0.7, top_k: 5, repetition_penalty: 1.3}}
    - {{num_beams: 2, num_return_sequences: 2}}
execution: {{batch_size: 4}}
"""


@pytest.fixture(scope="module")
def generated(tiny_llama, tmp_path_factory):
    exp = run_spec(tmp_path_factory.mktemp("lp"), SPEC.format(model=tiny_llama))
    return rows(exp)


def direct(model, tok, prompt: str, ids: list[int]) -> list[float]:
    """log p(token | prompt, tokens before it) under the model's logits, one unpadded forward pass."""
    p = tok(prompt)["input_ids"]
    with torch.inference_mode():
        logits = model(torch.tensor([p + ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[len(p) + j - 1, t]) for j, t in enumerate(ids)]


def test_token_logprobs_are_the_models_raw_log_probabilities_of_the_generated_tokens(generated, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    df = generated
    assert set(df["decoding"]) == {"greedy", "greedy rep=1.5", "sample t=0.5", "sample t=0.7 k=5 rep=1.3", "beam2 n=2"}
    seqs = [tok(p)["input_ids"] + list(ids) for p, ids in zip(df["prompt_text"], df["token_ids"])]
    tol = logprob_tolerance(model.config, max_abs_logit(model, seqs))
    worst = 0.0
    for _, r in df.iterrows():
        ids = [int(t) for t in r["token_ids"]]
        got = [float(x) for x in r["token_logprobs"]]
        assert len(got) == len(ids) == r["num_new_tokens"]
        want = direct(model, tok, r["prompt_text"], ids)
        worst = max([worst] + [abs(a - b) for a, b in zip(got, want)])
        assert r["logprob"] == sum(got)                     # the sum of the stored float32 values, in order
    print(f"largest |Δ log p| {worst:.2e}, allowed {tol:.2e}")
    assert worst <= tol, (worst, tol)


def test_the_recorded_log_probability_is_not_the_one_the_sampler_drew_from(generated, tiny_llama):
    """At temperature 0.5 the sampler's distribution is the model's sharpened: log-softmax(logits / 0.5). The
    column must hold the model's own, so a temperature change shows as a change in it (the mean_logprob gate)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    r = generated[generated["decoding"] == "sample t=0.5"].iloc[0]
    ids = [int(t) for t in r["token_ids"]]
    p = tok(r["prompt_text"])["input_ids"]
    with torch.inference_mode():
        logits = model(torch.tensor([p + ids])).logits[0].float()
    tempered = torch.log_softmax(logits / 0.5, dim=-1)
    processed = sum(float(tempered[len(p) + j - 1, t]) for j, t in enumerate(ids))
    raw = sum(direct(model, tok, r["prompt_text"], ids))
    assert abs(processed - raw) > 0.1 and math.isclose(r["logprob"], raw, abs_tol=1e-3 * len(ids))
