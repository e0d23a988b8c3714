"""Classify prompts into labels: label likelihood (causal LM), embedding similarity (encoder), or a
transformers pipeline over a model with a classification head.

Every row has the candidate labels, a score per label, the predicted label, and `correct` when the
prompt set gives a gold `label`. The method is a task variant; the plan pairs each model only with
the variants whose method fits its kind, so one element loads one model class.

This module declares the task and builds the prompts (pure); `methods.py` beside it scores a batch.
"""
from __future__ import annotations

import hashlib
import json
import random
import string
import time
from collections import Counter
from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from lmsweep.core.task import MAX_PROB_DELTA, MIN_EXACT_MATCH, Metric, PlannedUnits, Sample, Task, TaskParams, Tolerance
from lmsweep.core.task_registry import register_task
from lmsweep.runner.units import TaskContext, Unit, UnitFailure

CLASSIFY_METHODS = ("label_likelihood", "embedding_similarity", "pipeline")
# Which model kinds (jobs.model_facts.KINDS) each method can run on.
METHOD_KINDS = {"label_likelihood": ("causal_lm",), "embedding_similarity": ("encoder",)}
PIPELINE_KINDS = {"text-classification": ("sequence_classification",),
                  "zero-shot-classification": ("sequence_classification",),
                  "token-classification": ("token_classification",)}
Method = Literal["label_likelihood", "embedding_similarity", "pipeline"]
PipelineTask = Literal["text-classification", "token-classification", "zero-shot-classification"]
LabelSet = dict[str, str]

CHOICES_COLUMN = "choices"
NEEDS_LABELS = "label_likelihood, embedding_similarity and zero-shot-classification"

MAX_ACCURACY_DROP = Tolerance("max_accuracy_drop", 0.0, "classify: baseline accuracy minus current accuracy",
                              ge=0, le=1)


class FewShotExample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    text: str = Field(min_length=1)
    label: str = Field(min_length=1)


