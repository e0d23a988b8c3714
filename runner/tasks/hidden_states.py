"""Hidden states of selected layers over the prompt: pooled to one vector per layer, or every token's.

One row per (unit, layer). Layer 0 is the embeddings' output and layer i (1..num_layers) the output of
block i, exactly the tuple transformers returns with `output_hidden_states=True` (for most models the
last entry is after the final norm). The model is the base model (AutoModel: causal LMs and encoders
both work). Prompts are right-padded: real tokens keep positions 0..n-1 and a causal model's never see
padding; an encoder masks it. Pooling: `last` (the last real token's vector), `mean` (the mean over the
real tokens, special tokens included), `none` (every token's vector, seq_len × hidden_size row-major,
the first `max_tokens` tokens).

The plan checks the layer selection against each model and refuses a sweep estimated above
`max_storage_mb`, as the attention task does (runner/tasks/attention.py, whose `layers` syntax and
checks this task shares).
"""
from __future__ import annotations

from collections import Counter
from typing import Literal

import pyarrow as pa
from pydantic import Field

from lmsweep.core.task import PlannedUnits, Task, TaskParams
from lmsweep.core.task_registry import register_task
from lmsweep.runner.tasks.attention import DTYPE_BYTES, Selection, _size, check_selection, selected, token_counts
from lmsweep.runner.units import TaskContext, Unit, UnitFailure, forward_prompts


class HiddenStatesParams(TaskParams):
    """Hidden states of selected layers (0 = embeddings), pooled or per token."""

    type: Literal["hidden_states"] = "hidden_states"
    layers: Selection = "all"                      # 0 = embeddings output; negatives count from the last layer
    pooling: Literal["last", "mean", "none"] = "last"
    max_tokens: int = Field(256, ge=1, le=32768)   # longer prompts keep their first max_tokens tokens
    dtype: Literal["float16", "float32"] = "float32"
    max_storage_mb: float = Field(1024, gt=0)      # refuse to plan above this estimated size

    def canonical_params(self) -> dict:
        # The cap decides whether to run, not what a unit computes: keep it out of unit ids.
        return self.model_dump(exclude={"uses_decoding", "max_storage_mb"})


@register_task("hidden_states")
class HiddenStates(Task):
    Params = HiddenStatesParams
    auto_class = "AutoModel"
    needs_model_facts = True
    row_key = ("unit_id", "layer")
    # The vector (pooling last/mean: hidden_size values) or matrix (none: seq_len × hidden_size, row-major)
    # goes to `hidden` (float16) or `hidden_f32` (dtype: float32); the other is null.
    columns = (
        ("layer", pa.int32()), ("num_layers", pa.int32()), ("hidden_size", pa.int32()), ("pooling", pa.string()),
        ("seq_len", pa.int32()), ("truncated", pa.bool_()), ("tokens", pa.list_(pa.string())),
        ("token_ids", pa.list_(pa.int32())), ("hidden", pa.large_list(pa.float16())),
        ("hidden_f32", pa.large_list(pa.float32())),
    )

    def check_plan(self, spec, facts, prompts, units: PlannedUnits) -> None:
        check_hidden_states(spec, facts, prompts, units.prompt_counts([m.alias for m in spec.models]))

    def run(self, ctx: TaskContext, units: list[Unit]) -> tuple[list[dict], dict[str, str]]:
        import numpy as np

        tok, p = ctx.tokenizer, ctx.params
        forward = forward_prompts(ctx, units, p.max_tokens, output_hidden_states=True)
        states = forward.outputs.hidden_states
        if not states:
            raise UnitFailure("the model returned no hidden states")
        n_layers = len(states) - 1
        layers = selected(p.layers, len(states))
        bad = [i for i in layers if not 0 <= i < len(states)]
        if bad:
            raise UnitFailure(f"layer index {bad[0]} out of range (embeddings + {n_layers} layers)")
        dtype, column = (np.float16, "hidden") if p.dtype == "float16" else (np.float32, "hidden_f32")
        rows = []
        for b, u in enumerate(units):
            n = len(forward.kept[b])
            common = {"unit_id": u.unit_id, "num_layers": n_layers, "hidden_size": states[0].shape[-1],
                      "pooling": p.pooling, **forward.token_columns(tok, b)}
            for layer in layers:
                h = states[layer][b, :n].float().cpu()
                value = h[n - 1] if p.pooling == "last" else h.mean(0) if p.pooling == "mean" else h
                rows.append({**common, "layer": layer, column: value.numpy().astype(dtype).ravel()})
        return rows, {}

    def summarize(self, df):
        """Per model, variant and layer: how alike the prompts are (cosine similarity of their pooled
        vectors; per-token rows are mean-pooled): the mean, least and most similar pair."""
        import pandas as pd

        rows = []
        for (model, variant, layer), g in df.groupby(["model", "variant", "layer"], sort=True):
            ids, sims = cosine_similarities(g)
            off = sims[~_eye(len(ids))] if len(ids) > 1 else sims.ravel()[:0]
            rows.append({"model": model, "variant": variant, "layer": layer, "prompts": len(ids),
                         "mean_cosine": float(off.mean()) if off.size else None,
                         "min_cosine": float(off.min()) if off.size else None,
                         "max_cosine": float(off.max()) if off.size else None})
        return pd.DataFrame(rows)

    # ---- views (hidden_states_views.py: numpy, pandas, matplotlib) ----------------------------------------------

    plot_help = "per layer: the prompts' cosine-similarity heatmap and 2-D PCA"

    def plot_arguments(self, parser) -> None:
        parser.add_argument("experiment", help="experiment directory of a hidden_states task")
        parser.add_argument("--layers", help="these layers, e.g. 0,15,30 (default: up to six, evenly spaced)")
        parser.add_argument("--model", help="only these model aliases, comma-separated")
        parser.add_argument("--out", help="output directory (default: EXPERIMENT/plots)")

    def plot(self, args):
        """Per model: the similarity heatmaps and the PCA projections of the chosen layers."""
        from pathlib import Path

        from lmsweep.results.plots import int_list
        from lmsweep.runner.tasks.hidden_states_views import plot_hidden_states

        return plot_hidden_states(Path(args.experiment), Path(args.out) if args.out else None,
                                  layers=int_list(args.layers), models=args.model.split(",") if args.model else None)


