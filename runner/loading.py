"""Load a plan's model once per rank, with the tokenizer set up for batched left-padded inference."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from runner.model_cache import materialize

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    load_seconds: float
    path: str


def load(model_info: dict, model_class: str, attn_implementation: str | None = None) -> LoadedModel:
    """`model_info` is the plan's entry for the model; `model_class` an Auto class name from the task."""
    import torch
    import transformers

    start = time.perf_counter()
    path = materialize(model_info["path"], model_info["fingerprint"])
    trust = bool(model_info.get("trust_remote_code"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": getattr(torch, DTYPES[model_info.get("dtype", "float32")]),
                              "trust_remote_code": trust}
    if not model_info.get("allow_pickle"):
        kwargs["use_safetensors"] = True
    attn = attn_implementation or model_info.get("attn_implementation")
    if attn:
        kwargs["attn_implementation"] = attn
    cls = getattr(transformers, model_class)
    model = cls.from_pretrained(path, **kwargs)
    model.eval()
    return LoadedModel(model, tokenizer, time.perf_counter() - start, str(path))
