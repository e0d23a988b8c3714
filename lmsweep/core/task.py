"""What a task is: the interface every task module fills in, its parameters' base and its tolerances.

A task (generate, next_token, attention, classify, tokenize, ...) is one module of runner/tasks/ that
subclasses `Task` and registers it with `@register_task` (lmsweep/core/task_registry.py). Everything the
other stages need to know about it is an attribute or a method here, so that planning, the worker, the
writer, the summaries and compare ask the task instead of comparing its name. The contract lives in the
core, not beside the tasks, so that jobs/ (planning) and results/ (schema, summaries, compare) read it
without importing runner/.

No torch, transformers or pandas at import time: `lmsweep validate` and `plan` import every task
module (the spec's `task:` union is built from them). A task imports the heavy libraries inside the
methods that run on a worker or on results.
"""
from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    import pandas as pd

    from lmsweep.jobs.model_facts import ModelFacts
    from lmsweep.jobs.prompts import Prompt
    from lmsweep.jobs.spec import ExperimentSpec
    from lmsweep.results.compare import Check
    from lmsweep.runner.units import TaskContext, Unit

Rows = list[dict]                  # task columns + unit_id (+ the rest of the row key) per row
Errors = dict[str, str]            # unit_id → why that unit failed (its batch-mates go on)


