"""How each model's tokenizer splits each prompt: tokens, ids, counts, special tokens, vocabulary size.

Needs no weights: MODEL_CLASS None makes the worker load the tokenizer only.
"""
from __future__ import annotations

from lmsweep.runner.units import TaskContext, Unit, render_prompt

MODEL_CLASS = None
ATTN = None


def batch_key(unit: Unit) -> tuple:
    return ()


def run(ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
    tok = ctx.tokenizer
    special = set(tok.all_special_ids)
    rows = []
    for u in units:
        text, add = render_prompt(tok, u.prompt)
        ids = tok(text, add_special_tokens=add and ctx.params.get("add_special_tokens", True))["input_ids"]
        pieces = tok.convert_ids_to_tokens(ids)
        rows.append({
            "unit_id": u.unit_id, "tokens": pieces, "token_texts": [tok.decode([i]) for i in ids],
            "token_ids": ids, "num_tokens": len(ids), "num_prompt_tokens": len(ids),
            "special_tokens": [t for t, i in zip(pieces, ids) if i in special],
            "num_special_tokens": sum(i in special for i in ids), "num_chars": len(u.prompt["prompt_text"]),
            "chars_per_token": len(u.prompt["prompt_text"]) / max(len(ids) - sum(i in special for i in ids), 1),
            "vocab_size": len(tok), "tokenizer_class": type(tok).__name__,
        })
    return rows, {}
