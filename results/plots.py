"""Attention views of one unit: a PNG grid of heatmaps (layers × heads) and a standalone HTML head view;
hidden-state views of an experiment: per layer, the prompts' cosine similarities and a 2-D projection.

All are files a person opens directly (no notebook, no server, no network): the HTML carries its
data and script inline, in the spirit of bertviz's head view.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from lmsweep.errors import UsageError
from lmsweep.results.writer import naming, write_text_atomic


def attention_matrix(row) -> np.ndarray:
    """The seq_len × seq_len weights [query, key] of one attention row (a pandas row or dict)."""
    get = row.get if isinstance(row, dict) else row.__getitem__
    flat = get("attention")
    if flat is None or (not isinstance(flat, np.ndarray) and pd.isna(flat)):
        flat = get("attention_f32")
    n = int(get("seq_len"))
    return np.asarray(flat, dtype=np.float32).reshape(n, n)


def find_unit(exp_dir: Path, unit: str) -> str:
    """A full unit id from an id or a unique prefix of one."""
    from lmsweep.results.load import load_table

    ids = sorted(set(load_table(exp_dir, columns=["unit_id"]).column("unit_id").to_pylist()))
    matches = [u for u in ids if u.startswith(unit)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no attention rows for unit {unit!r} in {exp_dir} ({len(ids)} units have rows)",
                        field="--unit")
    raise UsageError(f"unit prefix {unit!r} matches {len(matches)} units; give more characters", field="--unit")


def load_unit(exp_dir: Path, unit: str, layers: list[int] | None = None,
              heads: list[int] | None = None) -> pd.DataFrame:
    """One attention unit's rows (by id or prefix), ordered by layer and head, kept to `layers`/`heads`."""
    from lmsweep.jobs.plan import read_plan
    from lmsweep.results.load import load

    task = read_plan(exp_dir).meta["task"]["type"]
    if task != "attention":
        raise UsageError(f"{exp_dir} is a {task} experiment; attention plots need task: attention",
                        field="experiment")
    uid = find_unit(exp_dir, unit)
    rows = load(exp_dir, filters=pc.field("unit_id") == uid).sort_values(["layer", "head"], ignore_index=True)
    if layers is not None:
        rows = rows[rows["layer"].isin(layers)]
    if heads is not None:
        rows = rows[rows["head"].isin(heads)]
    if rows.empty:
        raise UsageError("no rows left after --layers/--heads; those layers or heads were not stored",
                        field="--layers")
    return rows


def _head_name(head: int) -> str:
    return "mean" if head < 0 else f"head {head}"


def _show(token: str) -> str:
    return token.replace("\n", "\\n") if token.strip() else repr(token)[1:-1] or "␣"


def heatmap_grid(rows: pd.DataFrame, out: Path, max_labels: int = 24) -> Path:
    """One heatmap per (layer, head): layers down, heads across. Token labels on the outer panels
    only, and only when the prompt is short enough to read them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads = sorted(rows["layer"].unique()), sorted(rows["head"].unique())
    tokens = [_show(t) for t in rows["tokens"].iloc[0]]
    n = len(tokens)
    labelled = n <= max_labels
    panel = 2.2 if labelled else 1.6
    fig, axes = plt.subplots(len(layers), len(heads), squeeze=False,
                             figsize=(panel * len(heads) + 1.5, panel * len(layers) + 1.0))
    by_key = {(r["layer"], r["head"]): r for _, r in rows.iterrows()}
    for i, layer in enumerate(layers):
        for j, head in enumerate(heads):
            ax = axes[i][j]
            row = by_key.get((layer, head))
            if row is not None:
                ax.imshow(attention_matrix(row), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(_head_name(head), fontsize=8)
            if j == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
            if labelled and i == len(layers) - 1:
                ax.set_xticks(range(n), tokens, rotation=90, fontsize=6)
            if labelled and j == 0:
                ax.set_yticks(range(n), tokens, fontsize=6)
    first = rows.iloc[0]
    fig.suptitle(f"{first['model']} · {first['prompt_id']} · unit {first['unit_id'][:10]} "
                 f"(rows: query token, columns: attended token)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with naming(out):
        fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def head_view_html(rows: pd.DataFrame, out: Path) -> Path:
    """A bertviz-style head view: tokens in two columns, lines from each query token to the tokens it
    attends to, opacity by weight; choose the layer and head, hover a token to see only its lines."""
    first = rows.iloc[0]
    data = {
        "tokens": [str(t) for t in first["tokens"]],
        "views": [{"layer": int(r["layer"]), "head": int(r["head"]), "name": f"layer {r['layer']} · "
                   + _head_name(int(r["head"])),
                   "weights": np.round(attention_matrix(r), 4).tolist()} for _, r in rows.iterrows()],
    }
    title = f"{first['model']} · {first['prompt_id']} · unit {first['unit_id']}"
    page = (_PAGE.replace("__TITLE__", html.escape(title))
            .replace("__PROMPT__", html.escape(str(first["prompt_text"])))
            .replace("__DATA__", json.dumps(data).replace("</", "<\\/")))
    write_text_atomic(out, page)
    return out


def plot_attention(exp_dir: Path, unit: str, out_dir: Path | None = None, layers: list[int] | None = None,
                   heads: list[int] | None = None) -> tuple[Path, Path]:
    rows = load_unit(exp_dir, unit, layers, heads)
    out_dir = out_dir or exp_dir / "plots"
    stem = f"attention-{rows['unit_id'].iloc[0][:12]}"
    return heatmap_grid(rows, out_dir / f"{stem}.png"), head_view_html(rows, out_dir / f"{stem}.html")


# ---- hidden states ---------------------------------------------------------------------------------------

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


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """The vectors' coordinates on their first two principal components (n × 2; zeros beyond the rank)."""
    centred = vectors - vectors.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = np.zeros((len(vectors), 2))
    k = min(2, len(s))
    coords[:, :k] = u[:, :k] * s[:k]
    return coords


