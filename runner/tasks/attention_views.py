"""The attention task's views: a PNG grid of heatmaps (layers × heads, one colour bar) and a standalone HTML head
view per unit (`lmsweep plot attention`, units chosen by `--unit` and `--prompt-id`, files named by prompt id),
the report's heatmap, and bertviz's head and model views of the same rows (`--bertviz`, and in a notebook
`bertviz_head_view(exp, unit)`).

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


def unit_index(exp_dir: Path) -> pd.DataFrame:
    """One line per unit with attention rows: unit_id, model, prompt_set, prompt_id (sorted by unit id)."""
    from lmsweep.results.load import load_table

    cols = ["unit_id", "model", "prompt_set", "prompt_id"]
    return (load_table(exp_dir, columns=cols).to_pandas().drop_duplicates("unit_id")
            .sort_values("unit_id", ignore_index=True))


def _listing(index: pd.DataFrame, limit: int = 8) -> str:
    """`b1c48e7f29 (smollm2, animal), ...`: the units a user may ask for, by a prefix and what they are."""
    shown = [f"{u[:10]} ({m}, {p})" for u, m, p in index[["unit_id", "model", "prompt_id"]].itertuples(index=False)]
    more = f", … and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


def _unique_list(values, limit: int = 12) -> str:
    values = list(dict.fromkeys(str(v) for v in values))
    more = f", … and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more


def find_unit(exp_dir: Path, unit: str, index: pd.DataFrame | None = None) -> str:
    """A full unit id from an id or a unique prefix of one; a miss lists the units there are (and says so
    when `unit` is a prompt id)."""
    index = unit_index(exp_dir) if index is None else index
    ids = list(index["unit_id"])
    matches = [u for u in ids if u.startswith(unit)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        hint = f"{unit!r} is a prompt id: use --prompt-id {unit}; " if unit in set(index["prompt_id"]) else ""
        raise UsageError(f"no attention rows for unit {unit!r} in {exp_dir}; {hint}units (model, prompt id): "
                         f"{_listing(index)}", field="--unit")
    raise UsageError(f"unit prefix {unit!r} matches {len(matches)} units ({_unique_list(m[:10] for m in matches)}); "
                     "give more characters", field="--unit")


def choose_units(exp_dir: Path, units: list[str] | None, prompt_ids: list[str] | None) -> dict[str, str]:
    """The units `--unit` (ids or prefixes) and `--prompt-id` (every unit of the prompt: each model and
    variant) name, in the order asked, each with its file stem (`file_stems`)."""
    if not units and not prompt_ids:
        raise UsageError("name what to draw: --unit ID [ID ...] and/or --prompt-id ID [ID ...]", field="--unit")
    _check_task(exp_dir)
    index = unit_index(exp_dir)
    chosen = [find_unit(exp_dir, u, index) for u in units or []]
    for pid in prompt_ids or []:
        found = list(index.loc[index["prompt_id"] == pid, "unit_id"])
        if not found:
            raise UsageError(f"no attention rows for prompt id {pid!r} in {exp_dir}; prompt ids: "
                             f"{_unique_list(sorted(set(index['prompt_id'])))}", field="--prompt-id")
        chosen += found
    stems = file_stems(index)
    return {u: stems[u] for u in dict.fromkeys(chosen)}


def file_stems(index: pd.DataFrame) -> dict[str, str]:
    """Each unit's file name stem, `attention-<prompt id>`, unique within the experiment and safe on any
    filesystem: a prompt id with other characters than letters, digits, `.`, `_` and `-` (or over 60 of them)
    is cut to those and gets a hash of itself; a prompt id several units share (models, variants, prompt
    sets) gets the model alias where that tells them apart, else the unit id's first 10 characters."""
    base = {u: f"attention-{_safe(p)}" for u, p in zip(index["unit_id"], index["prompt_id"])}
    model = dict(zip(index["unit_id"], index["model"]))
    groups: dict[str, list[str]] = {}
    for u, stem in base.items():
        groups.setdefault(stem, []).append(u)
    stems = {}
    for stem, members in groups.items():
        by_model = len({model[u] for u in members}) == len(members)
        for u in members:
            stems[u] = stem if len(members) == 1 else f"{stem}-{_safe(model[u])}" if by_model else f"{stem}-{u[:10]}"
    taken: dict[str, int] = {}
    for stem in stems.values():
        taken[stem] = taken.get(stem, 0) + 1
    return {u: f"{stem}-{u[:10]}" if taken[stem] > 1 else stem for u, stem in stems.items()}


