"""Signals into and out of a worker: graceful preemption, and a test hook that kills at a named point.

Preemption. SIGTERM (what `scancel`, `qdel`, Slurm/PBS preemption and `scontrol requeue` send) and
SIGINT (Ctrl-C) ask the worker to stop: it takes no new batch, lets the current batch finish and be
written, and exits with EXIT_PREEMPTED (3). The current batch gets `LMSWEEP_PREEMPT_GRACE` seconds
(default 8, below PBS's 10 s kill_delay and Slurm's KillWait); a watchdog thread then ends the process
at once, with the same exit code. Cutting a batch short is safe: every file is written under a
temporary dot-name and renamed only when complete, which tests/test_kill_resume.py checks with kill -9.

A second stop signal changes nothing: the first one set the stop request and started the grace, so a
signal that reaches a worker twice (sent to its process group and passed on by `lmsweep run` as well)
counts once. `lmsweep run` starts each worker in a process group of its own and passes a stop on once
(runner/local.py), so a terminal's Ctrl-C reaches a worker once anyway.

The watchdog does not depend on the main thread returning to Python (it may sit in a long C call:
a matmul, an MPI collective): the signal's byte arrives on a wakeup fd that the watchdog thread reads.

The test hook that kills a process at a named point (LMSWEEP_TEST_KILL_AT) is lmsweep/core/kill_points.py:
the model cache (jobs/) and compaction (results/) pass its points too.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

EXIT_PREEMPTED = 3
DEFAULT_GRACE = 8.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_state = {"installed": False, "signum": None, "grace": DEFAULT_GRACE, "acknowledged": False}
_acknowledging = threading.Lock()


def stop_requested() -> bool:
    """True once SIGTERM or SIGINT arrived (always False unless `install()` ran). The stop is acknowledged on
    stderr before this first says so, so the log has it even when the batch ends before the watchdog runs."""
    if _state["signum"] is None:
        return False
    _acknowledge(_state["signum"])
    return True


def _acknowledge(signum: int) -> None:
    """Say once that the stop arrived and what happens now: from the watchdog thread or, when the main thread
    notices first (a batch that ends while the watchdog waits for the GIL under load), from the main thread."""
    with _acknowledging:
        if _state["acknowledged"]:
            return
        _state["acknowledged"] = True
    print(f"{signal.Signals(signum).name} received: finishing the current batch (at most {_state['grace']:g}s), "
          f"then exiting with code {EXIT_PREEMPTED}; rerun to continue", file=sys.stderr, flush=True)


def request_stop(reason: str) -> None:
    """A stop request from inside (e.g. the reader of the worker's output is gone): like SIGTERM between
    batches, without the grace watchdog (the main thread asks, so it is at a batch boundary)."""
    if _state["signum"] is None:
        _state["signum"] = int(signal.SIGTERM)
        _state["acknowledged"] = True
        print(f"{reason}: no new batch; exiting with code {EXIT_PREEMPTED}", file=sys.stderr, flush=True)


def grace_seconds() -> float:
    raw = os.environ.get("LMSWEEP_PREEMPT_GRACE")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_GRACE
    except ValueError:
        return DEFAULT_GRACE


def install(grace: float | None = None) -> None:
    """Turn SIGTERM/SIGINT into a stop request with a bounded grace. Call once, from the main thread
    of a worker process (never from a library or a test process: the watchdog ends the process)."""
    if _state["installed"]:
        return
    _state["grace"] = grace_seconds() if grace is None else grace
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handler)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watchdog, args=(read_fd,), name="lmsweep-preemption", daemon=True).start()
    _state["installed"] = True


def _handler(signum: int, frame) -> None:
    # Runs in the main thread at the next bytecode; the watchdog thread has usually set the flag already.
    if _state["signum"] is None:
        _state["signum"] = signum


def _watchdog(read_fd: int) -> None:
    while True:
        data = os.read(read_fd, 64)
        hits = [b for b in data if b in STOP_SIGNALS]
        if hits:
            break
    if _state["signum"] is None:
        _state["signum"] = hits[0]
    grace = _state["grace"]
    _acknowledge(hits[0])
    time.sleep(grace)
    print(f"grace of {grace:g}s over: abandoning the current batch; exiting with code {EXIT_PREEMPTED}",
          file=sys.stderr, flush=True)
    try:
        sys.stdout.flush()
    finally:
        os._exit(EXIT_PREEMPTED)
