"""What the plan needs to know about a model without loading it: its kind and attention shape.

Read from config.json (directories, Hub cache) or the GGUF header (packaged GGUF files), and only
for tasks that ask (classify filters methods by kind; attention checks layers/heads and sizes).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmsweep.jobs.model_sources import PACKAGES, ModelRef

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
