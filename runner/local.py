"""Run a plan's elements as real `lmsweep worker` subprocesses on this machine, a few at a time.

Stopping. Each worker runs in a process group of its own, so a signal meant for `lmsweep run` (a
terminal's Ctrl-C goes to its whole foreground process group; `kill -TERM -PGID`; `kill -TERM PID`)
reaches the run alone, once, and the run passes it on: the first SIGTERM, SIGINT or SIGHUP sends SIGTERM
to every worker's group (a worker finishes its batch and exits 3, runner/signals.py) and starts no new
element; the run keeps reading the workers' output until they exit, then reports and exits 3. A second
signal kills the workers at once (SIGKILL: what they wrote stays written, parts are atomic).

A crashed element. A worker that ends in an error of its own (not a unit's) records one line in
EXP/errors/element-NNNNN.json (runner/worker.py); here that line is printed once on stderr as
`element N: error: ...` and kept on the element's result. A worker killed before it could record anything
(SIGKILL, the out-of-memory killer) gets its record written here.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A process group of its own per worker (Python 3.11+: without a new session, so a job scheduler that
# ends the session still reaches it).
NEW_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}


@dataclass
class ElementResult:
    element: int
    returncode: int
    log: Path
    error: str | None = None      # the element's own error, one line, when it crashed or refused its input

    @property
    def crashed(self) -> bool:
        """The element failed as a whole (not some of its units, not a stop request)."""
        return self.error is not None and self.returncode != 2


class Stopper:
    """`lmsweep run`'s stop signals, passed on to its workers (see the module's docstring). A context
    manager: the handlers are installed (from the main thread only) for its duration. A signal that is
    ignored when it is entered (nohup; a background job of a shell script ignores SIGINT) stays ignored."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.RLock()          # the handler runs in the main thread, between its bytecodes
        self._previous: dict[int, object] = {}

    @property
    def stopped(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> Stopper:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def popen(self, cmd: list[str], **kwargs) -> subprocess.Popen | None:
        """Start a worker in a process group of its own; None once a stop was asked for."""
        with self._lock:
            if self.stopped:
                return None
            proc = subprocess.Popen(cmd, **kwargs, **NEW_GROUP)
            self._procs.add(proc)
            return proc

    def forget(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def _handle(self, signum: int, frame) -> None:
        from lmsweep.runner.signals import grace_seconds

        with self._lock:
            first = self.signum is None
            if first:
                self.signum = signum
            procs = [p for p in self._procs if p.returncode is None]
        name = signal.Signals(signum).name
        if first:
            sys.stderr.write(f"{name} received: stopping {len(procs)} worker(s) after their current batch "
                             f"(at most {grace_seconds():g}s); {name} again stops them at once\n")
            self._send(procs, signal.SIGTERM)
            self._send(procs, signal.SIGCONT)   # a stopped worker (Ctrl-Z, a debugger) must run to exit
        else:
            sys.stderr.write(f"{name} received again: killing {len(procs)} worker(s) now; "
                             "what they wrote stays written\n")
            self._send(procs, signal.SIGKILL)
        sys.stderr.flush()

    @staticmethod
    def _send(procs: list[subprocess.Popen], sig: int) -> None:
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):   # it has exited meanwhile
                pass


def worker_command(exp_dir: Path, element: int, ranks: int = 1, batch_size: int | None = None) -> list[str]:
    """The command line of one element; more than one rank goes through the venv's mpiexec."""
    cmd = [sys.executable, "-m", "lmsweep", "worker", "--plan", str(exp_dir), "--element", str(element)]
    cmd += ["--batch-size", str(batch_size)] if batch_size is not None else []
    if ranks > 1:
        mpiexec = Path(sys.executable).with_name("mpiexec")
        cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks)] + cmd
    return cmd


