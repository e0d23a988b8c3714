"""Terminal output shared by the subcommands: rich tables for DataFrames, one-line errors.

Tables fit the terminal: the columns that fit its width are shown, in order, each at least as wide as
its header (a header is never broken mid-word), and the rest are named under the table (`--wide` or
`--csv` show them). The width is the terminal's, or `COLUMNS`; output to a pipe or file is 160 wide.
"""
from __future__ import annotations

import os
import sys

import pandas as pd
from rich.console import Console
from rich.table import Table

PIPE_WIDTH = 160
CELL_MAX = 48          # a longer value wraps inside its cell rather than pushing columns off the screen
CELL_MIN = 12          # the last column shown may be squeezed to this (its values wrap)


def _width() -> int | None:
    """None lets rich ask the terminal (or read COLUMNS); a pipe gets PIPE_WIDTH, as logs are read wide."""
    return None if os.environ.get("COLUMNS", "").isdigit() or sys.stdout.isatty() else PIPE_WIDTH


console = Console(highlight=False, soft_wrap=False, width=_width())
err = Console(stderr=True, highlight=False, soft_wrap=True)


def cell(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def natural_widths(headers: list[str], rows: list[list[str]], cap: int | None = CELL_MAX) -> list[int]:
    """What each column needs: its header, or its longest value (up to `cap`)."""
    out = []
    for i, header in enumerate(headers):
        longest = max((len(line) for r in rows for line in r[i].splitlines() or [""]), default=0)
        out.append(max(len(header), longest if cap is None else min(longest, cap)))
    return out


def table_width(widths: list[int]) -> int:
    """A rich table with the default box: 3 cells per column (a border, two of padding), plus one."""
    return 1 + sum(w + 3 for w in widths)


def fit_columns(headers: list[str], rows: list[list[str]], width: int) -> list[tuple[int, int]]:
    """(column index, width) of the leading columns that fit in `width` terminal cells: all of them at
    full width when they fit; else long values wrap at CELL_MAX and columns that still do not fit are
    left out (the first one left out is squeezed in when at least CELL_MIN remains)."""
    full = natural_widths(headers, rows, cap=None)
    if table_width(full) <= width:
        return list(enumerate(full))
    out, used = [], 1
    for i, want in enumerate(natural_widths(headers, rows)):
        room = width - used - 3
        if want <= room:
            out.append((i, want))
            used += want + 3
        else:
            if out and room >= max(len(headers[i]), CELL_MIN):
                out.append((i, room))      # squeeze the next column into what is left (its values wrap)
                used = width
            break
    spare = width - used                   # give what is left back to the columns that wrap
    for k, (i, w) in enumerate(out):
        more = min(spare, full[i] - w)
        if more > 0:
            out[k], spare = (i, w + more), spare - more
    return out or [(0, max(len(headers[0]), width - 4))]


def print_df(df: pd.DataFrame | None, title: str, wide: bool = False, out: Console | None = None,
             more: str = "a wider terminal, --wide or --csv") -> None:
    """`df` as a table that fits the terminal (all columns with `wide`); `more` says how to see the rest."""
    out = out or console
    if df is None or df.empty:
        return
    headers = [str(c) for c in df.columns]
    rows = [[cell(v) for v in row] for row in df.itertuples(index=False)]
    shown = list(enumerate(natural_widths(headers, rows))) if wide else fit_columns(headers, rows, out.width)
    hidden = headers[len(shown):]
    caption = f"{len(hidden)} more column(s): {', '.join(hidden)} ({more})" if hidden else None
    table = Table(title=title, caption=caption, caption_justify="left")
    for i, w in shown:
        table.add_column(headers[i], overflow="fold", min_width=len(headers[i]), max_width=w)
    for r in rows:
        table.add_row(*[r[i] for i, _ in shown])
    needed = table_width([w for _, w in shown])
    if wide and needed > out.width:      # wider than the terminal on purpose: the terminal wraps the lines
        out = Console(file=out.file, highlight=False, soft_wrap=False, width=needed)
    out.print(table)


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"
