"""`lmsweep status EXP --watch`: done / failed / missing and the scheduler's states, refreshed politely.

Each refresh is one `status` (cheap once elements are compacted) and, for a submitted experiment, one
batched scheduler query per system (submit/tracking.py: `squeue`/`sacct`, `qstat` or the local state
files, one call for all tasks). A line is printed when something changed; while nothing changes the
wait doubles, up to ten times `--interval`, so a watch left open on a login node over a long queue wait
costs the scheduler a query every few minutes. It ends when every unit is done (exit 0), when no job of
the experiment is queued or running any more but units are unfinished (exit 1, with what to resubmit),
or on Ctrl-C (exit 130).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich.console import Console

from lmsweep.console import console

EXIT_INTERRUPTED = 130
MAX_BACKOFF = 10
LIVE = ("queued", "held", "running")


@dataclass(frozen=True)
class Snapshot:
    planned: int
    done: int
    failed: int
    missing: int
    scheduler: tuple[tuple[str, int], ...]   # (state, tasks) of the elements' latest tasks; () unsubmitted
    notes: tuple[str, ...]
    crashed: str = ""                        # `; element 0 crashed: ...` (Status.crash_note)

    @property
    def complete(self) -> bool:
        return self.done == self.planned

    @property
    def ended(self) -> bool:
        """Submitted, and none of its tasks is queued, held or running."""
        return bool(self.scheduler) and not any(s in LIVE for s, _ in self.scheduler)

    def line(self) -> str:
        jobs = ", ".join(f"{state} {n}" for state, n in self.scheduler)
        return (f"{datetime.now():%H:%M:%S} {self.done}/{self.planned} done, {self.failed} failed, "
                f"{self.missing} missing{self.crashed}" + (f"; scheduler: {jobs}" if jobs else ""))


def snapshot(exp: Path) -> Snapshot:
    from lmsweep.results.load import status

    st = status(exp)
    states: tuple[tuple[str, int], ...] = ()
    notes: list[str] = []
    if (exp / "jobs").is_dir():
        from lmsweep.submit.tracking import scheduler_view

        per, notes = scheduler_view(exp, st.per_element)
        if "scheduler" in per:
            states = tuple(sorted(Counter(s for s in per["scheduler"] if s != "-").items()))
    return Snapshot(st.planned, st.done, st.failed, st.missing, states, tuple(notes), st.crash_note())


def next_wait(wait: float, interval: float, changed: bool) -> float:
    """Back to `interval` after a change; otherwise double, up to MAX_BACKOFF × interval."""
    return interval if changed else min(wait * 2, interval * MAX_BACKOFF)


def watch(exp: Path, interval: float = 30.0, out: Console | None = None) -> int:
    out = out or console
    interval = max(interval, 0.1)
    last, wait = None, interval
    try:
        while True:
            now = snapshot(exp)
            changed = now != last
            if changed:
                out.print(now.line(), markup=False)
            if now.complete:
                out.print(f"complete: results in {exp / 'results'}", markup=False)
                return 0
            if now.ended:                    # the last task may have finished after our status read
                now = snapshot(exp)
                if now.complete:
                    out.print(now.line(), markup=False)
                    out.print(f"complete: results in {exp / 'results'}", markup=False)
                    return 0
                for note in now.notes:
                    out.print(note, markup=False)
                return 1
            wait = next_wait(wait, interval, changed)
            last = now
            time.sleep(wait)
    except KeyboardInterrupt:
        out.print("interrupted", markup=False)
        return EXIT_INTERRUPTED