class ClassifyParams(TaskParams):
    """Classify each prompt into one of a set of labels.

    `labels` maps each gold label to the text the method compares against: the label word(s) a
    causal LM continues with (label_likelihood), a description embedded by an encoder
    (embedding_similarity), or the candidate label (zero-shot) / the model's own id2label name
    (text-classification) for pipelines. A list of mappings is a sweep over label sets.
    A prompt whose `choices_column` holds its own candidates (a list of label texts, or a mapping gold label →
    text: lm-eval's doc_to_choice) is classified among those instead, so one spec holds a mixed
    multiple-choice set. Parameters a method does not use are normalised away, so a sweep makes no
    duplicate units.
    """

    type: Literal["classify"] = "classify"
    SWEEP: ClassVar[tuple[str, ...]] = ("method", "labels", "template", "shots", "seed", "length_norm")

    method: Method | list[Method] = "label_likelihood"
    labels: LabelSet | list[LabelSet] | None = None
    template: str | list[str] = "{text}"
    shots: int | list[int] = 0
    examples: list[FewShotExample] = Field(default_factory=list)
    seed: int | list[int] = 0                      # which examples each prompt gets, deterministically
    balanced: bool = True                          # few-shot draws have as many examples of each label as can be
    length_norm: bool | list[bool] = False         # mean instead of summed log-probability per label
    label_prefix: str = " "                        # between the prompt and the label word
    example_separator: str = "\n\n"
    pipeline_task: PipelineTask = "text-classification"
    hypothesis_template: str = "This example is {}."
    choices_column: str = Field(CHOICES_COLUMN, min_length=1)   # prompt column holding a prompt's own candidates

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
            check_template(t)
        return v

    @field_validator("shots", "seed")
    @classmethod
    def _non_negative(cls, v):
        if any(x < 0 for x in (v if isinstance(v, list) else [v])):
            raise ValueError("must be >= 0")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ClassifyParams:
        if self.hypothesis_template.count("{}") != 1:
            raise ValueError("hypothesis_template must contain {} exactly once")
        # `labels` may be left out when every prompt carries its own choices: Classify.check_plan says which does not
        shots = max(self.shots) if isinstance(self.shots, list) else self.shots
        if shots > len(self.examples):
            raise ValueError(f"shots: {shots} shots need at least {shots} examples, got {len(self.examples)}")
        for s in (self.labels if isinstance(self.labels, list) else [self.labels] if self.labels else []):
            unknown = sorted({e.label for e in self.examples} - set(s))
            if unknown:
                raise ValueError(f"examples: label {unknown[0]!r} is not in label set {sorted(s)}")
        return self

    @model_serializer(mode="wrap")
    def _without_default_balanced(self, handler):
        # `balanced` joined later: left out of the spec's dump at its default, so existing specs keep their spec
        # hash (few-shot variants name it, so their unit ids moved with the draw: see _normalise)
        # `choices_column` likewise at its default: per-item choices enter the unit ids through the prompt
        # (Classify.prompt_identity), so a spec without them keeps its ids
        data = handler(self)
        if isinstance(data, dict) and data.get("balanced") is True:
            data.pop("balanced")
        if isinstance(data, dict) and data.get("choices_column") == CHOICES_COLUMN:
            data.pop("choices_column")
        return data

    def variants(self) -> list[dict]:
        out, seen = [], set()
        for v in super().variants():
            v = _normalise(v)
            key = json.dumps(v, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(v)
        return out


def _normalise(v: dict) -> dict:
    """Fix the parameters a method ignores, so they neither multiply units nor change unit ids."""
    v = dict(v)
    if v["method"] != "label_likelihood" or v["shots"] == 0:
        v.update(shots=0, seed=0, examples=[], example_separator=None)
    if not v["shots"]:
        v.pop("balanced", None)            # no examples drawn: balanced changes nothing
    else:
        # Said explicitly in every few-shot variant, hence in its unit ids: the balanced draw (2026-12) shows
        # other examples than the earlier one did, so rows drawn before must not count as done for it.
        v["balanced"] = v.get("balanced", True)
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


class ClassifyVariant(BaseModel):
    """One variant as a batch runs it: one value per sweepable field, and None for what its method
    ignores (see `_normalise`). Defaults are ClassifyParams' (for building one by hand, as tests do)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["classify"] = "classify"
    method: Method = "label_likelihood"
    labels: LabelSet | None = None
    template: str = "{text}"
    shots: int = 0
    examples: list[FewShotExample] = Field(default_factory=list)
    seed: int = 0
    balanced: bool = True
    length_norm: bool = False
    label_prefix: str | None = " "
    example_separator: str | None = "\n\n"
    pipeline_task: PipelineTask | None = "text-classification"
    hypothesis_template: str | None = "This example is {}."
    choices_column: str = CHOICES_COLUMN


@register_task("classify")
class Classify(Task):
    Params = ClassifyParams
    Variant = ClassifyVariant
    needs_model_facts = True
    # The gold label is the common `label` column; the variant's parameters are repeated as columns.
    columns = (
        ("method", pa.string()), ("pipeline_task", pa.string()), ("template", pa.string()),
        ("shots", pa.int32()), ("fewshot_seed", pa.int64()), ("length_norm", pa.bool_()),
        ("label_set", pa.string()), ("candidate_labels", pa.list_(pa.string())),
        ("label_scores", pa.list_(pa.float64())), ("label_num_tokens", pa.list_(pa.int32())),
        ("predicted_label", pa.string()), ("correct", pa.bool_()), ("fewshot_indices", pa.list_(pa.int32())),
        ("tokens", pa.list_(pa.string())), ("token_labels", pa.list_(pa.string())),
        ("token_scores", pa.list_(pa.float32())), ("entities", pa.string()),
        ("rendered_prompt", pa.string()),
    )
    tolerances = (MIN_EXACT_MATCH, MAX_PROB_DELTA, MAX_ACCURACY_DROP)
    probability_columns = frozenset({"token_scores"})
    metrics = (
        Metric("accuracy", 0.01, "classify: share of units right, paired (McNemar on the flips)", direction="down"),
        Metric("top_label_score", None, "classify: the predicted label's score per unit, paired (reported)"),
    )

    def auto_class_for(self, variant: ClassifyVariant) -> str:
        if variant.method == "label_likelihood":
            return "AutoModelForCausalLM"
        if variant.method == "embedding_similarity":
            return "AutoModel"
        if variant.pipeline_task == "token-classification":
            return "AutoModelForTokenClassification"
        return "AutoModelForSequenceClassification"

    def model_kinds(self, variant: ClassifyVariant) -> tuple[str, ...]:
        if variant.method == "pipeline":
            return PIPELINE_KINDS[variant.pipeline_task]
        return METHOD_KINDS[variant.method]

    def variant_label(self, variant: ClassifyVariant) -> tuple[str, str]:
        return (variant.pipeline_task if variant.method == "pipeline" else variant.method), "task.method"

    def prompt_identity(self, params: ClassifyParams, prompt) -> dict:
        """A prompt's own choices are part of its units' ids (only where it has some: other ids stay)."""
        try:
            choices = item_choices(prompt.meta, params.choices_column)
        except ValueError:
            return {"choices": json.loads(prompt.meta or "{}").get(params.choices_column)}   # check_plan refuses it
        return {} if choices is None else {"choices": choices}

    def check_plan(self, spec, facts, prompts, units: PlannedUnits) -> None:
        """Every prompt has candidates (its own choices or a label set) that its method can score, and its gold
        label among them: a gold label outside could never be predicted, almost surely a typo in the data."""
        column = spec.task.choices_column
        own = {}
        for p in prompts:
            try:
                own[p.set, p.id] = item_choices(p.meta, column)
            except ValueError as e:
                raise spec.source.error(f"prompt {p.id!r} of set {p.set!r}: column {column!r}: {e}",
                                        "task.choices_column") from None
        golds = {p.label for p in prompts if p.label is not None and own[p.set, p.id] is None}
        for v in spec.task.variants():
            scores_texts = v["method"] != "pipeline" or v.get("pipeline_task") == "zero-shot-classification"
            for p in prompts:
                choices = own[p.set, p.id]
                if choices is None:
                    if scores_texts and not v.get("labels"):
                        raise spec.source.error(f"required for {NEEDS_LABELS} (a mapping gold label → label text, "
                                                f"or a list of label names): prompt {p.id!r} of set {p.set!r} has "
                                                f"no choices of its own (column {column!r})", "task.labels")
                    continue
                if not scores_texts:
                    raise spec.source.error(f"prompt {p.id!r} of set {p.set!r} has its own choices (column "
                                            f"{column!r}), which {v.get('pipeline_task')} does not score; per-item "
                                            f"choices need {NEEDS_LABELS}", "task.choices_column")
                if p.label is not None and p.label not in choices:
                    raise spec.source.error(f"prompt {p.id!r} of set {p.set!r} has gold label {p.label!r}, which is "
                                            f"not among its choices {list(choices)}", "task.choices_column")
            if not v.get("labels") or v.get("pipeline_task") == "text-classification":
                continue          # text-classification predicts the model's own labels (id2label)
            if golds <= set(v["labels"]):
                continue
            for p in prompts:
                if p.label is not None and own[p.set, p.id] is None and p.label not in v["labels"]:
                    raise spec.source.error(f"prompt {p.id!r} of set {p.set!r} has gold label {p.label!r}, which "
                                            f"is not in the label set {sorted(v['labels'])}", "task.labels")

    def run(self, ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
        from lmsweep.runner.tasks.classify import methods

        p: ClassifyVariant = ctx.params
        start = time.perf_counter()
        if p.method == "label_likelihood":
            rows, errors = methods.label_likelihood(ctx, units)
        elif p.method == "embedding_similarity":
            rows, errors = methods.embedding_similarity(ctx, units)
        elif p.pipeline_task == "token-classification":
            rows, errors = methods.token_classification(ctx, units)
        else:
            rows, errors = methods.pipeline(ctx, units)
        latency = time.perf_counter() - start
        variant = _variant_columns(p)
        by_id = {u.unit_id: u for u in units}
        for r in rows:
            own = r.pop("own_label_set", None)          # the prompt's own choices (item_choices), not the variant's
            r.update(variant, batch_latency_s=latency)
            if own is not None:
                r["label_set"] = json.dumps(own, sort_keys=True, ensure_ascii=False)
            gold = by_id[r["unit_id"]].prompt.get("label")
            if r.get("predicted_label") is not None and gold is not None:
                r["correct"] = r["predicted_label"] == gold
        return rows, errors

    def summarize(self, df):
        """Accuracy, macro-F1 and the confusion matrix per configuration (results/metrics.py), with lm-eval's
        accuracy stderr, acc_norm and acc_bytes beside the accuracy (results/lm_eval.py)."""
        from lmsweep.results.lm_eval import classify_columns
        from lmsweep.results.metrics import classification_summary

        return classify_columns(df, classification_summary(df))

    def report_plots(self, df):
        """Accuracy by number of shots, per model (classify/views.py)."""
        from lmsweep.runner.tasks.classify.views import plot_accuracy_by_shots

        return plot_accuracy_by_shots(df)

    def compare(self, both, tol, checks):
        """The default rule over the outputs (a predicted label judged by accuracy when there are gold
        labels, else it must not change), then accuracy: baseline − current within max_accuracy_drop."""
        import pandas as pd

        from lmsweep.results.compare import compare_outputs

        gold = all(c in both.columns and both[c].notna().any() for c in ("correct_b", "correct_c"))
        diffs, info = compare_outputs(both, self, tol, checks,
                                      skip={"correct", "predicted_label"} if gold else {"correct"})
        if "correct_b" in both.columns and "correct_c" in both.columns:
            flips = _accuracy(both, tol, checks)
            diffs = pd.concat([diffs, flips], ignore_index=True) if not diffs.empty else flips
        return diffs, info

    def statistics(self, base, cur, both):
        """Per model: right/wrong per unit on both sides (where both have a gold label) for McNemar, and the
        highest label score paired unit by unit."""
        out = []
        for model, g in both.groupby("model_b", sort=True):
            if "correct_b" in g.columns and "correct_c" in g.columns:
                gold = g[g["correct_b"].notna() & g["correct_c"].notna()]
                if len(gold):
                    out.append(Sample(model, "accuracy", "mcnemar", gold["correct_b"].astype(bool).tolist(),
                                      gold["correct_c"].astype(bool).tolist()))
            if "label_scores_b" in g.columns:
                s = g[g["label_scores_b"].map(_has_scores) & g["label_scores_c"].map(_has_scores)]
                if len(s):
                    out.append(Sample(model, "top_label_score", "paired", [float(max(x)) for x in s["label_scores_b"]],
                                      [float(max(x)) for x in s["label_scores_c"]]))
        return out


def _has_scores(x) -> bool:
    return x is not None and not isinstance(x, float) and len(x) > 0


def _accuracy(both, tol, checks):
    import numpy as np
    import pandas as pd

    from lmsweep.results.compare import Check

    acc_b = float(both["correct_b"].astype(float).mean())
    acc_c = float(both["correct_c"].astype(float).mean())
    checks.append(Check("accuracy drop (baseline − current)", acc_b - acc_c, tol.max_accuracy_drop, "<=",
                        f"accuracy {acc_b:.3f} → {acc_c:.3f} over {len(both)} units"))
    flip = both["correct_b"].astype(bool) != both["correct_c"].astype(bool)
    part = both[flip]
    return pd.DataFrame({
        "unit_id": part["unit_id_c"], "model": part["model_c"], "prompt_id": part["prompt_id_c"],
        "flip": np.where(part["correct_c"].astype(bool), "wrong → right", "right → wrong"),
        "baseline_pred": part.get("predicted_label_b"), "current_pred": part.get("predicted_label_c"),
        "label": part.get("label_c")}).reset_index(drop=True)


def _variant_columns(p: ClassifyVariant) -> dict:
    return {"method": p.method, "pipeline_task": p.pipeline_task, "template": p.template,
            "shots": p.shots, "fewshot_seed": p.seed, "length_norm": p.length_norm,
            "label_set": json.dumps(p.labels, sort_keys=True, ensure_ascii=False) if p.labels else None}


# ---- prompts (pure) -----------------------------------------------------------------------------------------

BRACES = "write a literal brace as {{ or }}"


def check_template(template: str) -> None:
    """A template has `{text}` and no other placeholder; literal braces are doubled (str.format's rules)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:                       # a lone { or }
        raise ValueError(f"template {template!r}: {e} ({BRACES})") from None
    fields = [(name, conv, spec) for _, name, spec, conv in parts if name is not None]
    for name, conv, spec in fields:
        if name != "text" or conv or spec:
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"template {template!r} has an unknown placeholder {shown}; the only placeholder "
                             f"is {{text}} ({BRACES})")
    if not fields:
        raise ValueError(f"template {template!r} has no {{text}} placeholder")


def fill(template: str, text: str) -> str:
    """The template with `{text}` replaced by the text and `{{`/`}}` by literal braces."""
    return template.format(text=text)


def item_choices(meta: str | dict | None, column: str) -> LabelSet | None:
    """A prompt's own candidates from its free column `column` (lm-eval's doc_to_choice), or None when it has
    none: a list of label texts (each its own gold label name, in the given order) or a mapping gold label →
    label text; JSON text of either (a CSV cell). Raises ValueError saying what is wrong."""
    meta = json.loads(meta or "{}") if isinstance(meta, str) else (meta or {})
    value = meta.get(column)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"expected a list of label texts or a mapping label → text (JSON in a text "
                             f"column), got {value[:80]!r}") from None
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        if len(set(value)) < len(value):
            raise ValueError(f"a choice appears twice in {value}")
        value = {x: x for x in value}
    elif not (isinstance(value, dict) and all(isinstance(x, str) for x in value.values())):
        raise ValueError(f"expected a list of label texts or a mapping label → text, got {value!r:.80}")
    if len(value) < 2:
        raise ValueError(f"needs at least two choices, got {list(value)}")
    if any(not w.strip() for w in value.values()):
        raise ValueError("empty choice text")
    return {str(k): w for k, w in value.items()}


