"""Read `lmsweep status` as a user does: poll it, and read its per-element table (scheduler column)."""
from __future__ import annotations

import time
from pathlib import Path

from helpers.cli import cli


def wait_status(exp: Path, env: dict, until, timeout: float = 240) -> str:
    """Poll `lmsweep status` (the user's view) until `until(exit code, output)` holds."""
    deadline = time.time() + timeout
    while True:
        proc = cli("status", str(exp), env=env)
        if until(proc.returncode, proc.stdout):
            return proc.stdout
        if time.time() > deadline:
            raise AssertionError(f"status did not get there in {timeout}s:\n{proc.stdout}\n{proc.stderr}")
        time.sleep(5)


def table(out: str) -> list[dict[str, str]]:
    """The per-element status table (the first one printed) as a list of {column: text}."""
    lines = out.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("┃") and "scheduler" in line), None)
    if start is None:
        return []
    cols = [c.strip() for c in lines[start].strip("┃").split("┃")]
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            rows.append(dict(zip(cols, (c.strip() for c in line.strip("│").split("│")))))
    return rows


def states(out: str) -> list[str]:
    """The scheduler column, one entry per element."""
    return [r["scheduler"] for r in table(out)]
