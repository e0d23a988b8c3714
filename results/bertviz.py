"""bertviz's `head_view` and `model_view` over one unit's stored attention rows (the optional `bertviz` extra).

In a notebook, `head_view(exp, unit)` / `model_view(exp, unit)` return bertviz's own HTML object (it renders
as the cell's output); `write_pages` saves both as HTML files for `lmsweep plot attention --bertviz`.

The rows are handed to bertviz as it expects them from a model: per layer, a (1, heads, seq, seq) tensor.
Only the stored layers are given, under their own numbers (bertviz's `include_layers`); the heads are the
stored ones in order, which bertviz numbers from 0 (with `head_mean: true`, one head: the mean). bertviz's page
loads require.js, d3 and jQuery from cdnjs.cloudflare.com, so it renders only with that site reachable; the
standalone head view of runner/tasks/attention_views.py works offline.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmsweep.errors import UsageError
from lmsweep.results.writer import write_text_atomic
from lmsweep.runner.tasks.attention_views import attention_matrix, load_unit

if TYPE_CHECKING:
    import pandas as pd

INSTALL = "pip install 'lmsweep[bertviz]' (or: pip install --no-deps bertviz==1.4.1 && pip install ipython)"


def head_view(exp: str | Path, unit: str, layers: list[int] | None = None, heads: list[int] | None = None,
              **kwargs: Any):
    """bertviz's head view of `unit` (an id or a unique prefix) in experiment `exp`: an IPython HTML object.
    Extra keyword arguments go to `bertviz.head_view` (e.g. `layer=`, `heads=` to preselect)."""
    attention, tokens, include = bertviz_inputs(_rows(exp, unit, layers, heads))
    return _bertviz().head_view(attention, tokens, include_layers=include, html_action="return", **kwargs)


def model_view(exp: str | Path, unit: str, layers: list[int] | None = None, heads: list[int] | None = None,
               **kwargs: Any):
    """bertviz's model view (every stored layer × head as a thumbnail) of `unit`: an IPython HTML object."""
    attention, tokens, include = bertviz_inputs(_rows(exp, unit, layers, heads))
    return _bertviz().model_view(attention, tokens, include_layers=include, html_action="return", **kwargs)


def write_pages(exp: Path, unit: str, out_dir: Path | None = None, layers: list[int] | None = None,
                heads: list[int] | None = None) -> tuple[Path, Path]:
    """bertviz's head view and model view of one unit as two HTML pages (they need cdnjs.cloudflare.com)."""
    rows = _rows(exp, unit, layers, heads)
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


def _rows(exp: str | Path, unit: str, layers: list[int] | None, heads: list[int] | None) -> pd.DataFrame:
    return load_unit(Path(exp), unit, layers, heads)


def _bertviz():
    try:
        import bertviz
    except ImportError as e:
        raise UsageError(f"bertviz is not installed ({e.name} missing); {INSTALL}", field="--bertviz") from None
    return bertviz
