"""Attention weights of selected layers and query heads over the prompt tokens, or per-head summaries of them.

One row per (unit, layer, head). `store: full` (the default) holds the seq_len × seq_len matrix [query, key]
flattened row-major; `store: summary` five numbers instead (mean row entropy, mass on the first token, on the
previous token, on the diagonal, mean attention distance: attention_summary.py), which is what a sweep of
long prompts over every head can afford; `store: both` holds both. The model is the base model (AutoModel:
no LM head, so causal LMs and encoders both work) loaded with eager attention, the only implementation that
returns weights; each layer's weights are taken as the layer computes them (attention_capture.py), so at most
one layer's are held at a time. Prompts are right-padded: real tokens keep positions 0..n-1 and never attend
to padding, so a unit's weights do not depend on its batch-mates.

The plan checks the layer/head selection against each model's config and refuses a sweep whose stored
rows would exceed `max_storage_mb` (with its estimate, exit 2) instead of filling the disk hours into a run.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Literal

import pyarrow as pa
from pydantic import AfterValidator, Field, model_serializer

from lmsweep.core.task import PlannedUnits, Task, TaskParams
from lmsweep.core.task_registry import register_task
from lmsweep.runner.tasks.attention_summary import NAMES as SUMMARY_NAMES
from lmsweep.runner.tasks.attention_summary import SUMMARY_BYTES, SUMMARY_COLUMNS
from lmsweep.runner.units import TaskContext, Unit, UnitFailure

if TYPE_CHECKING:
    from lmsweep.jobs.model_facts import ModelFacts
    from lmsweep.jobs.prompts import Prompt

DTYPE_BYTES = {"float16": 2, "float32": 4}


def _selection(v):
    if isinstance(v, list):
        if not v:
            raise ValueError("select at least one, or write `all`")
        if len(set(v)) != len(v):
            raise ValueError("duplicate index")
    return v


# A `layers`/`heads` field: `all` or a list of distinct indices, negatives counting from the end
# (shared by the tasks that select layers: attention, hidden_states).
Selection = Annotated[Literal["all"] | list[int], AfterValidator(_selection)]


class AttentionParams(TaskParams):
    """Attention weights of selected layers and (query) heads over the prompt, from an eager forward pass."""

    type: Literal["attention"] = "attention"
    layers: Selection = "all"                      # negative indices count from the last layer
    heads: Selection = "all"                       # query heads (with grouped-query attention, not KV heads)
    head_mean: bool = False                        # store the mean over the selected heads instead of each
    max_tokens: int = Field(256, ge=1, le=32768)   # longer prompts keep their first max_tokens tokens
    dtype: Literal["float16", "float32"] = "float16"
    store: Literal["full", "summary", "both"] = "full"   # the matrices, per-head summaries, or both
    max_storage_mb: float = Field(1024, gt=0)      # refuse to plan above this estimated size

    def canonical_params(self) -> dict:
        # The cap decides whether to run, not what a unit computes: keep it out of unit ids.
        return self.model_dump(exclude={"uses_decoding", "max_storage_mb"})

    @model_serializer(mode="wrap")
    def _without_default_store(self, handler):
        """`store` enters the spec hash and unit ids only when not `full`: specs written before it keep their
        ids, and `store: full` computes what they computed."""
        data = handler(self)
        if isinstance(data, dict) and data.get("store") == "full":
            data.pop("store")
        return data


def selected(selection: str | list[int], count: int | None) -> list[int] | None:
    """Indices a `layers`/`heads` selection picks from `count`; negatives count from the end.
    None when the count is unknown and the selection is `all`."""
    if selection == "all":
        return list(range(count)) if count is not None else None
    if count is None:
        return list(selection)
    return [i + count if i < 0 else i for i in selection]


@register_task("attention")
class Attention(Task):
    Params = AttentionParams
    auto_class = "AutoModel"
    attn_implementation = "eager"
    needs_model_facts = True
    row_key = ("unit_id", "layer", "head")
    probability_columns = frozenset({"attention", "attention_f32", "sink_mass", "prev_token_mass", "diag_mass"})
    # head = -1 is the mean over the selected heads (head_mean). The seq_len × seq_len matrix [query, key]
    # is flattened row-major into `attention` (float16) or `attention_f32` (dtype: float32); the other is
    # null, and both are under store: summary. attention_views.attention_matrix reshapes it. The summary
    # columns (attention_summary.py) are null under store: full.
    columns = (
        ("layer", pa.int32()), ("head", pa.int32()), ("kv_head", pa.int32()), ("num_layers", pa.int32()),
        ("num_heads", pa.int32()), ("num_kv_heads", pa.int32()), ("seq_len", pa.int32()),
        ("truncated", pa.bool_()), ("tokens", pa.list_(pa.string())), ("token_ids", pa.list_(pa.int32())),
        ("attention", pa.large_list(pa.float16())), ("attention_f32", pa.large_list(pa.float32())),
        *SUMMARY_COLUMNS,
    )

    def check_plan(self, spec, facts, prompts, units: PlannedUnits) -> None:
        check_attention(spec, facts, prompts, units.prompt_counts([m.alias for m in spec.models]))

    def run(self, ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
        import numpy as np

        from lmsweep.runner.tasks.attention_capture import forward_by_layer
        from lmsweep.runner.tasks.attention_summary import row_statistics, summary

        tok, model, p = ctx.tokenizer, ctx.model, ctx.params
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        expected = getattr(config, "num_attention_heads", None)
        shape: dict[str, int] = {}
        matrices, stats = {}, {}          # layer → (batch, stored heads, T, T) on the CPU; (batch, heads, 5, T)

        def on_layer(layer: int, n_layers: int, weights) -> None:
            n_heads = weights.shape[1]                                  # query heads, also under GQA
            if expected and n_heads != expected:
                raise UnitFailure(f"got weights for {n_heads} of the model's {expected} heads (tensor parallel "
                                  "shards heads across ranks; run attention with tensor_parallel: 1)")
            layers, heads = selected(p.layers, n_layers), selected(p.heads, n_heads)
            bad = [i for i in layers if not 0 <= i < n_layers] + [h for h in heads if not 0 <= h < n_heads]
            if bad:
                raise UnitFailure(f"layer/head index {bad[0]} out of range ({n_layers} layers, {n_heads} heads)")
            shape.update(layers=n_layers, heads=n_heads)
            if layer not in layers:
                return
            if p.store != "summary":
                matrices[layer] = weights[:, heads].float().cpu()
            if p.store != "full":
                stats[layer] = row_statistics(weights, heads, p.head_mean).cpu()

        forward = forward_by_layer(ctx, units, p.max_tokens, on_layer)
        n_layers, n_heads = shape["layers"], shape["heads"]
        n_kv = getattr(config, "num_key_value_heads", None) or n_heads
        layers, heads = selected(p.layers, n_layers), selected(p.heads, n_heads)
        stack = [(-1, None)] if p.head_mean else [(h, h // max(n_heads // n_kv, 1)) for h in heads]
        dtype = np.float16 if p.dtype == "float16" else np.float32
        column = "attention" if p.dtype == "float16" else "attention_f32"

        rows = []
        for b, u in enumerate(units):
            n = len(forward.kept[b])
            common = {"unit_id": u.unit_id, "num_layers": n_layers, "num_heads": n_heads, "num_kv_heads": n_kv,
                      **forward.token_columns(tok, b)}
            for layer in layers:
                if layer in matrices:
                    weights = matrices[layer][b, :, :n, :n]
                    maps = [weights.mean(0)] if p.head_mean else list(weights)
                for i, (head, kv_head) in enumerate(stack):
                    row = {**common, "layer": layer, "head": head, "kv_head": kv_head}
                    if layer in matrices:
                        row[column] = maps[i].numpy().astype(dtype).ravel()
                    if layer in stats:
                        row.update(summary(stats[layer][b, i], n))
                    rows.append(row)
        return rows, {}

    def summarize(self, df):
        """One line per model and prompt; with stored summaries, their means over the stored layers and heads."""
        means = {c: (c, "mean") for c in SUMMARY_NAMES if c in df.columns and df[c].notna().any()}
        return (df.groupby(["model", "prompt_id"], sort=True)
                .agg(tokens=("seq_len", "first"), truncated=("truncated", "any"), layers=("layer", "nunique"),
                     heads=("head", "nunique"), query_heads=("num_heads", "first"),
                     kv_heads=("num_kv_heads", "first"), **means, unit_id=("unit_id", "first"))
                .reset_index())

    # ---- views (attention_views.py: numpy, pandas, matplotlib) ------------------------------------------------

    plot_help = "units' attention: PNG heatmap grid (with a colour bar) + interactive HTML head view, per unit"

    def plot_arguments(self, parser) -> None:
        parser.add_argument("experiment", help="experiment directory of an attention task")
        parser.add_argument("--unit", nargs="+", action="extend", metavar="ID",
                            help="unit ids (or unique prefixes), e.g. from `lmsweep results --summary`")
        parser.add_argument("--prompt-id", nargs="+", action="extend", metavar="ID",
                            help="prompt ids: every unit of each (all models and variants)")
        parser.add_argument("--out", help="output directory (default: EXPERIMENT/plots)")
        parser.add_argument("--layers", help="only these layers, e.g. 0,5,29")
        parser.add_argument("--heads", help="only these heads (-1 = the head mean)")
        parser.add_argument("--bertviz", action="store_true", help="write bertviz's head view and model view pages "
                            "instead (the bertviz extra; they load their scripts from cdnjs.cloudflare.com)")

    def plot(self, args):
        """The PNG grid and the standalone head view of each unit `--unit` and `--prompt-id` name, files named
        by prompt id; with `--bertviz`, bertviz's two pages each. Nothing is written unless every unit has
        the layers and heads asked for."""
        from pathlib import Path

        from lmsweep.results.plots import int_list

        exp, out = Path(args.experiment), Path(args.out) if args.out else None
        chosen = {"units": args.unit, "prompt_ids": args.prompt_id, "out_dir": out,
                  "layers": int_list(args.layers), "heads": int_list(args.heads)}
        if args.bertviz:
            from lmsweep.runner.tasks.attention_views import write_bertviz_pages

            return write_bertviz_pages(exp, **chosen)
        from lmsweep.runner.tasks.attention_views import plot_attention

        return plot_attention(exp, **chosen)

    def report_plots(self, df):
        """The first unit's last stored layer, averaged over its heads (or the stored head mean)."""
        from lmsweep.runner.tasks.attention_views import report_heatmap

        return report_heatmap(df)


