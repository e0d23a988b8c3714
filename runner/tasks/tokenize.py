"""How each model's tokenizer splits each prompt: tokens, ids, counts, special tokens, vocabulary size.

Needs no weights: `auto_class = None` makes the worker load the tokenizer only.
"""
from __future__ import annotations

from typing import Literal

import pyarrow as pa

from lmsweep.core.task import Task, TaskParams
from lmsweep.core.task_registry import register_task
from lmsweep.runner.units import TaskContext, Unit, render_prompt


class TokenizeParams(TaskParams):
    """Tokens, ids and counts per prompt and model; loads the tokenizer only, never the weights."""

    type: Literal["tokenize"] = "tokenize"
    add_special_tokens: bool = True


@register_task("tokenize")
class Tokenize(Task):
    Params = TokenizeParams
    auto_class = None
    columns = (
        ("tokens", pa.list_(pa.string())), ("token_texts", pa.list_(pa.string())),
        ("token_ids", pa.list_(pa.int32())), ("num_tokens", pa.int32()), ("num_special_tokens", pa.int32()),
        ("special_tokens", pa.list_(pa.string())), ("num_chars", pa.int32()), ("chars_per_token", pa.float64()),
        ("vocab_size", pa.int32()), ("tokenizer_class", pa.string()),
    )

    def run(self, ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
        tok, p = ctx.tokenizer, ctx.params
        # [UNK] stands for text the vocabulary lacks, not a token the tokenizer adds: not counted as special.
        special = set(tok.all_special_ids) - {tok.unk_token_id}
        rows = []
        for u in units:
            text, add = render_prompt(tok, u.prompt)
            ids = tok(text, add_special_tokens=add and p.add_special_tokens)["input_ids"]
            pieces = tok.convert_ids_to_tokens(ids)
            n_special = sum(i in special for i in ids)
            rows.append({
                "unit_id": u.unit_id, "tokens": pieces, "token_texts": [tok.decode([i]) for i in ids],
                "token_ids": ids, "num_tokens": len(ids), "num_prompt_tokens": len(ids),
                "special_tokens": [t for t, i in zip(pieces, ids) if i in special],
                "num_special_tokens": n_special, "num_chars": len(u.prompt["prompt_text"]),
                "chars_per_token": len(u.prompt["prompt_text"]) / max(len(ids) - n_special, 1),
                "vocab_size": len(tok), "tokenizer_class": type(tok).__name__,
            })
        return rows, {}

    def summarize(self, df):
        """Per prompt and model: the counts, and the tokenizer's own pieces (`Ġ`, `▁`, `##` as it writes them),
        escaped so each is visible: a token decoded alone can be half a character (an emoji's bytes show as
        `�`) or only spaces."""
        out = df[["model", "prompt_id", "num_tokens", "num_special_tokens", "chars_per_token", "vocab_size"]].copy()
        out["tokens"] = ["|".join(map(visible_piece, t)) for t in df["tokens"]]
        return out.sort_values(["prompt_id", "model"], ignore_index=True)


def visible_piece(piece: str) -> str:
    """A token piece with what would not show escaped: `\\n`, `\\t`, other control characters as `\\xNN`,
    a space as `␣`, and the separator `|` as `\\|`."""
    out = []
    for ch in piece:
        if ch == " ":
            out.append("␣")
        elif ch == "|" or ch == "\\":
            out.append("\\" + ch)
        elif not ch.isprintable():
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)
