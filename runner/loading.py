"""Load a plan's model once per rank, with the tokenizer set up for batched left-padded inference."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmsweep.errors import BadInput
from lmsweep.jobs.model_cache import materialize, tokenizer_dir
from lmsweep.jobs.model_files import weights_problem

if TYPE_CHECKING:
    from lmsweep.jobs.plan import ModelInfo

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    load_seconds: float
    path: str


def load(model: ModelInfo, model_class: str | None, attn_implementation: str | None = None, *,
         materialized: bool = False) -> LoadedModel:
    """`model` is the plan's entry for the model; `model_class` an Auto class name from the task,
    or None for tasks that need only the tokenizer (the weights are then never read). `materialized`:
    the tokenizer of the HF directory a GGUF converts into (for an engine that loads that directory)."""
    import torch
    import transformers

    start = time.perf_counter()
    if model_class is None and model.path.endswith(".gguf") and not materialized:
        # Tokenizer only: read once from the GGUF header and saved (model_cache.tokenizer_dir), no weights
        path = tokenizer_dir(model.path, model.fingerprint)
    else:
        path = materialize(model.path, model.fingerprint)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=model.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model_class is None:
        return LoadedModel(None, tokenizer, time.perf_counter() - start, str(path))
    kwargs: dict[str, Any] = {"dtype": getattr(torch, DTYPES[model.dtype]),
                              "trust_remote_code": model.trust_remote_code}
    if not model.allow_pickle:
        kwargs["use_safetensors"] = True
    attn = attn_implementation or model.attn_implementation
    if attn:
        kwargs["attn_implementation"] = attn
    if not model.path.endswith(".gguf"):      # a converted GGUF was checked by materialize
        problem = weights_problem(path)
        if problem:     # changed or damaged since it was planned: one line, not a traceback from the loader
            raise BadInput(f"model {model.alias!r}: {problem}")
    cls = getattr(transformers, model_class)
    weights = cls.from_pretrained(path, **kwargs)
    weights.eval()
    return LoadedModel(weights, tokenizer, time.perf_counter() - start, str(path))