def _safe(name: str) -> str:
    import hashlib
    import re

    name = str(name)
    if re.fullmatch(r"[A-Za-z0-9._-]{1,60}", name) and not name.startswith("."):
        return name
    cut = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:40].strip("._") or "prompt"
    return f"{cut}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def load_unit(exp_dir: Path, unit: str, layers: list[int] | None = None,
              heads: list[int] | None = None) -> pd.DataFrame:
    """One attention unit's rows (by id or prefix), ordered by layer and head, kept to `layers`/`heads`; a
    layer or head that was not stored is refused, naming the ones that were."""
    from lmsweep.results.load import load

    _check_task(exp_dir)
    uid = find_unit(exp_dir, unit)
    rows = load(exp_dir, filters=pc.field("unit_id") == uid).sort_values(["layer", "head"], ignore_index=True)
    what = f"unit {uid[:10]} (prompt {rows['prompt_id'].iloc[0]})"
    for flag, column, asked in (("--layers", "layer", layers), ("--heads", "head", heads)):
        stored = sorted(int(x) for x in rows[column].unique())
        missing = [x for x in asked or [] if x not in stored]
        if missing:
            raise UsageError(f"{column} {missing[0]} is not stored for {what}; stored {column}s: "
                             f"{_ranges(stored)}{' (-1: the head mean)' if stored == [-1] else ''}", field=flag)
        if asked is not None:
            rows = rows[rows[column].isin(asked)]
    if not _has_matrices(rows):
        raise UsageError(f"{what} stores summaries only (store: summary): there is no matrix to draw; its "
                         "summary columns are in `lmsweep results`", field="--unit")
    return rows


def _check_task(exp_dir: Path) -> None:
    from lmsweep.jobs.plan import read_plan

    task = read_plan(exp_dir).meta["task"]["type"]
    if task != "attention":
        raise UsageError(f"{exp_dir} is a {task} experiment; attention plots need task: attention",
                        field="experiment")


def _has_matrices(rows: pd.DataFrame) -> bool:
    return any(c in rows.columns and rows[c].notna().any() for c in ("attention", "attention_f32"))


def _ranges(values: list[int]) -> str:
    """`0-29` or `0, 15, 29`: sorted integers with runs of three or more written as a range."""
    out, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out += [f"{values[i]}-{values[j]}"] if j - i >= 2 else [str(v) for v in values[i:j + 1]]
        i = j + 1
    return ", ".join(out)


def _head_name(head: int) -> str:
    return "mean" if head < 0 else f"head {head}"


def _show(token: str) -> str:
    return token.replace("\n", "\\n") if token.strip() else repr(token)[1:-1] or "␣"


