"""The attention task's views: a PNG grid of heatmaps (layers × heads) and a standalone HTML head view of one
unit (`lmsweep plot attention`), the report's heatmap, and bertviz's head and model views of the same rows
(`--bertviz`, and in a notebook `bertviz_head_view(exp, unit)`).

Imported when a view is drawn (runner/tasks/attention.py, `Attention.plot` / `report_plots`), never on task
discovery: it imports numpy, pandas and matplotlib. The HTML carries its data and script inline, in the spirit
of bertviz's head view: a file a person opens directly (no notebook, no server, no network).
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from lmsweep.errors import UsageError
from lmsweep.results.plots import save_figure
from lmsweep.results.report import png_img, pyplot
from lmsweep.results.writer import write_text_atomic


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
    return save_figure(plt, fig, out)


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



# ---- the report's heatmap -------------------------------------------------------------------------

def last_layer_map(df: pd.DataFrame) -> tuple[np.ndarray, str, list[str] | None] | None:
    """One (query × key) map from attention rows: the first model and prompt, its last stored layer,
    averaged over heads (or the stored head mean, head = -1). Rows hold the matrix flattened row-major
    in `attention` (float16) or `attention_f32`, with its side in `seq_len`."""
    cols = [c for c in ("attention", "attention_f32") if c in df.columns]
    if not cols or "seq_len" not in df.columns or df.empty:
        return None
    flat = df[cols[0]] if len(cols) == 1 else df[cols[0]].where(df[cols[0]].notna(), df[cols[1]])
    rows = df.assign(_flat=flat)[flat.notna()]
    if rows.empty:
        return None
    first = rows.iloc[0]
    rows = rows[(rows["model"] == first["model"]) & (rows["unit_id"] == first["unit_id"])]
    if "layer" in rows.columns:
        rows = rows[rows["layer"] == rows["layer"].max()]
    if "head" in rows.columns and (rows["head"] == -1).any():
        rows = rows[rows["head"] == -1]
    n = int(first["seq_len"])
    mats = [np.asarray(v, dtype=np.float32).reshape(n, n) for v in rows["_flat"] if len(v) == n * n]
    if not mats:
        return None
    tokens = list(first["tokens"]) if "tokens" in rows.columns and first["tokens"] is not None else None
    where = f"model {first['model']}, prompt {first['prompt_id']}"
    if "layer" in rows.columns:
        where += f", layer {int(rows['layer'].iloc[0])}"
    if "head" in rows.columns:
        where += ", mean over heads" if len(mats) > 1 or int(rows["head"].iloc[0]) == -1 else \
            f", head {int(rows['head'].iloc[0])}"
    return np.mean(mats, axis=0), where, tokens


def report_heatmap(df: pd.DataFrame) -> list[str]:
    found = last_layer_map(df)
    if found is None:
        return []
    arr, where, tokens = found
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(arr, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax)
    if tokens and len(tokens) == arr.shape[-1] <= 40:
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        if len(tokens) == arr.shape[0]:
            ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title("Attention")
    return [png_img(fig, f"Attention heatmap ({where})")]



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


# ---- bertviz's head view and model view (the optional `bertviz` extra) ---------------------------------------
# In a notebook, `bertviz_head_view(exp, unit)` / `bertviz_model_view(exp, unit)` return bertviz's own HTML object
# (it renders as the cell's output); `write_bertviz_pages` saves both as HTML files for `lmsweep plot attention
# --bertviz`. The rows are handed to bertviz as it expects them from a model: per layer, a (1, heads, seq, seq)
# tensor. Only the stored layers are given, under their own numbers (bertviz's `include_layers`); the heads are the
# stored ones in order, which bertviz numbers from 0 (with `head_mean: true`, one head: the mean). bertviz's pages
# load require.js, d3 and jQuery from cdnjs.cloudflare.com, so they render only with that site reachable; the
# standalone head view above works offline.

BERTVIZ_INSTALL = "pip install 'lmsweep[bertviz]' (or: pip install --no-deps bertviz==1.4.1 && pip install ipython)"


def bertviz_head_view(exp: str | Path, unit: str, layers: list[int] | None = None, heads: list[int] | None = None,
              **kwargs: Any):
    """bertviz's head view of `unit` (an id or a unique prefix) in experiment `exp`: an IPython HTML object.
    Extra keyword arguments go to `bertviz.head_view` (e.g. `layer=`, `heads=` to preselect)."""
    attention, tokens, include = bertviz_inputs(load_unit(Path(exp), unit, layers, heads))
    return _bertviz().head_view(attention, tokens, include_layers=include, html_action="return", **kwargs)


def bertviz_model_view(exp: str | Path, unit: str, layers: list[int] | None = None, heads: list[int] | None = None,
               **kwargs: Any):
    """bertviz's model view (every stored layer × head as a thumbnail) of `unit`: an IPython HTML object."""
    attention, tokens, include = bertviz_inputs(load_unit(Path(exp), unit, layers, heads))
    return _bertviz().model_view(attention, tokens, include_layers=include, html_action="return", **kwargs)


