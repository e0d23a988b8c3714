"""What a task sees of a unit: its prompt, its decoding point and seed, already joined from the plan."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lmsweep.jobs.decoding import DecodingPoint


@dataclass(frozen=True)
class Unit:
    unit_id: str
    unit_key: str
    element: int
    variant: int               # index into the plan's task variants
    point_index: int | None
    point: DecodingPoint | None
    seed: int | None
    prompt: dict[str, Any]     # prompt_set, prompt_id, prompt_text, label, meta, system_prompt, chat_template


@dataclass
class TaskContext:
    model: Any
    tokenizer: Any
    params: Any                # the batch's task variant, typed (Task.variant: the task's Params or Variant)
    device: Any = "cpu"


class UnitFailure(Exception):
    """A problem with one unit's input (e.g. too long for the context); its batch-mates go on."""


def render_prompt(tokenizer: Any, prompt: dict[str, Any]) -> tuple[str, bool]:
    """(text to tokenize, add_special_tokens). Chat templates already contain the special tokens."""
    if prompt.get("chat_template"):
        messages = []
        if prompt.get("system_prompt"):
            messages.append({"role": "system", "content": prompt["system_prompt"]})
        messages.append({"role": "user", "content": prompt["prompt_text"]})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False
    if prompt.get("system_prompt"):
        return f"{prompt['system_prompt']}\n\n{prompt['prompt_text']}", True
    return prompt["prompt_text"], True


def context_limit(model: Any) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) if config is not None else None


@dataclass(frozen=True)
class PromptForward:
    """One forward pass over a batch's prompts (right-padded, each cut at `max_tokens`), for tasks that read a
    model's internals (attention, hidden_states)."""

    kept: list[list[int]]        # each prompt's token ids as the model saw them
    full: list[list[int]]        # ... before the cut
    outputs: Any                 # what the model returned
    latency: float

    def token_columns(self, tokenizer: Any, b: int) -> dict[str, Any]:
        ids = self.kept[b]
        return {"seq_len": len(ids), "truncated": len(self.full[b]) > len(ids),
                "num_prompt_tokens": len(self.full[b]), "tokens": [tokenizer.decode([t]) for t in ids],
                "token_ids": ids, "batch_latency_s": self.latency}


def forward_prompts(ctx: TaskContext, units: list[Unit], max_tokens: int, **outputs: bool) -> PromptForward:
    """Render, tokenize, cut at `max_tokens`, right-pad and run the model once with `outputs` (e.g.
    output_attentions=True)."""
    import torch

    tok = ctx.tokenizer
    full = [tok(text, add_special_tokens=add)["input_ids"] for text, add in (render_prompt(tok, u.prompt)
                                                                          for u in units)]
    kept = [ids[:max_tokens] for ids in full]
    batch = tok.pad({"input_ids": kept}, return_tensors="pt", padding_side="right").to(ctx.device)
    start = time.perf_counter()
    with torch.inference_mode():
        result = ctx.model(**batch, **outputs)
    return PromptForward(kept=kept, full=full, outputs=result, latency=time.perf_counter() - start)
