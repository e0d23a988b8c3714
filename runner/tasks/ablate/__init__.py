"""Ablation and activation patching as a sweep: one variant per intervention, one row per (variant, prompt).

`task: {type: ablate, site: head, layers: all, heads: all, method: zero}` is one variant per (layer, head) the
model has (`Task.expand_variant`, resolved at plan time from the model's shape): 270 on SmolLM2's 30 layers of 9
query heads. `site` and `method` may be lists (sweep axes). Each variant is an ordinary unit per prompt, so
arrays, resume, compare and regress work on it unchanged.

Sites (sites.py): one attention head's output (its slice of the attention output projection's input), one
MLP's output, or one layer's whole contribution to the residual stream (its output minus its input), replaced at
every position by:

- `zero`: zero (for `layer`, the block is skipped);
- `mean`: its mean over the prompt's own positions in the clean pass. The mean is the prompt's, not the
  batch's or the prompt set's, so a unit's result depends on nothing but its prompt and variant (its unit id);
- `patch`: activation patching: the activation of the same site in a pass over the prompt's clean prompt (the
  column `clean_column`, token for token as long as the prompt), at the prompt's positions. The unit's own prompt
  is the corrupted one.

Each row compares the intervened pass with the clean pass of the same prompt (`base_*` columns; batch.py): the
KL divergence of the next-token distribution after the prompt, its top-1, the target's log-probability (the
prompt's `label` or `target_column`: its first token, as logit_lens scores one) and the continuation's
log-likelihood (`continuation_column`, as loglikelihood's pair form scores one). Patching adds the clean prompt's
target log-probability and the share of the gap the patch restores.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from lmsweep.core.task import MAX_PROB_DELTA, MIN_EXACT_MATCH, PlannedUnits, Task, TaskParams
from lmsweep.core.task_registry import register_task
from lmsweep.runner.tasks.attention import Selection, check_selection, decimal_size, selected
from lmsweep.runner.tasks.logit_lens import target_of
from lmsweep.runner.tasks.loglikelihood import continuation_of
from lmsweep.runner.units import TaskContext, Unit

if TYPE_CHECKING:
    from lmsweep.jobs.model_facts import ModelFacts
    from lmsweep.jobs.prompts import Prompt

Site = Literal["head", "mlp", "layer"]
Method = Literal["zero", "mean", "patch"]
# Estimated stored bytes per row (one per unit): the numbers, two decoded tokens, the target and continuation
# texts. Uncompressed: Parquet usually stores less.
ROW_BYTES = 400


class AblateParams(TaskParams):
    """Interventions at one site each (a head, an MLP, a layer), swept over layers and heads."""

    type: Literal["ablate"] = "ablate"
    site: Site | list[Site] = "head"               # a list is a sweep axis
    layers: Selection = "all"                      # blocks 0..num_layers-1; negatives count from the last
    heads: Selection = "all"                       # query heads (site head only)
    method: Method | list[Method] = "zero"         # a list is a sweep axis
    target_column: str = "label"                   # the prompt column naming the target: label or a free column
    target_prefix: str = " "                       # between the prompt and the target
    continuation_column: str = Field("continuation", min_length=1)   # a continuation to score, where a prompt has one
    clean_column: str = Field("clean", min_length=1)                 # method patch: the clean prompt's column
    max_storage_mb: float = Field(1024, gt=0)      # refuse to plan above this estimated size
    SWEEP: ClassVar[tuple[str, ...]] = ("site", "method")

    def canonical_params(self) -> dict:
        # The cap decides whether to run, not what a unit computes: keep it out of unit ids.
        return self.model_dump(exclude={"uses_decoding", "max_storage_mb"})

    def methods(self) -> list[str]:
        return self.method if isinstance(self.method, list) else [self.method]

    def sites(self) -> list[str]:
        return self.site if isinstance(self.site, list) else [self.site]


class AblateVariant(BaseModel):
    """One intervention, as the worker runs it: `layers`/`heads` resolved to one layer and head."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["ablate"] = "ablate"
    site: Site
    layer: int
    head: int | None                               # None unless site is head
    method: Method
    target_column: str
    target_prefix: str
    continuation_column: str
    clean_column: str