# ---- plan-time checks ------------------------------------------------------------------------------------

def check_attention(spec, facts: dict[str, ModelFacts], prompts: list[Prompt],
                    units_per_model: dict[str, Counter]) -> int:
    """Validate the selection against each model and return the estimated bytes of the rows the sweep stores
    (`row_bytes`); raise SpecError above `task.max_storage_mb`."""
    task = spec.task
    total, worst = 0, None
    overhead = row_overhead()
    for m in spec.models:
        f = facts[m.alias]
        check_selection(spec, m.alias, "layers", task.layers, f.num_layers)
        check_selection(spec, m.alias, "heads", task.heads, f.num_heads, " (query heads)")
        n_layers = len(selected(task.layers, f.num_layers))
        n_heads = 1 if task.head_mean else len(selected(task.heads, f.num_heads))
        lengths = token_counts(f, [prompts[i] for i in units_per_model[m.alias]])
        per_prompt = dict(zip(units_per_model[m.alias], lengths))
        for qi, n in units_per_model[m.alias].items():
            text = len(prompts[qi].text.encode())
            total += n * n_layers * n_heads * row_bytes(task, per_prompt[qi], text, overhead)
        worst = max(worst or 0, max(per_prompt.values(), default=0))
    cap = task.max_storage_mb * 1e6
    if total > cap:
        what = {"full": "attention weights", "summary": "attention summaries",
                "both": "attention weights and summaries"}[task.store]
        raise spec.source.error(
            f"{what} would take ≈{decimal_size(total)} "
            f"({task.dtype + ', ' if task.store != 'summary' else ''}longest prompt "
            f"≈{min(worst or 0, task.max_tokens)} tokens), above task.max_storage_mb="
            f"{task.max_storage_mb:g}; select fewer layers or heads, set head_mean: true, lower "
            f"max_tokens{', use dtype: float16' if task.dtype == 'float32' else ''}"
            f"{', use store: summary' if task.store != 'summary' else ''} or raise max_storage_mb",
            "task.max_storage_mb")
    return total


