"""Run a plan's elements as real `lmsweep worker` subprocesses on this machine, a few at a time."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@dataclass
class ElementResult:
    element: int
    returncode: int
    log: Path


def worker_command(exp_dir: Path, element: int, ranks: int = 1) -> list[str]:
    """The command line of one element; more than one rank goes through the venv's mpiexec."""
    cmd = [sys.executable, "-m", "lmsweep", "worker", "--plan", str(exp_dir), "--element", str(element)]
    if ranks > 1:
        mpiexec = Path(sys.executable).with_name("mpiexec")
        cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks)] + cmd
    return cmd


def run_elements(exp_dir: Path, elements: list[int], *, concurrency: int = 1, ranks: int = 1,
                 threads: int | None = None, show_progress: bool = True) -> list[ElementResult]:
    """Run elements with at most `concurrency` at once; stream each one's log to logs/element-N.log."""
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
                proc = subprocess.Popen(worker_command(exp_dir, element, ranks), stdout=subprocess.PIPE,
                                        stderr=fh, env=env, text=True)
                for line in proc.stdout:
                    fh.write(line)
                    fh.flush()
                    parts = line.split()
                    if len(parts) >= 3 and parts[0] == "PROGRESS":
                        rank = int(parts[parts.index("rank") + 1]) if "rank" in parts else 0
                        update(element, rank, int(parts[1]), int(parts[2]))
                rc = proc.wait()
            if rc == 2:       # the worker refused its input (e.g. float16 on a CPU node): show why, once
                for line in dict.fromkeys(x for x in log.read_text().splitlines() if x.startswith("error: ")):
                    print(f"element {element}: {line}", file=sys.stderr, flush=True)
            with lock:
                results.append(ElementResult(element, rc, log))

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
