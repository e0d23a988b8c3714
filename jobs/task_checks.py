"""Plan-time checks that need the models' facts: attention layer/head ranges and storage size.

Everything here runs before anything is written, so a sweep that would fill the disk is refused
with its estimate (exit 2), instead of failing hours into a run.
"""
from __future__ import annotations

import math
from collections import Counter

from lmsweep.jobs.errors import SpecError
from lmsweep.jobs.model_facts import ModelFacts, model_facts
from lmsweep.jobs.model_sources import ModelRef
from lmsweep.jobs.prompts import Prompt
from lmsweep.jobs.tasks import classify_kinds

DTYPE_BYTES = {"float16": 2, "float32": 4}


def _error(spec, message: str, field: str, path: tuple | None = None) -> SpecError:
    return spec.source.error(message, field, path)


def variants_per_model(spec, refs: dict[str, ModelRef], variants: list[dict]
                       ) -> tuple[dict[str, ModelFacts], dict[str, list[int]]]:
    """(facts per model alias, indices of the task variants each model runs).

    A classify sweep may mix model kinds (a causal LM for label_likelihood, an encoder for
    embedding_similarity): each model runs only the variants whose method fits its kind. A model
    that runs nothing, or a variant no model runs, is an error rather than a silent gap."""
    everything = {m.alias: list(range(len(variants))) for m in spec.models}
    if not spec.task.NEEDS_MODEL_FACTS:
        return {}, everything
    facts = {m.alias: model_facts(refs[m.alias]) for m in spec.models}
    fitting = {a: [vi for vi in vis if spec.task.fits(variants[vi], facts[a].kind)]
               for a, vis in everything.items()}
    kinds = ", ".join(f"{a}: {f.kind}" for a, f in facts.items())
    for i, m in enumerate(spec.models):
        if not fitting[m.alias]:
            raise _error(spec, f"model {m.alias!r} is a {facts[m.alias].kind} model and no variant of the "
                               f"{spec.task.type} task runs on it", f"models[{i}]", ("models", i))
    used = {vi for vis in fitting.values() for vi in vis}
    for vi, v in enumerate(variants):
        if vi not in used:
            what = v.get("pipeline_task") if v.get("method") == "pipeline" else v.get("method")
            raise _error(spec, f"{what} runs on {' or '.join(classify_kinds(v))} models and the spec has "
                               f"none ({kinds})", "task.method")
    return facts, fitting


def check_units(spec, facts: dict[str, ModelFacts], prompts: list[Prompt], models: list[str],
                prompt_index: list[int]) -> None:
    """Checks over the expanded units (one model alias and prompt index per unit)."""
    if spec.task.type == "classify":
        check_gold_labels(spec, prompts)
    if spec.task.type == "attention":
        per_model: dict[str, Counter] = {m.alias: Counter() for m in spec.models}
        for alias, qi in zip(models, prompt_index):
            per_model[alias][qi] += 1
        check_attention(spec, facts, prompts, per_model)


def selected(selection: str | list[int], count: int | None) -> list[int] | None:
    """Indices a `layers`/`heads` selection picks from `count`; negatives count from the end.
    None when the count is unknown and the selection is `all`."""
    if selection == "all":
        return list(range(count)) if count is not None else None
    if count is None:
        return list(selection)
    return [i + count if i < 0 else i for i in selection]


def check_attention(spec, facts: dict[str, ModelFacts], prompts: list[Prompt],
                    units_per_model: dict[str, Counter]) -> int:
    """Validate the selection against each model and return the estimated bytes of attention weights;
    raise SpecError above `task.max_storage_mb`."""
    task = spec.task
    total, worst = 0, None
    for m in spec.models:
        f = facts[m.alias]
        for name, count in (("layers", f.num_layers), ("heads", f.num_heads)):
            sel = getattr(task, name)
            idx = selected(sel, count)
            if idx is None:
                raise _error(spec, f"cannot read the number of {name} of model {m.alias!r}; list them "
                                   "explicitly", f"task.{name}")
            bad = [i for i, j in zip(sel if sel != "all" else idx, idx) if not 0 <= j < count] \
                if count is not None else []
            if bad:
                raise _error(spec, f"{name[:-1]} {bad[0]} is out of range for model {m.alias!r}, which has "
                                   f"{count} {name}" + (" (query heads)" if name == "heads" else ""),
                             f"task.{name}")
        n_layers = len(selected(task.layers, f.num_layers))
        n_heads = 1 if task.head_mean else len(selected(task.heads, f.num_heads))
        lengths = token_counts(f, [prompts[i] for i in units_per_model[m.alias]])
        per_prompt = dict(zip(units_per_model[m.alias], lengths))
        for qi, n in units_per_model[m.alias].items():
            t = min(per_prompt[qi], task.max_tokens)
            total += n * n_layers * n_heads * t * t * DTYPE_BYTES[task.dtype]
        worst = max(worst or 0, max(per_prompt.values(), default=0))
    cap = task.max_storage_mb * 1e6
    if total > cap:
        raise _error(spec, f"attention weights would take ≈{_size(total)} ({task.dtype}, longest prompt "
                           f"≈{min(worst or 0, task.max_tokens)} tokens), above task.max_storage_mb="
                           f"{task.max_storage_mb:g}; select fewer layers or heads, set head_mean: true, lower "
                           f"max_tokens{', use dtype: float16' if task.dtype == 'float32' else ''} or raise "
                           "max_storage_mb", "task.max_storage_mb")
    return total


def token_counts(f: ModelFacts, prompts: list[Prompt]) -> list[int]:
    """Prompt lengths in tokens: exact with the model's tokenizer.json, else a generous guess
    (one token per 3 bytes) that errs towards refusing."""
    texts = [(p.system_prompt + "\n\n" if p.system_prompt else "") + p.text for p in prompts]
    extra = [16 if p.chat_template else 0 for p in prompts]       # chat markup, roughly
    if f.tokenizer_file:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(f.tokenizer_file)
        tok.no_truncation()
        tok.no_padding()
        return [len(e.ids) + x for e, x in zip(tok.encode_batch(texts), extra)]
    return [math.ceil(len(t.encode()) / 3) + 2 + x for t, x in zip(texts, extra)]


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def check_gold_labels(spec, prompts: list[Prompt]) -> None:
    """A gold label outside a label set could never be predicted: almost surely a typo in the data."""
    golds = {p.label for p in prompts if p.label is not None}
    for v in spec.task.variants():
        if not v.get("labels") or v.get("pipeline_task") == "text-classification":
            continue          # text-classification predicts the model's own labels (id2label)
        if golds <= set(v["labels"]):
            continue
        for p in prompts:
            if p.label is not None and p.label not in v["labels"]:
                raise _error(spec, f"prompt {p.id!r} of set {p.set!r} has gold label {p.label!r}, which is not "
                                   f"in the label set {sorted(v['labels'])}", "task.labels")
