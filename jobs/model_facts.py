"""What the plan needs to know about a model without loading it: its kind and attention shape.

Read from config.json (directories, Hub cache) or the GGUF header (packaged GGUF files), and only
for tasks that ask (`Task.needs_model_facts`: a task that runs only on some kinds of model, or checks
layers/heads and sizes before it runs).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmsweep.jobs.model_sources import PACKAGES, ModelRef

if TYPE_CHECKING:
    from lmsweep.jobs.spec import ExperimentSpec
    from lmsweep.runner.tasks.base import Task

KINDS = ("causal_lm", "encoder", "sequence_classification", "token_classification")


@dataclass(frozen=True)
class ModelFacts:
    kind: str                    # one of KINDS, or "unknown"
    num_layers: int | None
    num_heads: int | None        # query heads
    num_kv_heads: int | None     # key/value heads (fewer than num_heads with grouped-query attention)
    tokenizer_file: str | None   # a tokenizer.json to count prompt tokens with, when there is one


def kind_of(architectures: list[str]) -> str:
    """The model kind from config.json's `architectures` (the class it was saved as)."""
    for arch in architectures:
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal_lm"
        if arch.endswith("ForSequenceClassification"):
            return "sequence_classification"
        if arch.endswith("ForTokenClassification"):
            return "token_classification"
        if arch.endswith("Model"):
            return "encoder"
    return "unknown"


def model_facts(ref: ModelRef) -> ModelFacts:
    if ref.gguf:
        return _gguf_facts(ref)
    path = Path(ref.path)
    cfg = json.loads((path / "config.json").read_text())
    text = cfg.get("text_config", cfg)        # multimodal configs nest the language model's
    kind = kind_of(cfg.get("architectures") or [])
    if ref.kind == "package":
        kind = PACKAGES[ref.source.removeprefix("package:")].kind
    heads = text.get("num_attention_heads") or text.get("n_head")
    tok = path / "tokenizer.json"
    return ModelFacts(kind=kind, num_layers=text.get("num_hidden_layers") or text.get("n_layer"),
                      num_heads=heads, num_kv_heads=text.get("num_key_value_heads") or heads,
                      tokenizer_file=str(tok) if tok.is_file() else None)


def _gguf_facts(ref: ModelRef) -> ModelFacts:
    from gguf import GGUFReader

    reader = GGUFReader(ref.path)

    def field(name: str):
        f = reader.fields.get(name)
        return f.contents() if f is not None else None

    arch = field("general.architecture")
    kind = PACKAGES[ref.source.removeprefix("package:")].kind if ref.kind == "package" else "causal_lm"
    heads = field(f"{arch}.attention.head_count")
    return ModelFacts(kind=kind, num_layers=field(f"{arch}.block_count"), num_heads=heads,
                      num_kv_heads=field(f"{arch}.attention.head_count_kv") or heads, tokenizer_file=None)


def variants_per_model(spec: ExperimentSpec, task: Task, refs: dict[str, ModelRef], variants: list[dict]
                       ) -> tuple[dict[str, ModelFacts], dict[str, list[int]]]:
    """(facts per model alias, indices of the task variants each model runs).

    A sweep may mix model kinds (for classify, a causal LM for label_likelihood and an encoder for
    embedding_similarity): each model runs only the variants whose `Task.model_kinds` admit its kind.
    A model that runs nothing, or a variant no model runs, is an error rather than a silent gap."""
    everything = {m.alias: list(range(len(variants))) for m in spec.models}
    if not task.needs_model_facts:
        return {}, everything
    facts = {m.alias: model_facts(refs[m.alias]) for m in spec.models}
    typed = [task.variant(v) for v in variants]

    def fits(vi: int, kind: str) -> bool:
        kinds = task.model_kinds(typed[vi])
        return kinds is None or kind in kinds

    fitting = {a: [vi for vi in vis if fits(vi, facts[a].kind)] for a, vis in everything.items()}
    kinds = ", ".join(f"{a}: {f.kind}" for a, f in facts.items())
    for i, m in enumerate(spec.models):
        if not fitting[m.alias]:
            raise spec.source.error(f"model {m.alias!r} is a {facts[m.alias].kind} model and no variant of the "
                                    f"{task.name} task runs on it", f"models[{i}]", ("models", i))
    used = {vi for vis in fitting.values() for vi in vis}
    for vi, v in enumerate(typed):
        if vi not in used:
            what, field = task.variant_label(v)
            raise spec.source.error(f"{what} runs on {' or '.join(task.model_kinds(v))} models and the spec has "
                                    f"none ({kinds})", field)
    return facts, fitting
