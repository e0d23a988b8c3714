"""The model as an experiment's workers saw it, for the analyses lmsweep does not do (`lmsweep.load_model`).

A notebook gets the weights and tokenizer from the plan's resolved source, not from a fresh resolution of the
spec: the same files (a packaged GGUF's converted directory in lmsweep's model cache, built once if it is
missing), the same dtype, the same Auto class and attention implementation the task loaded, and the tokenizer
set up as on a worker (left padding, pad = EOS where it has none). What was loaded is recorded beside it:
the alias, source, fingerprint (the one in every unit id and result row) and dtype.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lmsweep.core.task import CLASS_KINDS
from lmsweep.errors import UsageError


class WorkerModel(tuple):
    """`(model, tokenizer)`, unpacked as a pair, with what was loaded as attributes: `alias`, `source`,
    `fingerprint`, `dtype`, `model_class`, `path` (the directory loaded: the conversion cache for a GGUF)."""

    def __new__(cls, model: Any, tokenizer: Any, **info: Any) -> WorkerModel:
        self = super().__new__(cls, (model, tokenizer))
        self.__dict__.update(info)
        return self

    @property
    def model(self) -> Any:
        return self[0]

    @property
    def tokenizer(self) -> Any:
        return self[1]


def load_model(exp: str | Path, alias: str | None = None, *, model_class: str | None = None) -> WorkerModel:
    """The model `alias` of experiment `exp` (optional when the plan has one model) and its tokenizer, loaded
    as the workers loaded them. `model_class` (a transformers Auto class name) overrides the task's: e.g.
    `AutoModelForCausalLM` for a hidden_states experiment, whose workers load the base model. Tasks that load
    only a tokenizer get the class of the model's kind (a causal LM: AutoModelForCausalLM)."""
    from lmsweep.core.task_registry import get_task
    from lmsweep.jobs.model_facts import model_kind
    from lmsweep.jobs.model_sources import ModelRef
    from lmsweep.jobs.plan import read_plan
    from lmsweep.runner import loading

    plan = read_plan(exp)
    if alias is None:
        if len(plan.models) != 1:
            raise UsageError(f"the plan has {len(plan.models)} models; name one of {', '.join(plan.models)}",
                             field="alias")
        alias = next(iter(plan.models))
    if alias not in plan.models:
        raise UsageError(f"no model {alias!r} in {plan.exp_dir}; its models: {', '.join(plan.models)}", field="alias")
    info = plan.models[alias]
    task = get_task(plan.task_type)
    variant = _variant_of(plan, alias)
    if model_class is None:
        model_class = task.auto_class_for(task.variant(plan.variants[variant]))
    if model_class is None:                  # a tokenizer-only task: the class of the model's kind
        kind = model_kind(ModelRef(info.source, info.kind, info.path, info.fingerprint))
        model_class = next((c for c, kinds in CLASS_KINDS.items() if kind in kinds), "AutoModelForCausalLM")
    loaded = loading.load(info, model_class, task.attn_implementation)
    return WorkerModel(loaded.model, loaded.tokenizer, alias=alias, source=info.source, fingerprint=info.fingerprint,
                       dtype=info.dtype, model_class=model_class, path=loaded.path)


def _variant_of(plan, alias: str) -> int:
    """The task variant the plan's first unit of this model runs (the plan pairs models with the variants
    that fit their kind, so all of one model's variants load the same class)."""
    units = plan.units(columns=["model", "variant"]).to_pydict()
    return next((v for m, v in zip(units["model"], units["variant"]) if m == alias), 0)
