"""The hidden_states task's views (`lmsweep plot hidden_states`): per model, one panel per layer of the prompts'
cosine-similarity heatmap and of their 2-D PCA projection.

Imported when drawn (runner/tasks/hidden_states.py, `HiddenStates.plot`), never on task discovery: it imports
numpy, pandas and matplotlib. The figure helpers (`panels`, `save_figure`, `pca_2d`) are results/plots.py's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lmsweep.errors import UsageError
from lmsweep.results.plots import panels, pca_2d, save_figure
from lmsweep.runner.tasks.hidden_states import cosine_similarities, vectors

MAX_DEFAULT_PANELS = 6


def plot_hidden_states(exp_dir: Path, out_dir: Path | None = None, layers: list[int] | None = None,
                       models: list[str] | None = None) -> list[Path]:
    """Per model, two PNGs with one panel per layer: the prompts' cosine-similarity heatmap and a 2-D PCA
    projection of their vectors (per-token rows mean-pooled). Default layers: up to six, evenly spaced
    over those stored, first and last included."""
    from lmsweep.jobs.plan import read_plan
    from lmsweep.results.load import load

    task = read_plan(exp_dir).meta["task"]["type"]
    if task != "hidden_states":
        raise UsageError(f"{exp_dir} is a {task} experiment; hidden-state plots need task: hidden_states",
                        field="experiment")
    df = load(exp_dir)
    if models:
        unknown = sorted(set(models) - set(df["model"]))
        if unknown:
            raise UsageError(f"no rows for model {unknown[0]!r}; models: {', '.join(sorted(set(df['model'])))}",
                            field="--model")
        df = df[df["model"].isin(models)]
    stored = sorted(int(x) for x in df["layer"].unique())
    if layers is None:
        picks = np.linspace(0, len(stored) - 1, min(MAX_DEFAULT_PANELS, len(stored)))
        layers = sorted({stored[int(round(i))] for i in picks})
    missing = [x for x in layers if x not in stored]
    if missing:
        raise UsageError(f"layer {missing[0]} is not stored (stored layers: {_ranges(stored)})", field="--layers")
    out_dir = out_dir or exp_dir / "plots"
    out = []
    for model, g in df[df["layer"].isin(layers)].groupby("model", sort=True):
        out.append(_similarity_grid(g, model, layers, out_dir / f"hidden-states-similarity-{model}.png"))
        out.append(_projection_grid(g, model, layers, out_dir / f"hidden-states-pca-{model}.png"))
    return out


def _similarity_grid(rows: pd.DataFrame, model: str, layers: list[int], out: Path) -> Path:
    plt, fig, axes = panels(len(layers))
    for ax, layer in zip(axes, layers):
        ids, sims = cosine_similarities(rows[rows["layer"] == layer])
        # Each panel's colours span its own range: in middle layers every pair can be above 0.99 (one
        # massive activation dominating the mean), and a shared 0–1 scale would show one flat colour.
        off = sims[~np.eye(len(ids), dtype=bool)]
        low = float(off.min()) if off.size else 0.0
        image = ax.imshow(sims, cmap="viridis", vmin=min(low, 0.999), vmax=1, interpolation="nearest")
        ax.set_title(f"layer {layer}" + (" (embeddings)" if layer == 0 else "") + f" · min {low:.3f}", fontsize=9)
        if len(ids) <= 24:
            ax.set_xticks(range(len(ids)), ids, rotation=90, fontsize=6)
            ax.set_yticks(range(len(ids)), ids, fontsize=6)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"{model} · cosine similarity between prompts", fontsize=10)
    return save_figure(plt, fig, out)


def _projection_grid(rows: pd.DataFrame, model: str, layers: list[int], out: Path) -> Path:
    plt, fig, axes = panels(len(layers))
    for ax, layer in zip(axes, layers):
        part = rows[rows["layer"] == layer].sort_values("prompt_id")
        xy = pca_2d(vectors(part).astype(np.float64))
        ax.scatter(xy[:, 0], xy[:, 1], s=18)
        if len(part) <= 40:
            for (x, y), name in zip(xy, part["prompt_id"]):
                ax.annotate(str(name), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_title(f"layer {layer}" + (" (embeddings)" if layer == 0 else ""), fontsize=9)
        ax.set_xlabel("PC 1", fontsize=7)
        ax.set_ylabel("PC 2", fontsize=7)
    fig.suptitle(f"{model} · prompts on their first two principal components", fontsize=10)
    return save_figure(plt, fig, out)


def _ranges(values: list[int]) -> str:
    """0, 1, 2, 3, 7 → "0–3, 7"."""
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}–{v}")
            start = None
    return ", ".join(out)
