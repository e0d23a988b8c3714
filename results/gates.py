"""compare's regression gates: the samples a task offers (`Task.statistics`) tested, corrected and judged.

Pure: samples in, one verdict row per group × metric out. A row regresses when its shift is significant
(p adjusted over all rows of the comparison by Holm or Benjamini–Hochberg, below alpha) *and* beyond the
metric's practical threshold in a direction that regresses (`Metric.direction`): noise large enough to be
significant on a big sweep but too small to matter passes as `shift`, and a large change on a sample too
small to show it is `ok` with an MDE above the threshold, which the table shows as `underpowered`. The
rule, the settings and the thresholds come from `regression.gates` (jobs/gates.py).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from lmsweep.core.task import Metric, Sample
from lmsweep.jobs.gates import Gates
from lmsweep.results import stats

COLUMNS = ["group", "metric", "n", "baseline", "current", "difference", "ci_low", "ci_high", "test", "p",
           "p_adjusted", "threshold", "mde", "verdict"]
REGRESSION = "REGRESSION"
TESTS = {"two_sample": stats.two_sample, "paired": stats.paired, "mcnemar": stats.mcnemar}


def threshold_for(metric: Metric, gates: Gates) -> float | None:
    """The practical threshold in the metric's own terms: the spec's `thresholds` entry, else the task's."""
    return gates.thresholds[metric.name] if metric.name in gates.thresholds else metric.threshold


def evaluate(samples: Sequence[Sample], metrics: dict[str, Metric], gates: Gates) -> pd.DataFrame:
    """One row per sample: the test, the adjusted p-value, the threshold (absolute: a relative one is
    multiplied by |baseline|), the MDE at alpha / (number of rows) and the verdict."""
    if not samples:
        return pd.DataFrame(columns=COLUMNS)
    alpha_each = gates.alpha / len(samples)       # the first step of Holm and of BH: an MDE for either
    kw = {"alpha": alpha_each, "power": gates.power, "seed": gates.seed, "resamples": gates.resamples}
    results = []
    for s in samples:
        if s.kind == "one_sample":
            results.append(stats.one_sample(s.current, **kw))
        else:
            results.append(TESTS[s.kind](s.baseline, s.current, **kw))
    adjusted = stats.adjust([r.p for r in results], gates.correction)
    rows = []
    for s, r, p_adj in zip(samples, results, adjusted):
        metric = metrics[s.metric]
        limit = threshold_for(metric, gates)
        if limit is not None and metric.relative:
            limit = limit * abs(r.baseline) if not math.isnan(r.baseline) else None
        rows.append({"group": s.group, "metric": s.metric, "n": _n(r), "baseline": r.baseline,
                     "current": r.current, "difference": r.diff, "ci_low": r.ci_low, "ci_high": r.ci_high,
                     "test": r.test, "p": r.p, "p_adjusted": float(p_adj), "threshold": limit, "mde": r.mde,
                     "verdict": verdict(r.diff, float(p_adj), limit, metric.direction, r.mde, gates.alpha)})
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict(diff: float, p_adjusted: float, limit: float | None, direction: str, mde: float, alpha: float) -> str:
    """REGRESSION: significant and beyond the threshold in a regressing direction; `shift`: significant but
    within it (or in the harmless direction, or no threshold); `underpowered`: not significant, and the
    sample could not have shown a shift the size of the threshold; `ok` otherwise."""
    significant = not math.isnan(p_adjusted) and p_adjusted < alpha
    if significant and limit is not None and _beyond(diff, limit, direction):
        return REGRESSION
    if significant:
        return "shift"
    if limit is not None and not mde <= limit:
        return "underpowered"
    return "ok"


def _beyond(diff: float, limit: float, direction: str) -> bool:
    if math.isnan(diff):
        return False
    if direction == "down":
        return diff < -limit
    if direction == "up":
        return diff > limit
    return abs(diff) > limit


def _n(r: stats.Result) -> str:
    return str(r.n_current) if r.test != "Mann-Whitney U" else f"{r.n_baseline}/{r.n_current}"


def summary(table: pd.DataFrame, gates: Gates, gating: bool) -> str:
    """The Check's detail line: how many rows, the correction, and how many could not gate anything."""
    if table.empty:
        return "no statistics for this task's rows"
    weak = int((table["verdict"] == "underpowered").sum())
    shifts = int((table["verdict"] == "shift").sum())
    text = (f"{len(table)} group × metric tests, p adjusted by {gates.correction}, alpha {gates.alpha:g}; "
            f"{shifts} significant within threshold; {weak} underpowered (MDE above the threshold)")
    return text if gating else text + "; reported only (add regression.gates to gate)"


def for_report(table: pd.DataFrame) -> pd.DataFrame:
    """The verdict rows as the report shows them: the difference with its 95% CI in one cell."""
    if table.empty:
        return table
    out = table.copy()
    out["difference (95% CI)"] = [f"{_g(d)} [{_g(lo)}, {_g(hi)}]" for d, lo, hi in
                                  zip(table["difference"], table["ci_low"], table["ci_high"])]
    cols = ["group", "metric", "n", "baseline", "current", "difference (95% CI)", "test", "p_adjusted",
            "threshold", "mde", "verdict"]
    return out[cols]


MAX_FIGURES = 12


def overlays(samples: Sequence[Sample], limit: int = MAX_FIGURES) -> list[str]:
    """The report's figures: per group (at most `limit`), each metric's baseline and current values as
    overlaid histograms on shared bins, where a table of means would hide a change of shape. HTML fragments."""
    import numpy as np

    from lmsweep.results.report import png_img, pyplot

    groups: dict[str, list[Sample]] = {}
    for s in samples:
        if len(s.current):
            groups.setdefault(s.group, []).append(s)
    plt = pyplot()
    out = []
    for group, items in list(groups.items())[:limit]:
        fig, axes = plt.subplots(1, len(items), figsize=(3.2 * len(items), 2.6), squeeze=False)
        for ax, s in zip(axes[0], items):
            sides = [("baseline", np.asarray(s.baseline, dtype=float)), ("current", np.asarray(s.current, dtype=float))]
            sides = [(name, v[np.isfinite(v)]) for name, v in sides if len(v)]
            values = np.concatenate([v for _, v in sides]) if sides else np.zeros(0)
            bins = np.histogram_bin_edges(values, bins=20) if values.size and np.ptp(values) > 0 else 10
            for name, v in sides:
                ax.hist(v, bins=bins, histtype="step", density=True, label=f"{name} (n={len(v)})")
            ax.set_title(s.metric, fontsize=9)
            ax.tick_params(labelsize=7)
        axes[0][0].legend(fontsize=7)
        out.append(png_img(fig, f"{group}: baseline and current distributions"))
    return out


def _g(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
