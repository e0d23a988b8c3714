"""Figure helpers the tasks' views share (runner/tasks/*_views.py draws them; `lmsweep plot <task>` is each
task's `plot`): panel grids, atomic PNG saving, a 2-D PCA projection.

The files are ones a person opens directly (no notebook, no server, no network).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lmsweep.errors import UsageError
from lmsweep.results.writer import naming


def int_list(text: str | None) -> list[int] | None:
    """A `--layers`/`--heads` value: comma-separated integers; None (the flag not given) stays None."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"expected comma-separated integers, got {text!r}", field="--layers/--heads") from None


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """The vectors' coordinates on their first two principal components (n × 2; zeros beyond the rank)."""
    centred = vectors - vectors.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = np.zeros((len(vectors), 2))
    k = min(2, len(s))
    coords[:, :k] = u[:, :k] * s[:k]
    return coords


def panels(n: int):
    """A figure of n panels, up to three across (the spare ones blank): (pyplot, figure, flat axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(4.2 * cols, 3.8 * rows))
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return plt, fig, axes.ravel()


def save_figure(plt, fig, out: Path) -> Path:
    """Lay out, write `out` as PNG (atomically; a failure names `out`), close the figure."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with naming(out):
        fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
