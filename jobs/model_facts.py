"""What the plan needs to know about a model without loading it: its kind and attention shape.

Read from config.json (directories, Hub cache) or the GGUF header (packaged GGUF files), and only
for tasks that ask (`Task.needs_model_facts`: a task that runs only on some kinds of model, or checks
layers/heads and sizes before it runs).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from lmsweep.jobs.model_files import read_config, weights_problem
from lmsweep.jobs.model_sources import PACKAGES, ModelRef

if TYPE_CHECKING:
    from lmsweep.core.task import Task
    from lmsweep.jobs.spec import ExperimentSpec

KINDS = ("causal_lm", "encoder", "sequence_classification", "token_classification")


@dataclass(frozen=True)
class ModelFacts:
    kind: str                    # one of KINDS, or "unknown"
    num_layers: int | None
    num_heads: int | None        # query heads
    num_kv_heads: int | None     # key/value heads (fewer than num_heads with grouped-query attention)
    tokenizer_file: str | None   # a tokenizer.json to count prompt tokens with, when there is one
    hidden_size: int | None = None   # width of the hidden states
    model_type: str | None = None    # config.json's model_type (of its text model); a GGUF file's architecture


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


def model_kind(ref: ModelRef) -> str:
    """The model's kind, cheaply (no GGUF header is parsed): a package says it, a GGUF file is a causal
    LM, a directory's config.json names its architectures."""
    if ref.kind == "package":
        return PACKAGES[ref.source.removeprefix("package:")].kind
    if ref.gguf:
        return "causal_lm"
    config = Path(ref.path) / "config.json"
    if not config.is_file():
        return "unknown"
    architectures = read_config(config).get("architectures")
    return kind_of([a for a in architectures if isinstance(a, str)] if isinstance(architectures, list) else [])


def model_facts(ref: ModelRef) -> ModelFacts:
    if ref.gguf:
        return _gguf_facts(ref)
    path = Path(ref.path)
    cfg = read_config(path / "config.json")
    text = cfg.get("text_config")             # multimodal configs nest the language model's
    if not isinstance(text, dict):
        text = cfg
    heads = text.get("num_attention_heads") or text.get("n_head")
    tok = path / "tokenizer.json"
    return ModelFacts(kind=model_kind(ref), num_layers=text.get("num_hidden_layers") or text.get("n_layer"),
                      num_heads=heads, num_kv_heads=text.get("num_key_value_heads") or heads,
                      tokenizer_file=str(tok) if tok.is_file() else None,
                      hidden_size=text.get("hidden_size") or text.get("n_embd") or text.get("d_model"),
                      model_type=text.get("model_type"))


# GGUF's `general.architecture` where transformers' model_type for the loaded model differs (transformers'
# modeling_gguf_pytorch_utils and its GGUF config mapping; checked on the packaged Gemma 3: "gemma3" loads as
# gemma3_text). Every other architecture keeps its name.
GGUF_MODEL_TYPES = {"gemma3": "gemma3_text", "gptneox": "gpt_neox", "phi2": "phi", "qwen2moe": "qwen2_moe",
                    "qwen3moe": "qwen3_moe", "command-r": "cohere", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}
FACTS_VERSION = 2     # of the cached GGUF facts: 2 added model_type


def _gguf_facts(ref: ModelRef) -> ModelFacts:
    """From the GGUF header, read once per file: GGUFReader parses every metadata field in Python, the
    whole vocabulary included (2.7 s of CPU for SmolLM2), so the few numbers kept are cached in the
    lmsweep cache under the file's fingerprint (content-derived: a changed file gets a new entry)."""
    from lmsweep.jobs.model_cache import cache_root

    kind = PACKAGES[ref.source.removeprefix("package:")].kind if ref.kind == "package" else "causal_lm"
    cached = cache_root() / "facts" / (re.sub(r"[^A-Za-z0-9._-]", "_", ref.fingerprint) + f".v{FACTS_VERSION}.json")
    names = [f.name for f in fields(ModelFacts) if f.name != "kind"]
    try:
        stored = json.loads(cached.read_text())
        if sorted(stored) == sorted(names):      # written by this lmsweep's ModelFacts
            return ModelFacts(kind=kind, **stored)
    except (OSError, ValueError):
        pass
    from gguf import GGUFReader

    reader = GGUFReader(ref.path)

    def field(name: str):
        f = reader.fields.get(name)
        return f.contents() if f is not None else None

    arch = field("general.architecture")
    heads = field(f"{arch}.attention.head_count")
    model_type = GGUF_MODEL_TYPES.get(arch, arch)
    if arch == "llama" and "mistral" in str(field("general.name") or "").lower():
        model_type = "mistral"                   # llama.cpp files Mistral under llama; transformers tells them apart
    facts = ModelFacts(kind=kind, num_layers=field(f"{arch}.block_count"), num_heads=heads,
                       num_kv_heads=field(f"{arch}.attention.head_count_kv") or heads, tokenizer_file=None,
                       hidden_size=field(f"{arch}.embedding_length"), model_type=model_type)
    try:       # a read-only or full cache costs the next plan the header read, nothing else
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({n: getattr(facts, n) for n in names}))
        os.replace(tmp, cached)
    except OSError:
        pass
    return facts


