"""The hidden_states task's views (`lmsweep plot hidden_states`): per model, one panel per layer of the prompts'
cosine-similarity heatmap and of their 2-D PCA projection (coloured by label when the prompts carry labels); and
the report's figure of how each layer separates the labels.

Imported when drawn (runner/tasks/hidden_states.py, `HiddenStates.plot`), never on task discovery: it imports
numpy, pandas and matplotlib. The figure helpers (`panels`, `save_figure`, `pca_2d`) are results/plots.py's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lmsweep.errors import UsageError
from lmsweep.results.plots import panels, pca_2d, save_figure
from lmsweep.runner.tasks.hidden_states import _cosines, vectors

MAX_DEFAULT_PANELS = 6


def plot_hidden_states(exp_dir: Path, out_dir: Path | None = None, layers: list[int] | None = None,
                       models: list[str] | None = None, shared_scale: bool = False) -> list[Path]:
    """Per model, two PNGs with one panel per layer: the prompts' cosine-similarity heatmap and a 2-D PCA
    projection of their vectors (per-token rows mean-pooled). Default layers: up to six, evenly spaced
    over those stored, first and last included. `shared_scale`: every heatmap on one colour scale."""
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
        out.append(save_figure(*similarity_figure(g, model, layers, shared_scale),
                               out_dir / f"hidden-states-similarity-{model}.png"))
        out.append(save_figure(*projection_figure(g, model, layers), out_dir / f"hidden-states-pca-{model}.png"))
    return out


def _ordered(rows: pd.DataFrame) -> pd.DataFrame:
    """One layer's rows by label, then prompt id (unlabelled last): a label's prompts sit together."""
    return rows.assign(_unlabelled=rows["label"].isna()).sort_values(["_unlabelled", "label", "prompt_id"],
                                                                     kind="stable")


def _labelled(rows: pd.DataFrame) -> bool:
    return rows["label"].notna().any()


def similarity_figure(rows: pd.DataFrame, model: str, layers: list[int], shared_scale: bool = False):
    """(pyplot, figure): one heatmap per layer of the prompts' cosine similarities, a label's prompts together,
    each with its colour bar."""
    plt, fig, axes = panels(len(layers))
    per_layer = {}
    for layer in layers:
        part = _ordered(rows[rows["layer"] == layer])
        sims = _cosines(vectors(part))
        off = sims[~np.eye(len(part), dtype=bool)]
        per_layer[layer] = (part, sims, float(off.min()) if off.size else 0.0)
    # Per panel (the default), each panel's colours span its own range: in middle layers every pair can be above
    # 0.99 (one massive activation dominating the mean), and a shared 0–1 scale would show one flat colour. The
    # floor stays at or below 0.999, so a layer of near-identical vectors (the embeddings of one repeated token)
    # is one flat colour too, not a pattern in rounding. `shared_scale`: one scale (the lowest pair of all
    # panels to 1) for every panel, so colours compare across layers. Each panel keeps its colour bar.
    shared_low = min(min(low for _, _, low in per_layer.values()), 0.999)
    for ax, layer in zip(axes, layers):
        part, sims, low = per_layer[layer]
        vmin = shared_low if shared_scale else min(low, 0.999)
        image = ax.imshow(sims, cmap="viridis", vmin=vmin, vmax=1, interpolation="nearest")
        ax.set_title(f"layer {layer}" + (" (embeddings)" if layer == 0 else "") + f" · min {low:.3f}", fontsize=9)
        if len(part) <= 24:
            names = [f"{i} ({lab})" if isinstance(lab, str) else str(i) for i, lab in zip(part["prompt_id"],
                                                                                            part["label"])]
            ax.set_xticks(range(len(part)), names, rotation=90, fontsize=6)
            ax.set_yticks(range(len(part)), names, fontsize=6)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    scale = "one colour scale for all panels" if shared_scale else "each panel on its own colour scale"
    fig.suptitle(f"{model} · cosine similarity between prompts ({scale})", fontsize=10)
    return plt, fig


def projection_figure(rows: pd.DataFrame, model: str, layers: list[int]):
    """(pyplot, figure): per layer, the prompts on their first two principal components, coloured by label with
    a legend when they carry labels."""
    plt, fig, axes = panels(len(layers))
    labelled = _labelled(rows)
    names = sorted(rows["label"].dropna().unique()) if labelled else []
    colours = {name: plt.get_cmap("tab10" if len(names) <= 10 else "tab20")(i % 20) for i, name in enumerate(names)}
    for ax, layer in zip(axes, layers):
        part = rows[rows["layer"] == layer].sort_values("prompt_id", kind="stable")
        xy = pca_2d(vectors(part).astype(np.float64))
        if labelled:
            for name in [*names, None]:
                sel = (part["label"] == name).to_numpy() if name is not None else part["label"].isna().to_numpy()
                if sel.any():
                    ax.scatter(xy[sel, 0], xy[sel, 1], s=18, color=colours.get(name, "lightgrey"),
                               label=name if name is not None else "(no label)")
            ax.legend(fontsize=6, title="label", title_fontsize=6)
        else:
            ax.scatter(xy[:, 0], xy[:, 1], s=18)
        if len(part) <= 40:
            for (x, y), name in zip(xy, part["prompt_id"]):
                ax.annotate(str(name), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_title(f"layer {layer}" + (" (embeddings)" if layer == 0 else ""), fontsize=9)
        ax.set_xlabel("PC 1", fontsize=7)
        ax.set_ylabel("PC 2", fontsize=7)
    by = ", coloured by label" if labelled else ""
    fig.suptitle(f"{model} · prompts on their first two principal components{by}", fontsize=10)
    return plt, fig


def label_separation_figures(summary: pd.DataFrame) -> list[str]:
    """The report's figures (HTML <img>), one per model and variant: by layer, the mean cosine within and
    between labels, and the linear probe's cross-validated accuracy beside the majority label's share."""
    from lmsweep.results.report import png_img, pyplot

    plt = pyplot()
    out = []
    for (model, variant), g in summary.groupby(["model", "variant"], sort=True):
        g = g.sort_values("layer")
        fig, (cos, probe) = plt.subplots(1, 2, figsize=(10, 3.4))
        cos.plot(g["layer"], g["within_label_cosine"].astype(float), marker="o", ms=3, label="within a label")
        cos.plot(g["layer"], g["between_label_cosine"].astype(float), marker="o", ms=3, label="between labels")
        cos.set_xlabel("layer")
        cos.set_ylabel("mean cosine similarity")
        cos.legend(fontsize=8)
        probe.plot(g["layer"], g["probe_accuracy"].astype(float), marker="o", ms=3, label="linear probe (CV)")
        probe.plot(g["layer"], g["probe_chance"].astype(float), ls="--", color="grey", label="most common label")
        probe.set_ylim(0, 1.05)
        probe.set_xlabel("layer")
        probe.set_ylabel("accuracy")
        probe.legend(fontsize=8)
        which = f"{model}" + (f" · variant {variant}" if summary["variant"].nunique() > 1 else "")
        fig.suptitle(f"{which} · how each layer separates the prompts' labels", fontsize=10)
        fig.tight_layout()
        out.append(png_img(fig, f"{which}: within- and between-label cosine and linear-probe accuracy by layer"))
    return out


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
