"""The classify task's figure in `lmsweep report`: accuracy by number of few-shot examples, per model.

Imported by `Classify.report_plots` when a report is drawn (pandas and matplotlib), never on task discovery.
"""
from __future__ import annotations

import pandas as pd

from lmsweep.results.report import png_img, pyplot


def plot_accuracy_by_shots(df: pd.DataFrame) -> list[str]:
    """One line per model: the share of correct predictions at each number of shots; none without gold
    labels (`correct`) or shots."""
    if "shots" not in df.columns or "correct" not in df.columns or df.empty:
        return []
    plt = pyplot()
    acc = df.assign(_c=df["correct"].astype(float)).groupby(["model", "shots"])["_c"].mean().unstack("model")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    acc.plot(ax=ax, marker="o")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("few-shot examples")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("Accuracy by number of shots")
    return [png_img(fig, "Accuracy by number of shots")]