def label_names(p: ClassifyVariant) -> list[str]:
    return sorted(p.labels)


def candidates(p: ClassifyVariant, prompt: dict) -> tuple[list[str], LabelSet]:
    """(gold label names in candidate order, name → label text) for one unit's prompt: its own choices, else
    the variant's label set (names sorted)."""
    own = item_choices(prompt.get("meta"), p.choices_column)
    if own is not None:
        return list(own), own
    if not p.labels:
        raise UnitFailure(f"no label set and no choices of its own (column {p.choices_column!r})")
    return label_names(p), p.labels


BALANCED_TRIES = 200


def fewshot_indices(p: ClassifyVariant, prompt_text: str) -> list[int]:
    """k examples for this prompt, the same on every run, model and machine: drawn by a generator
    seeded from (seed, prompt text); an example identical to the prompt is never shown with it.

    Balanced (the default): the label counts differ by at most one, except where a label has too few
    examples. The generator draws as before until a draw is balanced, so a prompt whose first draw
    already was keeps its examples; after BALANCED_TRIES it deals the labels in turn instead."""
    k = p.shots
    if not k:
        return []
    pool = [i for i, e in enumerate(p.examples) if e.text != prompt_text]
    if len(pool) < k:
        raise UnitFailure(f"{k} shots requested but only {len(pool)} examples differ from this prompt")
    digest = hashlib.sha256(f"{p.seed}\0{prompt_text}".encode()).hexdigest()
    rng = random.Random(int(digest[:16], 16))
    if not p.balanced:
        return rng.sample(pool, k)
    available = Counter(p.examples[i].label for i in pool)
    for _ in range(BALANCED_TRIES):
        draw = rng.sample(pool, k)
        if is_balanced(Counter(p.examples[i].label for i in draw), available):
            return draw
    return dealt(p, pool, k, rng)


