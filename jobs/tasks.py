"""Task parameters as data. Each task's execution lives in runner/tasks/<name>.py."""
from __future__ import annotations

import itertools
import json
from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Task(BaseModel):
    """Task parameters. Fields named in SWEEP may be given as a list: each value is a task variant,
    and the plan crosses variants with models, decoding points and prompts."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    SWEEP: ClassVar[tuple[str, ...]] = ()
    NEEDS_MODEL_FACTS: ClassVar[bool] = False     # the plan reads each model's kind and shape for it

    uses_decoding: bool = Field(False, exclude=True)

    def canonical_params(self) -> dict:
        return self.model_dump(exclude={"uses_decoding"})

    def variants(self) -> list[dict]:
        """The product of the sweepable fields given as lists; one dict of plain params per variant."""
        params = self.canonical_params()
        axes = {k: params[k] for k in self.SWEEP if isinstance(params.get(k), list)}
        if not axes:
            return [params]
        return [{**params, **dict(zip(axes, combo))} for combo in itertools.product(*axes.values())]

    def fits(self, variant: dict, kind: str | None) -> bool:
        """Whether a model of this kind (see jobs.model_facts) runs this variant; the plan skips
        (model, variant) pairs that do not fit, e.g. embedding_similarity on a causal LM."""
        return True


class GenerateTask(_Task):
    """Free text generation over the decoding grid."""

    type: Literal["generate"] = "generate"
    uses_decoding: bool = Field(True, exclude=True)


class NextTokenTask(_Task):
    """Top-k next-token probabilities after the prompt (one forward pass)."""

    type: Literal["next_token"] = "next_token"
    top_k: int = Field(10, ge=1, le=1000)


class AttentionTask(_Task):
    """Attention weights of selected layers and (query) heads over the prompt, from an eager forward pass."""

    type: Literal["attention"] = "attention"
    NEEDS_MODEL_FACTS: ClassVar[bool] = True
    layers: Literal["all"] | list[int] = "all"     # negative indices count from the last layer
    heads: Literal["all"] | list[int] = "all"      # query heads (with grouped-query attention, not KV heads)
    head_mean: bool = False                        # store the mean over the selected heads instead of each
    max_tokens: int = Field(256, ge=1, le=32768)   # longer prompts keep their first max_tokens tokens
    dtype: Literal["float16", "float32"] = "float16"
    max_storage_mb: float = Field(1024, gt=0)      # refuse to plan above this estimated size

    @field_validator("layers", "heads")
    @classmethod
    def _selection(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("select at least one, or write `all`")
            if len(set(v)) != len(v):
                raise ValueError("duplicate index")
        return v

    def canonical_params(self) -> dict:
        # The cap decides whether to run, not what a unit computes: keep it out of unit ids.
        return self.model_dump(exclude={"uses_decoding", "max_storage_mb"})


CLASSIFY_METHODS = ("label_likelihood", "embedding_similarity", "pipeline")
PIPELINE_TASKS = ("text-classification", "token-classification", "zero-shot-classification")
# Which model kinds (jobs.model_facts.ModelFacts.kind) each classify method can run on.
METHOD_KINDS = {"label_likelihood": ("causal_lm",), "embedding_similarity": ("encoder",)}
PIPELINE_KINDS = {"text-classification": ("sequence_classification",),
                  "zero-shot-classification": ("sequence_classification",),
                  "token-classification": ("token_classification",)}
Method = Literal["label_likelihood", "embedding_similarity", "pipeline"]
LabelSet = dict[str, str]


class FewShotExample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    text: str = Field(min_length=1)
    label: str = Field(min_length=1)


class ClassifyTask(_Task):
    """Classify each prompt into one of a set of labels.

    `labels` maps each gold label to the text the method compares against: the label word(s) a
    causal LM continues with (label_likelihood), a description embedded by an encoder
    (embedding_similarity), or the candidate label (zero-shot) / the model's own id2label name
    (text-classification) for pipelines. A list of mappings is a sweep over label sets.
    Parameters a method does not use are normalised away, so a sweep makes no duplicate units.
    """

    type: Literal["classify"] = "classify"
    SWEEP: ClassVar[tuple[str, ...]] = ("method", "labels", "template", "shots", "seed", "length_norm")
    NEEDS_MODEL_FACTS: ClassVar[bool] = True

    method: Method | list[Method] = "label_likelihood"
    labels: LabelSet | list[LabelSet] | None = None
    template: str | list[str] = "{text}"
    shots: int | list[int] = 0
    examples: list[FewShotExample] = Field(default_factory=list)
    seed: int | list[int] = 0                      # which examples each prompt gets, deterministically
    length_norm: bool | list[bool] = False         # mean instead of summed log-probability per label
    label_prefix: str = " "                        # between the prompt and the label word
    example_separator: str = "\n\n"
    pipeline_task: Literal["text-classification", "token-classification", "zero-shot-classification"] \
        = "text-classification"
    hypothesis_template: str = "This example is {}."

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v):
        for m in (v if isinstance(v, list) else [v]):
            if m not in CLASSIFY_METHODS:
                raise ValueError(f"unknown method {m!r}; expected one of {', '.join(CLASSIFY_METHODS)}")
        return v

    @field_validator("labels", mode="before")
    @classmethod
    def _label_names(cls, v):
        if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            return {x: x for x in v}             # a list of names: each name is its own label word
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v):
        for s in (v if isinstance(v, list) else [v] if v is not None else []):
            if len(s) < 2:
                raise ValueError("a label set needs at least two labels")
            if any(not w.strip() for w in s.values()):
                raise ValueError("empty label text")
        if isinstance(v, list) and not v:
            raise ValueError("empty list of label sets")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v):
        for t in (v if isinstance(v, list) else [v]):
            if "{text}" not in t:
                raise ValueError(f"template {t!r} has no {{text}} placeholder")
        return v

    @field_validator("shots", "seed")
    @classmethod
    def _non_negative(cls, v):
        if any(x < 0 for x in (v if isinstance(v, list) else [v])):
            raise ValueError("must be >= 0")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ClassifyTask:
        if self.hypothesis_template.count("{}") != 1:
            raise ValueError("hypothesis_template must contain {} exactly once")
        methods = set(self.method if isinstance(self.method, list) else [self.method])
        needs_labels = methods & {"label_likelihood", "embedding_similarity"} or (
            "pipeline" in methods and self.pipeline_task == "zero-shot-classification")
        if needs_labels and self.labels is None:
            raise ValueError("labels: required for label_likelihood, embedding_similarity and zero-shot "
                             "(a mapping gold label → label text, or a list of label names)")
        shots = max(self.shots) if isinstance(self.shots, list) else self.shots
        if shots > len(self.examples):
            raise ValueError(f"shots: {shots} shots need at least {shots} examples, got {len(self.examples)}")
        for s in (self.labels if isinstance(self.labels, list) else [self.labels] if self.labels else []):
            unknown = sorted({e.label for e in self.examples} - set(s))
            if unknown:
                raise ValueError(f"examples: label {unknown[0]!r} is not in label set {sorted(s)}")
        return self

    def variants(self) -> list[dict]:
        out, seen = [], set()
        for v in super().variants():
            v = _normalise_classify(v)
            key = json.dumps(v, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(v)
        return out

    def fits(self, variant: dict, kind: str | None) -> bool:
        if kind is None:
            return True
        return kind in classify_kinds(variant)


def classify_kinds(variant: dict) -> tuple[str, ...]:
    if variant["method"] == "pipeline":
        return PIPELINE_KINDS[variant["pipeline_task"]]
    return METHOD_KINDS[variant["method"]]


def _normalise_classify(v: dict) -> dict:
    """Fix the parameters a method ignores, so they neither multiply units nor change unit ids."""
    v = dict(v)
    if v["method"] != "label_likelihood" or v["shots"] == 0:
        v.update(shots=0, seed=0, examples=[], example_separator=None)
    if v["method"] != "label_likelihood":
        v.update(length_norm=False, label_prefix=None)
    if v["method"] != "pipeline":
        v.update(pipeline_task=None, hypothesis_template=None)
    else:
        if v["pipeline_task"] != "zero-shot-classification":
            v["hypothesis_template"] = None
        if v["pipeline_task"] == "token-classification":
            v.update(labels=None, template="{text}")
    return v


class TokenizeTask(_Task):
    """Tokens, ids and counts per prompt and model; loads the tokenizer only, never the weights."""

    type: Literal["tokenize"] = "tokenize"
    add_special_tokens: bool = True


TaskSpec = Annotated[Union[GenerateTask, NextTokenTask, AttentionTask, ClassifyTask, TokenizeTask],
                     Field(discriminator="type")]
TASK_NAMES = ("generate", "next_token", "attention", "classify", "tokenize")