def heatmap_grid(rows: pd.DataFrame, out: Path, max_labels: int = 24) -> Path:
    """One heatmap per (layer, head): layers down, heads across, on one colour scale (weights 0..1) with its
    colour bar on the right. Token labels on the outer panels only, and only when the prompt is short
    enough to read them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads = sorted(rows["layer"].unique()), sorted(rows["head"].unique())
    tokens = [_show(t) for t in rows["tokens"].iloc[0]]
    n = len(tokens)
    labelled = n <= max_labels
    panel = 2.2 if labelled else 1.6
    fig = plt.figure(figsize=(panel * len(heads) + 2.3, panel * len(layers) + 1.0))
    grid = fig.add_gridspec(len(layers), len(heads) + 1, width_ratios=[1] * len(heads) + [0.08])
    by_key = {(r["layer"], r["head"]): r for _, r in rows.iterrows()}
    image = None
    for i, layer in enumerate(layers):
        for j, head in enumerate(heads):
            ax = fig.add_subplot(grid[i, j])
            row = by_key.get((layer, head))
            if row is not None:
                image = ax.imshow(attention_matrix(row), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
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
    bar = fig.colorbar(image, cax=fig.add_subplot(grid[:, -1]))
    bar.set_label("attention weight", fontsize=8)
    bar.ax.tick_params(labelsize=7)
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


def plot_attention(exp_dir: Path, units: list[str] | None = None, out_dir: Path | None = None,
                   layers: list[int] | None = None, heads: list[int] | None = None,
                   prompt_ids: list[str] | None = None) -> list[Path]:
    """The PNG grid and standalone head view of each unit `units` (ids or prefixes) and `prompt_ids` name,
    as `<stem>.png` and `<stem>.html` (`file_stems`). Every unit's rows are read and checked before a
    file is written."""
    chosen = choose_units(exp_dir, units, prompt_ids)
    loaded = [(load_unit(exp_dir, uid, layers, heads), stem) for uid, stem in chosen.items()]
    out_dir = out_dir or exp_dir / "plots"
    written = []
    for rows, stem in loaded:
        written += [heatmap_grid(rows, out_dir / f"{stem}.png"), head_view_html(rows, out_dir / f"{stem}.html")]
    return written


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


def summary_grids(df: pd.DataFrame) -> tuple[str, int, dict[str, pd.DataFrame]] | None:
    """Per summary column, a layers × heads table of its mean over the first model's units (store: summary or
    both): (model, units, {column: table}); None without summaries."""
    from lmsweep.runner.tasks.attention_summary import NAMES

    names = [c for c in NAMES if c in df.columns and df[c].notna().any()]
    if not names or "layer" not in df.columns or "head" not in df.columns:
        return None
    model = df["model"].iloc[0]
    rows = df[(df["model"] == model) & df[names[0]].notna()]
    return model, rows["unit_id"].nunique(), {c: rows.pivot_table(index="layer", columns="head", values=c)
                                               for c in names}


def report_summaries(df: pd.DataFrame) -> list[str]:
    """The stored summaries as heatmaps, layers down and heads across, each on its own colour bar."""
    found = summary_grids(df)
    if found is None:
        return []
    model, units, grids = found
    plt = pyplot()
    fig, axes = plt.subplots(1, len(grids), squeeze=False, figsize=(3.8 * len(grids), 4.6))
    for ax, (name, table) in zip(axes[0], grids.items()):
        im = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", aspect="auto", interpolation="nearest")
        fig.colorbar(im, ax=ax)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        for axis, labels in ((ax.set_xticks, table.columns), (ax.set_yticks, table.index)):
            step = max(1, len(labels) // 10)
            axis(range(0, len(labels), step), [str(v) for v in labels[::step]], fontsize=7)
    fig.tight_layout()
    caption = f"Attention summaries by layer and head (model {model}, mean over {units} unit(s))"
    return [png_img(fig, caption)]


def report_heatmap(df: pd.DataFrame) -> list[str]:
    found = last_layer_map(df)
    if found is None:
        return report_summaries(df)
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
    return [png_img(fig, f"Attention heatmap ({where})"), *report_summaries(df)]



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


def write_bertviz_pages(exp: Path, units: list[str] | None = None, out_dir: Path | None = None,
                        layers: list[int] | None = None, heads: list[int] | None = None,
                        prompt_ids: list[str] | None = None) -> list[Path]:
    """bertviz's head view and model view of each chosen unit as two HTML pages, `<stem>-bertviz-head.html`
    and `-model.html` (they need cdnjs.cloudflare.com)."""
    exp = Path(exp)
    chosen = choose_units(exp, units, prompt_ids)
    loaded = [(load_unit(exp, uid, layers, heads), stem) for uid, stem in chosen.items()]
    inputs = [(rows, stem, bertviz_inputs(rows)) for rows, stem in loaded]
    bv = _bertviz()
    out_dir = out_dir or exp / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for rows, stem, (attention, tokens, include) in inputs:
        first = rows.iloc[0]
        title = f"{first['model']} · {first['prompt_id']} · unit {first['unit_id']}"
        for view, make in (("head", bv.head_view), ("model", bv.model_view)):
            fragment = make(attention, tokens, include_layers=include, html_action="return").data
            path = out_dir / f"{stem}-bertviz-{view}.html"
            write_text_atomic(path, f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>bertviz "
                                    f"{view} view · {html.escape(title)}</title></head>\n<body>\n{fragment}\n"
                                    "</body></html>\n")
            written.append(path)
    return written


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