def write_bertviz_pages(exp: Path, unit: str, out_dir: Path | None = None, layers: list[int] | None = None,
                heads: list[int] | None = None) -> tuple[Path, Path]:
    """bertviz's head view and model view of one unit as two HTML pages (they need cdnjs.cloudflare.com)."""
    rows = load_unit(Path(exp), unit, layers, heads)
    attention, tokens, include = bertviz_inputs(rows)
    bv = _bertviz()
    first = rows.iloc[0]
    out_dir = out_dir or Path(exp) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"attention-{first['unit_id'][:12]}-bertviz"
    title = f"{first['model']} · {first['prompt_id']} · unit {first['unit_id']}"
    written = []
    for view, make in (("head", bv.head_view), ("model", bv.model_view)):
        fragment = make(attention, tokens, include_layers=include, html_action="return").data
        path = out_dir / f"{stem}-{view}.html"
        write_text_atomic(path, f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>bertviz "
                                f"{view} view · {html.escape(title)}</title></head>\n<body>\n{fragment}\n"
                                "</body></html>\n")
        written.append(path)
    return written[0], written[1]


def bertviz_inputs(rows: pd.DataFrame) -> tuple[list, list[str], list[int]]:
    """(attention, tokens, include_layers) in bertviz's form from one unit's rows: a list indexed by layer
    number holding a (1, heads, seq, seq) float tensor for each stored layer (zeros elsewhere; bertviz draws
    only `include_layers`), the prompt's tokens, and the stored layer numbers."""
    import torch

    layers = sorted(int(x) for x in rows["layer"].unique())
    heads = sorted(int(x) for x in rows["head"].unique())
    by_key = {(int(r["layer"]), int(r["head"])): r for _, r in rows.iterrows()}
    missing = [(layer, h) for layer in layers for h in heads if (layer, h) not in by_key]
    if missing:
        raise UsageError(f"layer {missing[0][0]} has no row for head {missing[0][1]}; bertviz needs the same heads "
                        "in every layer (choose them with --heads)", field="--heads")
    stored = {layer: torch.from_numpy(np.stack([attention_matrix(by_key[(layer, h)]) for h in heads])).unsqueeze(0)
              for layer in layers}
    unstored = torch.zeros_like(stored[layers[0]])      # one shared placeholder: bertviz reads only its shape
    attention = [stored.get(layer, unstored) for layer in range(layers[-1] + 1)]
    return attention, [str(t) for t in rows["tokens"].iloc[0]], layers


def _bertviz():
    try:
        import bertviz
    except ImportError as e:
        raise UsageError(f"bertviz is not installed ({e.name} missing); {BERTVIZ_INSTALL}", field="--bertviz") from None
    return bertviz
