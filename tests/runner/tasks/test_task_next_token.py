"""The next_token task: stored top-k probabilities equal a direct, unbatched transformers computation."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.task_runs import rows, run_spec
from helpers.tolerances import logprob_tolerance


def test_summary_examples_show_every_requested_token(tiny_llama, tmp_path):
    """A top-10 request shows 10 tokens per prompt in `results --summary`, not the first 5."""
    from lmsweep.core.task_registry import get_task

    spec = f"name: nt10\nmodels: [{{alias: tiny, source: {tiny_llama}}}]\nprompts: [\"Shakespeare was a\"]\n" \
           "task: {type: next_token, top_k: 10}\n"
    df = rows(run_spec(tmp_path, spec))
    shown = get_task("next_token").examples(df)
    assert "top10" in shown.columns and len(shown["top10"][0].split(", ")) >= 10


def test_topk_probabilities_match_transformers(tiny_llama, tmp_path):
    spec = f"""name: nt
models: [{{alias: tiny, source: {tiny_llama}}}]
prompts: ["Shakespeare was a", "I skip across the street and the park every"]
task: {{type: next_token, top_k: 10}}
execution: {{batch_size: 2}}
"""
    df = rows(run_spec(tmp_path, spec))
    tok, model = AutoTokenizer.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    for _, r in df.iterrows():
        with torch.no_grad():
            logits = model(**tok(r["prompt_text"], return_tensors="pt")).logits[0, -1].float()
        probs = torch.softmax(logits, -1)
        tol = logprob_tolerance(model.config, float(logits.abs().max()))      # |Δp| ≤ p·|Δ log p| ≤ tol
        top = probs.topk(10)
        entropy = float(-(probs * probs.log()).sum())
        assert list(r["topk_ids"]) == top.indices.tolist()
        assert max(abs(a - b) for a, b in zip(r["topk_probs"], top.values.tolist())) <= tol
        # H = -Σ p log p: each |Δp_i| ≤ p_i·tol and |Δ log p_i| ≤ tol, so |ΔH| ≤ tol·(H + 1)
        assert abs(r["entropy"] - entropy) <= tol * (entropy + 1)