def is_balanced(counts: Counter, available: Counter) -> bool:
    """No label could give an example to another with at least two fewer that still has some to give."""
    return all(counts[a] - counts[b] <= 1 or counts[b] == available[b] for a in available for b in available)


def dealt(p: ClassifyVariant, pool: list[int], k: int, rng: random.Random) -> list[int]:
    """k examples dealt one label at a time (labels in a shuffled order, examples shuffled per label), then
    shuffled: balanced by construction."""
    by_label: dict[str, list[int]] = {}
    for i in pool:
        by_label.setdefault(p.examples[i].label, []).append(i)
    order = sorted(by_label)
    rng.shuffle(order)
    for label in order:
        rng.shuffle(by_label[label])
    out: list[int] = []
    while len(out) < k:
        for label in order:
            if by_label[label] and len(out) < k:
                out.append(by_label[label].pop())
    rng.shuffle(out)
    return out


def build_context(p: ClassifyVariant, prompt_text: str, shots: list[int]) -> str:
    """Few-shot examples (template + label word each), then the prompt in the template."""
    examples = [p.examples[i] for i in shots]
    parts = [fill(p.template, e.text) + p.label_prefix + (p.labels or {}).get(e.label, e.label) for e in examples]
    parts.append(fill(p.template, prompt_text))
    return (p.example_separator or "").join(parts)