class TaskParams(BaseModel):
    """The spec's `task:` block. A subclass declares `type: Literal["<task name>"] = "<task name>"`
    (the union's discriminator) and its parameters with their defaults, written once here.

    Fields named in SWEEP may be given as a list: each value is a task variant, and the plan crosses
    variants with models, decoding points and prompts. The canonical dict of each variant is hashed
    into unit ids: changing what `canonical_params`/`variants` return moves every unit id."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    SWEEP: ClassVar[tuple[str, ...]] = ()

    uses_decoding: bool = Field(False, exclude=True)    # the task runs over the decoding grid

    def canonical_params(self) -> dict:
        return self.model_dump(exclude={"uses_decoding"})

    def variants(self) -> list[dict]:
        """The product of the sweepable fields given as lists; one dict of plain params per variant."""
        params = self.canonical_params()
        axes = {k: params[k] for k in self.SWEEP if isinstance(params.get(k), list)}
        if not axes:
            return [params]
        return [{**params, **dict(zip(axes, combo))} for combo in itertools.product(*axes.values())]


# The model kinds (jobs.model_facts.KINDS) each transformers Auto class loads: a task's default `kinds`.
CLASS_KINDS: dict[str, tuple[str, ...]] = {
    "AutoModelForCausalLM": ("causal_lm",),
    "AutoModel": ("causal_lm", "encoder"),              # the base model, without its head
    "AutoModelForSequenceClassification": ("sequence_classification",),
    "AutoModelForTokenClassification": ("token_classification",),
}


@dataclass(frozen=True)
class Tolerance:
    """One `regression.tolerances` key (and `--flag` of compare/regress): how far a rerun may drift.
    `None` as default means the check is off unless asked for. A key means one thing across tasks:
    two tasks may share a Tolerance object, never declare two different ones under the same name."""

    name: str
    default: float | int | None
    help: str
    kind: type = float
    ge: float | None = None
    le: float | None = None
    gt: float | None = None


# Used by the default compare rule (results.compare.compare_outputs) and by tasks with their own.
MIN_EXACT_MATCH = Tolerance("min_exact_match", 1.0, "share of greedy/beam sequences identical to the baseline",
                            ge=0, le=1)
MAX_PROB_DELTA = Tolerance("max_prob_delta", 1e-3, "next-token: largest |Δp| over the top-k tokens", ge=0, le=1)
# Checks every comparison makes, whatever the task.
RUN_TOLERANCES = (
    Tolerance("max_latency_ratio", None, "current/baseline median per-unit latency", gt=0),
    Tolerance("min_throughput_ratio", None, "current/baseline median tokens/s", gt=0),
    Tolerance("max_unmatched", 0, "units present on one side only", kind=int, ge=0),
)


@dataclass(frozen=True)
class Metric:
    """One statistic a task offers compare's regression gates (results.gates): its name is a key of
    `regression.gates.thresholds`, and a shift gates when it is significant (after the multiple-comparison
    correction) and beyond `threshold` in a `direction` that regresses. A name means one thing across tasks."""

    name: str
    threshold: float | None      # the practical threshold by default; None: reported, never gating
    help: str
    relative: bool = False       # threshold as a share of |baseline value| (e.g. 0.05: a 5% change)
    direction: str = "both"      # "both", "down" (only a decrease regresses, e.g. accuracy) or "up"


@dataclass(frozen=True)
class Sample:
    """Both sides' values of one Metric over one group of rows (a model × decoding point), as
    `Task.statistics` returns them. kind: "two_sample" (independent per-row values, e.g. sampled texts),
    "paired" (row i on both sides), "one_sample" (`current` against zero; `baseline` empty) or "mcnemar"
    (right/wrong per row on both sides)."""

    group: str
    metric: str
    kind: str
    baseline: Sequence[float]
    current: Sequence[float]


@dataclass(frozen=True)
class Legibility:
    """How `results.legibility.legibility_table` joins an experiment of outputs with one of this task that
    scores them (declared by the scoring task, `Task.legibility`): one row per output group (`by`) of the
    outputs task's summary columns, then `ppl_<scoring model>` = exp(−Σ log-likelihood / Σ tokens) over the
    scored rows whose prompt id is `<unit_id>/<sequence_index>` of an output."""

    outputs_task: str                  # the task whose outputs this one scores
    outputs_columns: tuple[str, ...]   # that task's summary columns the table keeps, after `by`
    by: tuple[str, ...] = ("model", "decoding")           # output groups: summary and row columns of outputs_task
    loglikelihood: str = "logprob"                         # this task's columns: log-likelihood (nats) and the
    tokens: str = "num_scored_tokens"                      # number of tokens it sums over


@dataclass(frozen=True)
class PlannedUnits:
    """The expanded units as a plan-time check sees them: one model alias and prompt index per unit."""

    models: Sequence[str]
    prompt_index: Sequence[int]            # a numpy array in the planner (millions of units)

    def prompt_indexes(self) -> list[int]:
        """The prompt indexes as plain ints, for a check that iterates over them."""
        pi = self.prompt_index
        return pi.tolist() if hasattr(pi, "tolist") else list(pi)

    def prompt_counts(self, aliases: Sequence[str]) -> dict[str, Counter]:
        """Per model alias, how many units each prompt index has (for per-prompt size checks)."""
        counts: dict[str, Counter] = {alias: Counter() for alias in aliases}
        for alias, qi in zip(self.models, self.prompt_indexes()):
            counts[alias][qi] += 1
        return counts


class Task:
    """One kind of analysis. Subclass, set the class attributes, override what differs, register.

    Attributes a task sets (the registry checks them):
        Params          the spec block (a TaskParams subclass whose `type` is the task's name)
        columns         the result columns it adds to results.schema.COMMON, as (name, pyarrow type);
                        the row writer refuses a row with any other column
    and may set:
        Variant         the typed parameters of ONE variant, as the worker gets them (default: Params);
                        needed when variants are normalised into values Params would refuse
        row_key         the columns that identify one row (a unit may have several)
        auto_class      the transformers Auto class to load; None loads the tokenizer only
        kinds           the model kinds (jobs.model_facts.KINDS) it runs on, checked at plan time for
                        every task; None (default): the kinds its Auto class loads (CLASS_KINDS; any
                        kind for a tokenizer-only task). `model_kinds` may decide per variant
        backends        the execution backends (`execution.backend`) that can serve it; the plan
                        refuses another. Default: the engines whose `tasks` declaration names it
                        (runner/engines); a task sets it only to narrow that
        attn_implementation   the attention implementation it needs (None: the model's default)
        needs_model_facts     the plan reads each model's shape (layers, heads, tokenizer; jobs.model_facts)
        tolerances      the regression/compare tolerances its compare rule reads
        compare_columns the task columns compare reads (default: all of them)
        probability_columns   float columns holding probabilities: the default compare rule judges
                        them by max_prob_delta (other floats it only reports)
    and its views, which results/ asks for instead of naming the task:
        plot_help       `lmsweep plot <name>` exists: `plot_arguments` adds its flags, `plot` draws
        legibility      results.legibility's join of another task's outputs with this task's scores
        summarize, examples, report_plots   the summary table, rows to eyeball, the report's figures
        metrics, statistics   the statistics compare's regression gates test (results.gates)
    """

    name: ClassVar[str] = ""                           # set by register_task
    Params: ClassVar[type[TaskParams]]
    Variant: ClassVar[type[BaseModel] | None] = None
    columns: ClassVar[tuple[tuple[str, pa.DataType], ...]] = ()
    row_key: ClassVar[tuple[str, ...]] = ("unit_id",)
    auto_class: ClassVar[str | None] = "AutoModelForCausalLM"
    kinds: ClassVar[tuple[str, ...] | None] = None
    attn_implementation: ClassVar[str | None] = None
    needs_model_facts: ClassVar[bool] = False
    tolerances: ClassVar[tuple[Tolerance, ...]] = (MIN_EXACT_MATCH, MAX_PROB_DELTA)
    compare_columns: ClassVar[tuple[str, ...] | None] = None
    probability_columns: ClassVar[frozenset[str]] = frozenset()
    diffs_title: ClassVar[str] = "Differing units"     # compare report headings
    info_note: ClassVar[str] = "within tolerance"
    # views (results/ asks for them; see "views" below)
    plot_help: ClassVar[str | None] = None             # `lmsweep plot <name>`'s help; None: no plot command
    legibility: ClassVar[Legibility | None] = None     # this task scores another's outputs (results.legibility)
    metrics: ClassVar[tuple[Metric, ...]] = ()         # what `statistics` offers the regression gates

    # ---- planning (no torch) ----------------------------------------------------------------------------

    @property
    def backends(self) -> tuple[str, ...]:
        """The engines that declare they serve this task (runner/engines; listing them imports no engine)."""
        from lmsweep.core.engine import engines_serving

        return engines_serving(self.name)

    def variant(self, params: dict) -> BaseModel:
        """One variant's canonical dict (plan.json `variants`) as the typed object the batch runner gets."""
        return (self.Variant or self.Params).model_validate(params)

    def expand_variant(self, variant: dict, facts: ModelFacts | None) -> list[dict]:
        """The concrete variants one of `Params.variants()` stands for on a model of this shape (`facts`, read
        when `needs_model_facts`; else None): a parameter that depends on the model (ablate's `heads: all`,
        one variant per head it has) is resolved here, at plan time, per model. Each returned dict is a
        variant of its own (a unit per prompt, its canonical dict hashed into unit ids). Default: itself."""
        return [variant]

    def model_kinds(self, variant: BaseModel) -> tuple[str, ...] | None:
        """The model kinds (jobs.model_facts.KINDS) this variant runs on; None: any. Default: `kinds`.
        The plan pairs each model with the variants that fit its kind, and refuses a model none fits."""
        if self.kinds is not None:
            return self.kinds
        auto_class = self.auto_class_for(variant)
        return None if auto_class is None else CLASS_KINDS.get(auto_class)

    def prompt_identity(self, params: TaskParams, prompt: Prompt) -> dict:
        """What besides the prompt's text, system prompt and chat template changes this task's result for
        it (e.g. loglikelihood's continuation column): hashed into its unit ids. Empty (the default)
        leaves ids as they were."""
        return {}

    def variant_label(self, variant: BaseModel) -> tuple[str, str]:
        """(what the variant is called, its spec field), for an error saying no model runs it."""
        return self.name, "task"

    def check_plan(self, spec: ExperimentSpec, facts: dict[str, ModelFacts], prompts: list[Prompt],
                   units: PlannedUnits) -> None:
        """Refuse, before anything is written, a plan this task could not run (raise spec.source.error)."""

    # ---- the worker ---------------------------------------------------------------------------------------

    def auto_class_for(self, variant: BaseModel) -> str | None:
        """The Auto class this variant loads (the plan gives one element variants of one class)."""
        return self.auto_class

    def batch_key(self, unit: Unit) -> tuple:
        """Units with equal keys (and the same variant) may share a batch."""
        return ()

    def context_key(self, unit: Unit) -> tuple | None:
        """Units with an equal key (not None) share their context, computed once per batch: the worker keeps
        them in one batch where the batch size allows (runner.batches.make_batches). None: no such sharing."""
        return None

    def run(self, ctx: TaskContext, units: list[Unit]) -> tuple[Rows, Errors]:
        """One batch: rows (columns of `columns` and the common ones it fills) and per-unit errors.
        Raise runner.units.UnitFailure for a problem with the input: the worker retries units alone."""
        raise NotImplementedError

    # ---- results (pandas imported inside) -----------------------------------------------------------------

    def summarize(self, df: pd.DataFrame) -> pd.DataFrame:
        """`lmsweep results --summary` and the report's summary table (df is not empty)."""
        return df.groupby("model").size().rename("rows").reset_index()

    def examples(self, df: pd.DataFrame) -> pd.DataFrame | None:
        """A few rows for eyeballing in `lmsweep results` and the report; None: the task shows none."""
        return None

    def compare(self, both: pd.DataFrame, tol: Any,
                checks: list[Check]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """(rows beyond tolerance, differences no tolerance covers) over the rows matched on both sides
        (columns suffixed _b and _c; the row key unsuffixed). Appends its Checks to `checks`.
        None (the default): no rule of its own, so compare applies the default one (results.compare.
        compare_outputs: exact columns equal, probabilities within max_prob_delta)."""
        return None

    def statistics(self, base: pd.DataFrame, cur: pd.DataFrame, both: pd.DataFrame) -> list[Sample]:
        """The samples compare's regression gates test (results.gates), one per group and Metric of `metrics`:
        `base` and `cur` are each side's rows (column `model_pair`: the model alias on the baseline side, so
        groups line up when models are paired by key), `both` the matched rows as for `compare`. Default: none."""
        return []

    # ---- views: `lmsweep plot <name>`, the report's plots (matplotlib and pandas imported inside) -------------

    def plot_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the arguments of `lmsweep plot <name>` (the experiment directory included) to its argparse
        subparser; `plot_help` set says the task has the command."""

    def plot(self, args: argparse.Namespace) -> list[Path]:
        """Draw what `lmsweep plot <name>` was asked for; return the files written (the command prints
        `wrote PATH` for each, exit 0). Raise lmsweep.errors.UsageError for a bad argument (exit 2)."""
        raise NotImplementedError(f"task {self.name!r} declares no plot")

    def report_plots(self, df: pd.DataFrame) -> list[str]:
        """This task's figures in `lmsweep report`'s Plots section, after the run-wide ones: HTML fragments,
        e.g. results.report.png_img(fig, caption). Default: none."""
        return []