def row_bytes(task: AttentionParams, tokens: int, text_bytes: int, overhead: int) -> int:
    """One stored row of a prompt of `tokens` tokens (`text_bytes` of UTF-8), as Arrow holds it before Parquet
    compresses it: the matrix (store: full, both; t² values, t = min(tokens, max_tokens)) and the summaries
    (summary, both), then what every row repeats: its token ids (4 bytes each), tokens (a 4-byte offset each
    and their text, the kept share of the prompt's) and the prompt's text, and `overhead`."""
    t = min(tokens, task.max_tokens)
    payload = (t * t * DTYPE_BYTES[task.dtype] if task.store != "summary" else 0) + \
        (SUMMARY_BYTES if task.store != "full" else 0)
    return payload + 8 * t + text_bytes * t // max(tokens, 1) + text_bytes + overhead


def row_overhead() -> int:
    """Bytes of a row besides its payload, tokens and prompt text: every fixed-width column of the attention
    schema (common ones included), an offset per variable-width one, and the three hex ids (unit id and key,
    20 characters each; spec hash, 16). Names (model, prompt id, host, ...) are a few bytes more."""
    from lmsweep.results.schema import schema_for

    total = 20 + 20 + 16
    for field in schema_for("attention"):
        t = field.type
        if pa.types.is_large_list(t) or pa.types.is_large_string(t):
            total += 8
        elif pa.types.is_list(t) or pa.types.is_string(t):
            total += 4
        else:
            total += max(t.bit_width // 8, 1)
    return total


def check_selection(spec, alias: str, name: str, sel: str | list[int], count: int | None, note: str = "",
                    what: str | None = None) -> None:
    """Refuse (spec.source.error at `task.<name>`) a selection with an index outside 0..count-1 (after
    negatives count from the end), or `all` when the model's count is unknown."""
    idx = selected(sel, count)
    if idx is None:
        raise spec.source.error(f"cannot read the number of {name} of model {alias!r}; list them explicitly",
                                f"task.{name}")
    bad = [i for i, j in zip(sel if sel != "all" else idx, idx) if not 0 <= j < count] if count is not None else []
    if bad:
        raise spec.source.error(f"{name[:-1]} {bad[0]} is out of range for model {alias!r}, which has "
                                f"{count} {what or name}{note}", f"task.{name}")


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


def decimal_size(n: float) -> str:
    """Bytes in decimal units (kB, MB, GB), as plan-time storage estimates are worded."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"