def run_elements(exp_dir: Path, elements: list[int], *, concurrency: int = 1, ranks: int = 1,
                 threads: int | None = None, show_progress: bool = True,
                 stopper: Stopper | None = None, batch_size: int | None = None) -> list[ElementResult]:
    """Run elements with at most `concurrency` at once; stream each one's log to logs/element-N.log.

    An element not started because of a stop request has no result. A caller that passes no `stopper`
    (its own, to learn whether a signal stopped the run) gets one made here, and on a stop request, once
    the workers have exited, SystemExit(3): the command it serves was preempted."""
    if stopper is None:
        with Stopper() as own:
            ran = run_elements(exp_dir, elements, concurrency=concurrency, ranks=ranks, threads=threads,
                               show_progress=show_progress, stopper=own, batch_size=batch_size)
        if own.stopped:
            from lmsweep.runner.signals import EXIT_PREEMPTED
            print("preempted; rerun the same command to continue where it stopped", flush=True)
            raise SystemExit(EXIT_PREEMPTED)
        return ran
    logs = exp_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // (concurrency * ranks))
    env.setdefault("OMP_NUM_THREADS", str(threads))
    # A workstation is shared: OpenMP threads that spin while waiting collapse when another process holds
    # a core (generate ran ~5x slower with 2 threads at load average 5; README, Performance). Sleep instead.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    results: list[ElementResult] = []
    lock = threading.Lock()
    pending = list(elements)
    counts: dict[tuple[int, int], tuple[int, int]] = {}

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=not show_progress,
                  transient=False) as bar:
        overall = bar.add_task("units", total=None)
        plain = show_progress and not bar.console.is_terminal   # batch logs get a line per 10%
        started, last_tenth = time.monotonic(), [-1]

        def update(element: int, rank_key: int, done: int, total: int) -> None:
            with lock:
                counts[(element, rank_key)] = (done, total)
                done_all = sum(d for d, _ in counts.values())
                total_all = max(sum(t for _, t in counts.values()), 1)
                bar.update(overall, completed=done_all, total=total_all)
                tenth = done_all * 10 // total_all
                if plain and tenth > last_tenth[0]:
                    last_tenth[0] = tenth
                    print(f"units {done_all}/{total_all} ({100 * done_all // total_all}%) "
                          f"after {time.monotonic() - started:.0f}s", flush=True)

        def run_one(element: int) -> None:
            log = logs / f"element-{element:05d}.log"
            with log.open("a") as fh:
                start, since = time.time(), fh.tell()
                proc = stopper.popen(worker_command(exp_dir, element, ranks, batch_size), stdout=subprocess.PIPE,
                                     stderr=fh, stdin=subprocess.DEVNULL, env=env, text=True)
                if proc is None:              # stopped before this element started
                    return
                try:
                    # Read to the end whatever happens here: a worker must never write into a closed pipe.
                    for line in proc.stdout:
                        try:
                            fh.write(line)
                            fh.flush()
                        except OSError:       # the log's disk is full: the PROGRESS lines still count
                            pass
                        progress = parse_progress(line)
                        if progress is not None:
                            update(element, *progress)
                    rc = proc.wait()
                finally:
                    stopper.forget(proc)
            error = element_error(exp_dir, element, rc, log, since, start, stopper.stopped)
            if rc == 2:       # the worker refused its input (e.g. float16 on a CPU node): show why, once
                for line in error_lines(log, since) or [f"error: {error}"]:
                    print(f"element {element}: {line}", file=sys.stderr, flush=True)
            elif error is not None:
                print(f"element {element}: error: {error}", file=sys.stderr, flush=True)
            with lock:
                results.append(ElementResult(element, rc, log, error))

        def pump() -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    element = pending.pop(0)
                run_one(element)

        threads_ = [threading.Thread(target=pump, daemon=True) for _ in range(min(concurrency, len(elements)))]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
    return sorted(results, key=lambda r: r.element)


def parse_progress(line: str) -> tuple[int, int, int] | None:
    """(rank, done, total) of a worker's `PROGRESS done total element E rank R` line; None for any other
    line, a garbled one included (never an exception: the pump must read on until the worker exits)."""
    parts = line.split()
    if len(parts) < 3 or parts[0] != "PROGRESS":
        return None
    try:
        rank = int(parts[parts.index("rank") + 1]) if "rank" in parts[:-1] else 0
        return rank, int(parts[1]), int(parts[2])
    except ValueError:
        return None


def error_lines(log: Path, since: int = 0) -> list[str]:
    """The distinct `error: ...` lines a worker wrote to its log from byte `since` on (this run's)."""
    with log.open("rb") as fh:
        fh.seek(since)
        text = fh.read().decode(errors="replace")
    return list(dict.fromkeys(x for x in text.splitlines() if x.startswith("error: ")))


def element_error(exp_dir: Path, element: int, rc: int, log: Path, since: int, start: float,
                  stopped: bool) -> str | None:
    """Why the element failed as a whole, in one line; None when it did not (exit 0; 1 with only units
    failed; 3, or killed after a stop request). Where the worker recorded nothing (killed, or its errors/
    could not be written) the record is written here, best effort."""
    from lmsweep.runner.worker import element_error_path, record_element_error

    if rc in (0, 3) or (stopped and rc < 0):
        return None
    record = element_error_path(exp_dir, element)
    try:
        if record.stat().st_mtime >= start - 1:
            return str(json.loads(record.read_text())["error"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    lines = [x.removeprefix("error: ") for x in error_lines(log, since)]
    if rc == 1 and not lines:             # units failed alone: their errors are in errors/, no crash
        return None
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        why = f"killed by {name}" + (" (out of memory? the kernel's OOM killer sends it)" if rc == -9 else "")
    else:
        why = lines[-1] if lines else f"exited with code {rc}"
    line = f"{why}; see {log}"
    if rc != 2 or not lines:
        record_element_error(exp_dir, element, line, rc)
    return line
