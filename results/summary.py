"""Summary tables of an experiment's rows: each task says how it summarises (runner/tasks, `Task.summarize`)."""
from __future__ import annotations

import pandas as pd

from lmsweep.core.task_registry import get_task


def summarize(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """The task's summary, without a `variant` column that holds one value (a task configuration that does
    not vary says nothing in every row)."""
    if df.empty:
        return pd.DataFrame()
    table = get_task(task).summarize(df)
    if "variant" in table.columns and table["variant"].nunique(dropna=False) <= 1:
        table = table.drop(columns="variant")
    return table


def task_examples(df: pd.DataFrame, task: str) -> pd.DataFrame | None:
    """A few rows for eyeballing, or None when the task shows none (`Task.examples`)."""
    return get_task(task).examples(df)


def latency_percentiles(units: pd.DataFrame) -> dict:
    """Percentiles of a unit's latency: the wall time of the batch it ran in, once per unit."""
    lat = units.drop_duplicates("unit_id")["batch_latency_s"].dropna()
    return {f"latency_p{q}_s": float(lat.quantile(q / 100)) if len(lat) else None for q in (50, 90, 99)}
