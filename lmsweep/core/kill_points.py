"""A test hook that kills the process at a named point: `LMSWEEP_TEST_KILL_AT=<point>[:N][@SIGNAL]`.

The process sends itself SIGNAL (default KILL) the N-th time (default 1) it passes `<point>`. Points: `load`
(before the model loads), `batch` (a batch computed, its rows not yet written), `write` (a result part's bytes
are in its temporary file, not yet renamed), `convert` (a model conversion written, not yet marked complete;
jobs/model_cache.py), `compact` (the N-th step of a part compaction, results/compact.py). The kill-and-resume
tests (tests/runner/test_kill_resume.py, tests/results/test_compact.py) use it to stop a process exactly where
a crash would do the most harm. It is in the core because three stages pass its points (the model cache in
jobs/, compaction in results/, the worker in runner/). For tests only; when unset it costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from collections.abc import Callable

KILL_ENV = "LMSWEEP_TEST_KILL_AT"
POINTS = ("load", "batch", "write", "convert", "compact")

_passes: Counter[str] = Counter()


def _kill_spec() -> tuple[str, int, int] | None:
    raw = os.environ.get(KILL_ENV)
    if not raw:
        return None
    where, _, sig = raw.partition("@")
    point, _, n = where.partition(":")
    if point not in POINTS:
        raise ValueError(f"{KILL_ENV}={raw!r}: point must be one of {', '.join(POINTS)}")
    return point, int(n or 1), int(getattr(signal, "SIG" + sig.upper().removeprefix("SIG"))) if sig \
        else int(signal.SIGKILL)


def test_point(point: str) -> None:
    """The LMSWEEP_TEST_KILL_AT hook: count this pass through `point`; signal ourselves on the chosen one."""
    spec = _kill_spec()
    if spec is None or spec[0] != point:
        return
    _passes[point] += 1
    if _passes[point] == spec[1]:
        print(f"{KILL_ENV}: signal {spec[2]} at {point} #{spec[1]}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), spec[2])


def test_hook(point: str) -> Callable[[], None] | None:
    """`test_point(point)` as a callback (for the part writer, compaction), or None when unset."""
    spec = _kill_spec()
    return (lambda: test_point(point)) if spec is not None and spec[0] == point else None
