"""Top-k next-token probabilities after the prompt, and the entropy of the full distribution."""
from __future__ import annotations

import time

import torch

from lmsweep.runner.units import TaskContext, Unit, render_prompt

MODEL_CLASS = "AutoModelForCausalLM"
ATTN = None


def batch_key(unit: Unit) -> tuple:
    return ()


def run(ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
    tok, model = ctx.tokenizer, ctx.model
    k = int(ctx.params.get("top_k", 10))
    rendered = [render_prompt(tok, u.prompt) for u in units]
    encoded = [tok(text, add_special_tokens=add)["input_ids"] for text, add in rendered]
    batch = tok.pad({"input_ids": encoded}, return_tensors="pt").to(ctx.device)
    start = time.perf_counter()
    with torch.inference_mode():
        logits = model(**batch).logits[:, -1, :].float()
    latency = time.perf_counter() - start
    logp = torch.log_softmax(logits, dim=-1)
    probs = logp.exp()
    entropy = -(probs * logp).nan_to_num().sum(-1)
    top_p, top_i = probs.topk(min(k, probs.shape[-1]), dim=-1)
    rows = []
    for u, ids, p, i, h in zip(units, encoded, top_p.tolist(), top_i.tolist(), entropy.tolist()):
        rows.append({"unit_id": u.unit_id, "num_prompt_tokens": len(ids), "topk_ids": i,
                     "topk_tokens": [tok.decode([t]) for t in i], "topk_probs": p, "entropy": h,
                     "batch_latency_s": latency})
    return rows, {}
