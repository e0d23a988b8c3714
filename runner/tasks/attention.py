"""Attention weights of selected layers and query heads over the prompt tokens.

One row per (unit, layer, head), each holding the seq_len × seq_len matrix [query, key] flattened
row-major. The model is the base model (AutoModel: no LM head, so causal LMs and encoders both work)
loaded with eager attention, the only implementation that returns weights. Prompts are right-padded:
real tokens keep positions 0..n-1 and never attend to padding, so a unit's weights do not depend on
its batch-mates.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from lmsweep.jobs.task_checks import selected
from lmsweep.runner.units import TaskContext, Unit, UnitFailure, render_prompt

MODEL_CLASS = "AutoModel"
ATTN = "eager"


def batch_key(unit: Unit) -> tuple:
    return ()


def run(ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
    tok, model, p = ctx.tokenizer, ctx.model, ctx.params
    rendered = [render_prompt(tok, u.prompt) for u in units]
    full = [tok(text, add_special_tokens=add)["input_ids"] for text, add in rendered]
    kept = [ids[:p["max_tokens"]] for ids in full]
    batch = tok.pad({"input_ids": kept}, return_tensors="pt", padding_side="right").to(ctx.device)
    start = time.perf_counter()
    with torch.inference_mode():
        attentions = model(**batch, output_attentions=True).attentions
    latency = time.perf_counter() - start
    if not attentions or attentions[0] is None:
        raise UnitFailure("the model returned no attention weights (needs attn_implementation: eager)")

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_layers, n_heads = len(attentions), attentions[0].shape[1]        # query heads, also under GQA
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    expected = getattr(config, "num_attention_heads", None)
    if expected and n_heads != expected:
        raise UnitFailure(f"got weights for {n_heads} of the model's {expected} heads (tensor parallel "
                          "shards heads across ranks; run attention with tensor_parallel: 1)")
    layers, heads = selected(p["layers"], n_layers), selected(p["heads"], n_heads)
    bad = [i for i in layers if not 0 <= i < n_layers] + [h for h in heads if not 0 <= h < n_heads]
    if bad:
        raise UnitFailure(f"layer/head index {bad[0]} out of range ({n_layers} layers, {n_heads} heads)")
    dtype = np.float16 if p["dtype"] == "float16" else np.float32
    column = "attention" if p["dtype"] == "float16" else "attention_f32"

    rows = []
    for b, (u, ids) in enumerate(zip(units, kept)):
        n = len(ids)
        common = {"unit_id": u.unit_id, "num_layers": n_layers, "num_heads": n_heads, "num_kv_heads": n_kv,
                  "seq_len": n, "truncated": len(full[b]) > n, "num_prompt_tokens": len(full[b]),
                  "tokens": [tok.decode([t]) for t in ids], "token_ids": ids, "batch_latency_s": latency}
        for layer in layers:
            weights = attentions[layer][b, heads, :n, :n].float().cpu()
            if p["head_mean"]:
                stack = [(-1, None, weights.mean(0))]
            else:
                stack = [(h, h // max(n_heads // n_kv, 1), weights[i]) for i, h in enumerate(heads)]
            for head, kv_head, matrix in stack:
                rows.append({**common, "layer": layer, "head": head, "kv_head": kv_head,
                             column: matrix.numpy().astype(dtype).ravel()})
    return rows, {}