def vectors(rows):
    """One vector per row (float32): the stored vector, or the mean over tokens of a per-token matrix."""
    import numpy as np

    out = []
    for r in rows.to_dict("records"):
        flat = r.get("hidden_f32")
        if flat is None or (not isinstance(flat, np.ndarray) and not isinstance(flat, list)):
            flat = r["hidden"]
        v = np.asarray(flat, dtype=np.float32)
        out.append(v.reshape(int(r["seq_len"]), -1).mean(0) if r["pooling"] == "none" else v)
    return np.stack(out)


def cosine_similarities(rows):
    """(prompt ids, their cosine-similarity matrix) for the rows of one model, variant and layer."""
    import numpy as np

    rows = rows.sort_values("prompt_id")
    v = vectors(rows)
    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return list(rows["prompt_id"]), unit @ unit.T


def _eye(n: int):
    import numpy as np

    return np.eye(n, dtype=bool)


# ---- plan-time checks ------------------------------------------------------------------------------------

def selected_layers(spec, alias: str, facts, layers) -> int:
    """How many of the model's hidden states (embeddings + num_layers) `layers` selects; a layer the model
    does not have is refused at its line. Shared by the tasks that read hidden states per layer."""
    count = facts.num_layers + 1 if facts.num_layers is not None else None
    check_selection(spec, alias, "layers", layers, count,
                    what=f"hidden states (embeddings + {facts.num_layers} layers)")
    return len(selected(layers, count))


def check_hidden_states(spec, facts, prompts, units_per_model: dict[str, Counter]) -> int:
    """Validate the layers against each model (embeddings + num_layers) and return the estimated bytes;
    raise SpecError above `task.max_storage_mb`."""
    task = spec.task
    total = 0
    for m in spec.models:
        f = facts[m.alias]
        n_layers = selected_layers(spec, m.alias, f, task.layers)
        if f.hidden_size is None:
            raise spec.source.error(f"cannot read the hidden size of model {m.alias!r} to estimate the storage",
                                    "task.layers")
        counts = units_per_model[m.alias]
        if task.pooling == "none":
            lengths = dict(zip(counts, token_counts(f, [prompts[i] for i in counts])))
            tokens = sum(n * min(lengths[qi], task.max_tokens) for qi, n in counts.items())
        else:
            tokens = sum(counts.values())
        total += tokens * n_layers * f.hidden_size * DTYPE_BYTES[task.dtype]
    if total > task.max_storage_mb * 1e6:
        raise spec.source.error(
            f"hidden states would take ≈{_size(total)} ({task.dtype}, pooling {task.pooling}), above "
            f"task.max_storage_mb={task.max_storage_mb:g}; select fewer layers, pool (last or mean), lower "
            f"max_tokens{', use dtype: float16' if task.dtype == 'float32' else ''} or raise max_storage_mb",
            "task.max_storage_mb")
    return total