@register_task("ablate")
class Ablate(Task):
    Params = AblateParams
    Variant = AblateVariant
    needs_model_facts = True
    backends = ("hf",)                             # hooks on the model's own modules: one whole model per rank
    tolerances = (MIN_EXACT_MATCH, MAX_PROB_DELTA)
    probability_columns = frozenset({"base_top1_prob", "top1_prob"})
    # base_* is the prompt's pass without the intervention; the others are with it. Target, continuation and
    # patching columns are null where the prompt has no target, no continuation, or the method is not patch.
    columns = (
        ("site", pa.string()), ("layer", pa.int32()), ("head", pa.int32()), ("method", pa.string()),
        ("num_layers", pa.int32()), ("num_heads", pa.int32()), ("kl", pa.float64()),
        ("base_top1_id", pa.int32()), ("base_top1_token", pa.string()), ("base_top1_prob", pa.float32()),
        ("top1_id", pa.int32()), ("top1_token", pa.string()), ("top1_prob", pa.float32()),
        ("top1_changed", pa.bool_()),
        ("target", pa.string()), ("target_id", pa.int32()), ("target_token", pa.string()),
        ("target_num_tokens", pa.int32()), ("base_target_logprob", pa.float64()), ("target_logprob", pa.float64()),
        ("target_logprob_delta", pa.float64()),
        ("continuation", pa.string()), ("num_continuation_tokens", pa.int32()),
        ("base_continuation_logprob", pa.float64()), ("continuation_logprob", pa.float64()),
        ("continuation_logprob_delta", pa.float64()),
        ("clean_prompt", pa.string()), ("clean_target_logprob", pa.float64()), ("restored", pa.float64()),
    )
    diffs_title = "Ablation units beyond tolerance"

    def variant(self, params: dict) -> BaseModel:
        """A concrete variant (the plan's, the worker's) or, before `expand_variant`, the spec's block."""
        return (AblateVariant if "layer" in params else AblateParams).model_validate(params)

    def expand_variant(self, variant: dict, facts: ModelFacts | None) -> list[dict]:
        """One variant per layer of `layers` (and, for site head, per head of `heads`) the model has, layer-major.
        Indices the model lacks are refused by check_plan, which runs next."""
        rest = {k: v for k, v in variant.items() if k not in ("layers", "heads")}
        layers = selected(variant["layers"], facts.num_layers if facts else None) or []
        heads = (selected(variant["heads"], facts.num_heads if facts else None) or []) \
            if variant["site"] == "head" else [None]
        return [{**rest, "layer": layer, "head": head} for layer in layers for head in heads]

    def variant_label(self, variant: BaseModel) -> tuple[str, str]:
        return f"ablate at {getattr(variant, 'site', 'a site')}", "task.site"

    def prompt_identity(self, params: AblateParams, prompt: Prompt) -> dict:
        out = {}
        for name, value in (("target", target_of(prompt.label, prompt.meta, params.target_column)),
                            ("continuation", continuation_of(prompt.meta, params.continuation_column)),
                            ("clean", target_of(None, prompt.meta, params.clean_column)
                             if "patch" in params.methods() else None)):
            if value is not None:
                out[name] = value
        return out

    def check_plan(self, spec, facts, prompts, units: PlannedUnits) -> None:
        check_ablate(spec, facts, prompts, len(units.models))

    def run(self, ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
        from lmsweep.runner.tasks.ablate.batch import run_batch

        return run_batch(ctx, units)

    def summarize(self, df):
        """Per model and intervention (site, method, layer, head), over its prompts: the mean and largest KL to the
        clean pass, how often the top-1 changed, the mean change of the target's and the continuation's
        log-probability, and (patching) the mean share restored. Largest mean KL first."""
        import pandas as pd

        keys = ["model", "site", "method", "layer", "head"]
        rows = []
        for key, g in df.groupby(keys, sort=True, dropna=False):
            rows.append({**dict(zip(keys, key)), "units": g["unit_id"].nunique(),
                         "mean_kl": float(g["kl"].mean()), "max_kl": float(g["kl"].max()),
                         "top1_changed": float(g["top1_changed"].mean()),
                         "mean_target_logprob_delta": _mean(g["target_logprob_delta"]),
                         "mean_continuation_logprob_delta": _mean(g["continuation_logprob_delta"]),
                         "mean_restored": _mean(g["restored"])})
        out = pd.DataFrame(rows)
        out["head"] = out["head"].astype("Int64")
        return out.sort_values(["model", "mean_kl"], ascending=[True, False], kind="stable").reset_index(drop=True)

    def examples(self, df, limit: int = 20):
        """The units whose intervention moved the next-token distribution most: the top-1 before and after."""
        cols = ["model", "prompt_id", "site", "method", "layer", "head", "kl", "base_top1_token", "top1_token",
                "target_logprob_delta"]
        return df.sort_values("kl", ascending=False)[cols].head(limit).reset_index(drop=True)


def _mean(values) -> float | None:
    values = values.dropna()
    return float(values.mean()) if len(values) else None


# ---- plan-time checks ------------------------------------------------------------------------------------

def check_ablate(spec, facts: dict, prompts: list[Prompt], n_units: int) -> int:
    """Refuse a model of an architecture sites.FAMILIES lacks (a directory's config.json or a packaged GGUF
    file's header says), layers or heads a model lacks (at task.layers / task.heads), a patching prompt
    without its clean prompt (task.clean_column) and a sweep estimated above task.max_storage_mb; return the
    estimated bytes."""
    from lmsweep.runner.tasks.ablate.sites import FAMILIES

    task = spec.task
    for i, m in enumerate(spec.models):
        f = facts[m.alias]
        if f.model_type is not None and f.model_type not in FAMILIES:
            raise spec.source.error(f"model {m.alias!r} is a {f.model_type} model; ablate knows where the heads and "
                                    f"MLPs of these are: {', '.join(sorted(FAMILIES))}", f"models[{i}]", ("models", i))
        check_selection(spec, m.alias, "layers", task.layers, f.num_layers)
        if "head" in task.sites():
            check_selection(spec, m.alias, "heads", task.heads, f.num_heads, what="query heads")
    if "patch" in task.methods():
        lacking = next((p for p in prompts if target_of(None, p.meta, task.clean_column) is None), None)
        if lacking is not None:
            raise spec.source.error(f"method patch needs each prompt's clean prompt in column {task.clean_column!r}; "
                                    f"prompt {lacking.id!r} has none", "task.clean_column")
    total = n_units * ROW_BYTES
    if total > task.max_storage_mb * 1e6:
        raise spec.source.error(f"the ablation sweep would store ≈{decimal_size(total)} ({n_units:,} rows), above "
                                f"task.max_storage_mb={task.max_storage_mb:g}; select fewer layers or heads, or "
                                "raise max_storage_mb", "task.max_storage_mb")
    return total
