"""What the hf engine promises about a row across reruns (docs/guarantees.md, "Reproducible rows"): greedy and
seeded sampled token ids and text are bit-identical at any batch size and composition; the log-probabilities
are bit-identical when the batch is the same and within float32 rounding when it is not; beam search is
bit-identical when the batch is the same."""
from __future__ import annotations

from helpers.task_runs import rows, run_spec
from helpers.tolerances import logprob_tolerance, max_abs_logit

SPEC = """name: rep
models: [{{alias: tiny, source: {model}}}]
prompts: ["Once upon a time", "The capital of France is Paris, and the capital of Italy is", "My dog",
          "I skip across the street and the park every morning because the cat", "Shakespeare was a", "Rome"]
task: generate
decoding:
  max_new_tokens: 10
  seeds: [0, 1]
  include: [{{}}, {{repetition_penalty: 1.3}}, {{temperature: 0.8}}, {{temperature: 1.0, top_p: 0.9}},
            {{num_beams: 2}}]
execution: {{batch_size: {batch}}}
"""
KEY = ["unit_id", "sequence_index"]


def run(tmp_path, model, batch: int, tag: str):
    return rows(run_spec(tmp_path / tag, SPEC.format(model=model, batch=batch))).set_index(KEY).sort_index()


def test_hf_rows_are_bit_identical_on_a_rerun_and_their_tokens_at_any_batch_size(tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = run(tmp_path, tiny_llama, 8, "a")
    again = run(tmp_path, tiny_llama, 8, "b")
    other = run(tmp_path, tiny_llama, 3, "c")                   # other batch-mates, other padding
    assert len(first) == len(again) == len(other) == 6 * (2 + 2 * 2 + 1)
    assert set(first["batch_size"]) != set(other["batch_size"])
    # the same batches: every output column bit for bit, beam search included
    for col in ("text", "token_ids", "token_logprobs", "logprob", "finish_reason"):
        for a, b in zip(first[col], again[col]):
            assert (list(a) == list(b)) if col in ("token_ids", "token_logprobs") else a == b, col
    # another batch size: greedy and seeded sampled text identical; log-probabilities within float32 rounding
    det = first[first["num_beams"] == 1].index
    assert (first.loc[det, "text"] == other.loc[det, "text"]).all()
    assert all(list(a) == list(b) for a, b in zip(first.loc[det, "token_ids"], other.loc[det, "token_ids"]))
    tok, model = AutoTokenizer.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    seqs = [tok(p)["input_ids"] + list(t) for p, t in zip(first["prompt_text"], first["token_ids"])]
    tol = logprob_tolerance(model.config, max_abs_logit(model, seqs))
    worst = max((abs(float(x) - float(y)) for a, b in zip(first.loc[det, "token_logprobs"],
                                                          other.loc[det, "token_logprobs"]) for x, y in zip(a, b)),
                default=0.0)
    assert worst <= tol, (worst, tol)
