"""Hidden states of selected layers over the prompt: pooled to one vector per layer, or every token's.

One row per (unit, layer). Layer 0 is the embeddings' output and layer i (1..num_layers) the output of
block i, exactly the tuple transformers returns with `output_hidden_states=True` (for most models the
last entry is after the final norm). The model is the base model (AutoModel: causal LMs and encoders
both work). Prompts are right-padded: real tokens keep positions 0..n-1 and a causal model's never see
padding; an encoder masks it. Pooling: `last` (the last real token's vector), `mean` (the mean over the
real tokens, special tokens included), `none` (every token's vector, seq_len × hidden_size row-major,
the first `max_tokens` tokens).

The summary is per layer: how alike the prompts' vectors are (cosine similarity) and, when the prompts carry
labels, how well the layer separates them (within- and between-label cosine, a cross-validated linear probe:
`label_separation`, scikit-learn from the `analysis` extra).

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
from lmsweep.runner.tasks.attention import DTYPE_BYTES, Selection, check_selection, decimal_size, selected, token_counts
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
        if len({p.label for p in prompts if p.label is not None}) >= 2 and sklearn_missing():
            # refused here, not after the run: `lmsweep run` ends by printing the summary
            raise spec.source.error(f"the prompts carry labels, and the summary fits a linear probe over them, "
                                    f"which needs scikit-learn: {ANALYSIS_INSTALL}", "prompts")

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
        vectors; per-token rows are mean-pooled): the mean, least and most similar pair. When the prompts
        carry two or more labels, how well the layer separates them too (`label_separation`)."""
        import pandas as pd

        labelled = "label" in df.columns and df["label"].dropna().nunique() >= 2
        if labelled:
            require_sklearn()
        rows = []
        for (model, variant, layer), g in df.groupby(["model", "variant", "layer"], sort=True):
            g = g.sort_values("prompt_id", kind="stable")
            v = vectors(g)
            sims = _cosines(v)
            off = sims[~_eye(len(g))] if len(g) > 1 else sims.ravel()[:0]
            row = {"model": model, "variant": variant, "layer": layer, "prompts": len(g),
                   "mean_cosine": float(off.mean()) if off.size else None,
                   "min_cosine": float(off.min()) if off.size else None,
                   "max_cosine": float(off.max()) if off.size else None}
            if labelled:
                row |= label_separation(v, sims, list(g["label"]))
            rows.append(row)
        return pd.DataFrame(rows)

    def report_plots(self, df) -> list[str]:
        """With labelled prompts: per model, the within- and between-label cosine and the probe's accuracy
        by layer."""
        if "label" not in df.columns or df["label"].dropna().nunique() < 2:
            return []
        from lmsweep.runner.tasks.hidden_states_views import label_separation_figures

        return label_separation_figures(self.summarize(df))

    # ---- views (hidden_states_views.py: numpy, pandas, matplotlib) ----------------------------------------------

    plot_help = "per layer: the prompts' cosine-similarity heatmap and 2-D PCA (coloured by label)"

    def plot_arguments(self, parser) -> None:
        parser.add_argument("experiment", help="experiment directory of a hidden_states task")
        parser.add_argument("--layers", help="these layers, e.g. 0,15,30 (default: up to six, evenly spaced)")
        parser.add_argument("--model", help="only these model aliases, comma-separated")
        parser.add_argument("--out", help="output directory (default: EXPERIMENT/plots)")
        parser.add_argument("--shared-scale", action="store_true",
                            help="one colour scale for every similarity heatmap (default: each layer its own range)")

    def plot(self, args):
        """Per model: the similarity heatmaps and the PCA projections of the chosen layers."""
        from pathlib import Path

        from lmsweep.results.plots import int_list
        from lmsweep.runner.tasks.hidden_states_views import plot_hidden_states

        return plot_hidden_states(Path(args.experiment), Path(args.out) if args.out else None,
                                  layers=int_list(args.layers), models=args.model.split(",") if args.model else None,
                                  shared_scale=args.shared_scale)


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
    rows = rows.sort_values("prompt_id", kind="stable")
    return list(rows["prompt_id"]), _cosines(vectors(rows))


def _cosines(v):
    import numpy as np

    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


# ---- labels: how well a layer separates the prompts' labels -------------------------------------------------

ANALYSIS_INSTALL = "pip install 'lmsweep[analysis]'"
PROBE_FOLDS = 5            # stratified folds, fewer when the rarest label has fewer prompts
PROBE_SEED = 0             # the folds' shuffle: the same accuracy on every rerun


def sklearn_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("sklearn") is None


def require_sklearn() -> None:
    if sklearn_missing():
        from lmsweep.errors import UsageError

        raise UsageError(f"the hidden_states summary of labelled prompts fits a linear probe, which needs "
                         f"scikit-learn: {ANALYSIS_INSTALL}", field="label")


def label_separation(v, sims, labels: list) -> dict:
    """How one layer's vectors (n × hidden) separate the prompts' labels (None: unlabelled, left out):

    - `within_label_cosine`, `between_label_cosine`: the mean cosine similarity over pairs of prompts with the
      same label, and over pairs with different labels (`sims` is the n × n cosine matrix of `v`);
    - `probe_accuracy`: a linear probe's stratified k-fold cross-validated accuracy (standardised features,
      scikit-learn's LogisticRegression with its defaults, folds shuffled with seed 0; the mean over folds),
      k = min(5, the rarest label's prompts); None when a label has a single prompt;
    - `probe_chance`: the share of the most common label (what always guessing it scores); `probe_folds`: k."""
    import warnings

    import numpy as np

    keep = np.array([isinstance(x, str) for x in labels])
    y = np.array([x for x in labels if isinstance(x, str)], dtype=object)
    names, counts = np.unique(y.astype(str), return_counts=True)
    s = sims[np.ix_(keep, keep)]
    upper = np.triu(np.ones_like(s, dtype=bool), k=1)
    same = y[:, None] == y[None, :]
    within, between = s[upper & same], s[upper & ~same]
    out = {"labels": len(names),
           "within_label_cosine": float(within.mean()) if within.size else None,
           "between_label_cosine": float(between.mean()) if between.size else None,
           "probe_accuracy": None, "probe_chance": float(counts.max() / counts.sum()) if counts.size else None,
           "probe_folds": None}
    folds = min(PROBE_FOLDS, int(counts.min())) if counts.size else 0
    if len(names) >= 2 and folds >= 2:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        probe = make_pipeline(StandardScaler(), LogisticRegression())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            scores = cross_val_score(probe, np.asarray(v, dtype=np.float64)[keep], y.astype(str),
                                     cv=StratifiedKFold(folds, shuffle=True, random_state=PROBE_SEED))
        out |= {"probe_accuracy": float(scores.mean()), "probe_folds": folds}
    return out


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
            f"hidden states would take ≈{decimal_size(total)} ({task.dtype}, pooling {task.pooling}), above "
            f"task.max_storage_mb={task.max_storage_mb:g}; select fewer layers, pool (last or mean), lower "
            f"max_tokens{', use dtype: float16' if task.dtype == 'float32' else ''} or raise max_storage_mb",
            "task.max_storage_mb")
    return total
