"""Terminal output shared by the subcommands: rich tables for DataFrames, one-line errors."""
from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table

console = Console(highlight=False, soft_wrap=False, width=160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_df(df: pd.DataFrame | None, title: str) -> None:
    if df is None or df.empty:
        return
    table = Table(title=title)
    for col in df.columns:
        table.add_column(str(col), overflow="fold")
    for row in df.itertuples(index=False):
        table.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"