def _panels(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(4.2 * cols, 3.8 * rows))
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return plt, fig, axes.ravel()


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with naming(out):
        fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _similarity_grid(rows: pd.DataFrame, model: str, layers: list[int], out: Path) -> Path:
    from lmsweep.runner.tasks.hidden_states import cosine_similarities

    plt, fig, axes = _panels(len(layers))
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
    return _save(plt, fig, out)


def _projection_grid(rows: pd.DataFrame, model: str, layers: list[int], out: Path) -> Path:
    from lmsweep.runner.tasks.hidden_states import vectors

    plt, fig, axes = _panels(len(layers))
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
    return _save(plt, fig, out)


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


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>attention · __TITLE__</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
 .prompt { color: #555; margin-bottom: 1em; max-width: 60em; }
 select { font-size: 1em; margin-right: 1em; }
 svg text { font-family: ui-monospace, monospace; font-size: 13px; cursor: default; }
 svg text.active { font-weight: bold; fill: #c0392b; }
 .hint { color: #777; font-size: .9em; }
</style></head><body>
<h2>__TITLE__</h2>
<div class="prompt">__PROMPT__</div>
<label>view <select id="view"></select></label>
<span class="hint">hover a token on the left to show only its attention; line opacity = weight</span>
<div><svg id="canvas" width="640" height="100"></svg></div>
<script id="data" type="application/json">__DATA__</script>
<script>
(() => {
const data = JSON.parse(document.getElementById("data").textContent);
const svg = document.getElementById("canvas"), NS = "http://www.w3.org/2000/svg";
const sel = document.getElementById("view"), rowH = 22, left = 200, right = 440, topY = 20;
data.views.forEach((v, i) => { const o = document.createElement("option"); o.value = i;
  o.textContent = v.name; sel.appendChild(o); });
function show(t) { return t.trim() === "" ? JSON.stringify(t) : t; }
function draw(focus) {
  const view = data.views[+sel.value], n = data.tokens.length;
  svg.setAttribute("height", topY * 2 + n * rowH);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  for (let q = 0; q < n; q++) {
    if (focus !== undefined && focus !== q) continue;
    for (let k = 0; k < n; k++) {
      const w = view.weights[q][k];
      if (w < 0.01) continue;
      const line = document.createElementNS(NS, "line");
      line.setAttribute("x1", left + 8); line.setAttribute("y1", topY + q * rowH);
      line.setAttribute("x2", right - 8); line.setAttribute("y2", topY + k * rowH);
      line.setAttribute("stroke", "#2e6fbf"); line.setAttribute("stroke-width", 2);
      line.setAttribute("stroke-opacity", w);
      svg.appendChild(line);
    }
  }
  data.tokens.forEach((t, i) => {
    for (const [x, anchor, side] of [[left, "end", "q"], [right, "start", "k"]]) {
      const el = document.createElementNS(NS, "text");
      el.setAttribute("x", x); el.setAttribute("y", topY + i * rowH + 4);
      el.setAttribute("text-anchor", anchor); el.textContent = show(t);
      if (side === "q") {
        if (focus === i) el.setAttribute("class", "active");
        el.addEventListener("mouseenter", () => draw(i));
        el.addEventListener("mouseleave", () => draw());
      } else if (focus !== undefined) {
        const w = view.weights[focus][i];
        el.appendChild(document.createElementNS(NS, "title")).textContent = w.toFixed(3);
        el.setAttribute("fill-opacity", 0.35 + 0.65 * Math.min(1, w * 2));
      }
      svg.appendChild(el);
    }
  });
}
sel.addEventListener("change", () => draw());
draw();
})();
</script></body></html>
"""
