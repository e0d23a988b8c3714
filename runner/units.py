"""What a task sees of a unit: its prompt, its decoding point and seed, already joined from the plan."""
from __future__ import annotations

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