def variants_per_model(spec: ExperimentSpec, task: Task, refs: dict[str, ModelRef], variants: list[dict]
                       ) -> tuple[dict[str, ModelFacts], dict[str, list[int]]]:
    """(facts per model alias, indices of the task variants each model runs), or a SpecError; see
    `_variants_per_model`. A model directory whose weights the task will load has its safetensors
    files checked too (check_weights)."""
    facts, fitting = _variants_per_model(spec, task, refs, variants)
    typed = [task.variant(v) for v in variants]
    check_weights(spec, refs, {alias: any(task.auto_class_for(typed[vi]) is not None for vi in vis)
                               for alias, vis in fitting.items()})
    return facts, fitting


def check_weights(spec: ExperimentSpec, refs: dict[str, ModelRef], loads_weights: dict[str, bool]) -> None:
    """Each model directory (local or Hub cache) whose weights will be loaded must have whole safetensors
    files: a header that parses and a size equal to what it says (jobs.model_files), so that a truncated
    copy is refused here, in one line naming the file, rather than by a traceback on the compute node.
    Reads only the headers. A tokenizer-only task (tokenize) never reads the weights, so skips this."""
    for i, m in enumerate(spec.models):
        ref = refs[m.alias]
        if ref.kind in ("dir", "hub") and not ref.gguf and loads_weights.get(m.alias):
            problem = weights_problem(Path(ref.path))
            if problem:
                raise spec.source.error(problem, f"models[{i}].source", ("models", i, "source"))


def _variants_per_model(spec: ExperimentSpec, task: Task, refs: dict[str, ModelRef], variants: list[dict]
                        ) -> tuple[dict[str, ModelFacts], dict[str, list[int]]]:
    """(facts per model alias, indices of the task variants each model runs), or a SpecError.

    Every task declares the kinds of model it runs on (`Task.model_kinds`, per variant) and the
    execution backends that serve it (`Task.backends`); a spec pairing it with another is refused here,
    before anything is written. A sweep may mix model kinds (for classify, a causal LM for
    label_likelihood and an encoder for embedding_similarity): each model runs only the variants that
    admit its kind. A model that runs nothing, or a variant no model runs, is an error rather than a
    silent gap. A model whose kind cannot be read ("unknown") is admitted when the task needs one kind
    throughout (loading it says more), and refused when variants need different kinds."""
    check_backend(spec, task)
    everything = {m.alias: list(range(len(variants))) for m in spec.models}
    typed = [task.variant(v) for v in variants]
    needed = [task.model_kinds(v) for v in typed]
    if task.needs_model_facts:
        facts = {m.alias: model_facts(refs[m.alias]) for m in spec.models}
        kind = {a: f.kind for a, f in facts.items()}
    elif any(k is not None for k in needed):
        facts, kind = {}, {m.alias: model_kind(refs[m.alias]) for m in spec.models}
    else:
        return {}, everything
    one_need = len({k for k in needed}) == 1

    def fits(vi: int, k: str) -> bool:
        return needed[vi] is None or k in needed[vi] or (k == "unknown" and one_need)

    fitting = {a: [vi for vi in vis if fits(vi, kind[a])] for a, vis in everything.items()}
    for i, m in enumerate(spec.models):
        if not fitting[m.alias]:
            wanted = sorted({k for ks in needed if ks for k in ks})
            what = "a model of unknown kind (its config.json names no architecture lmsweep knows)" \
                if kind[m.alias] == "unknown" else f"{_article(kind[m.alias])} {kind[m.alias]} model"
            raise spec.source.error(f"model {m.alias!r} ({m.source}) is {what}; the {task.name} task runs on "
                                    f"{' or '.join(wanted)} models", f"models[{i}]", ("models", i))
    used = {vi for vis in fitting.values() for vi in vis}
    kinds = ", ".join(f"{a}: {k}" for a, k in kind.items())
    for vi, v in enumerate(typed):
        if vi not in used:
            what, field = task.variant_label(v)
            raise spec.source.error(f"{what} runs on {' or '.join(needed[vi])} models and the spec has "
                                    f"none ({kinds})", field)
    return facts, fitting


def check_backend(spec: ExperimentSpec, task: Task) -> None:
    """The spec's execution backend must be one the task declares (`Task.backends`)."""
    backend = spec.execution.backend
    if backend not in task.backends:
        raise spec.source.error(f"the {task.name} task cannot run on backend {backend!r}; backends that serve "
                                f"it: {', '.join(task.backends)}", "execution.backend", ("execution", "backend"))


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
