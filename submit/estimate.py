"""Time to results: how long a packed sweep takes on a queue, and which of a system's queues finishes first.

Pure arithmetic on what packing decided (elements, their estimated work, nodes, arrays, throttle) and the
queue's limits; the CLI (submit/cli.py) gathers the inputs and prints `describe`'s lines. Queue wait is not
counted: no scheduler says how long a job will wait, and a number made up for it would be worse than none.

The model, per element: it loads its model (`LoadTime`), then works through its units (the packer's
estimate, `Element.est_seconds` over the element's model copies). At most `concurrency` elements run at
once: the smallest of the array throttle (%K), the queue's subjob limit and its running-jobs limit. Tasks
start in array order as slots free up (a greedy list schedule, which is what PBS and Slurm do with one
array), and arrays split for max_array_size run one after another (`afterany`).

Load time per model: measured, where finished elements of this experiment recorded it (the worker's
`timers.load_s` in meta/history, which counts the interpreter's torch import too), or of another experiment in
the same output directory that ran the same model (fingerprint) with the same engine; else estimated from the
model's size on disk at READ_BYTES_PER_S plus the engine's start (each engine declares its
`start_seconds`, lmsweep/core/engine.py). Both figures are
assumptions stated where they are printed: a shared Lustre or GPFS read can be slower, a vLLM engine start on
a GPU node with compilation longer.
"""
from __future__ import annotations

import heapq
import json
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmsweep.console import hms
from lmsweep.submit.throughput import read_history

READ_BYTES_PER_S = 200e6     # measured here: SmolLM2's 514 MB fp32 directory loads in ~2.5 s (shared/design.md)
# another queue is recommended only when it saves this much: smaller differences are within what the load and
# throughput estimates can tell apart
MIN_GAIN_S = 60.0
MIN_GAIN_FRACTION = 0.75     # ... and finishes within 75% of the chosen queue's time (a debug queue a few minutes
                             # sooner is no reason to leave a production one)


@dataclass(frozen=True)
class LoadTime:
    seconds: float
    source: str


def size_on_disk(path: str | os.PathLike | None) -> int | None:
    """Bytes of a model file, or of every file under a model directory (symlinks followed: an HF snapshot's
    files are links to its blobs); None where the path is not here."""
    if not path:
        return None
    p = Path(path)
    try:
        if p.is_file():
            return p.stat().st_size
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    except OSError:
        return None
    return None


def engine_start(backend: str) -> float:
    """The engine's own figure for its start (lmsweep.core.engine.Engine.start_seconds)."""
    from lmsweep.core.engine import get_engine
    return float(get_engine(backend).start_seconds)


def estimated_load(size_bytes: int | None, backend: str) -> LoadTime:
    """Engine start plus reading the weights once, with the assumptions named."""
    start = engine_start(backend)
    if size_bytes is None:
        return LoadTime(start, f"estimated: {backend} start {start:g} s; model size unknown here")
    read = size_bytes / READ_BYTES_PER_S
    return LoadTime(start + read, f"estimated: {backend} start {start:g} s + {size_bytes / 1e9:.2f} GB read at "
                                  f"{READ_BYTES_PER_S / 1e6:g} MB/s")


def measured_loads(history: Iterable[dict], accelerated: bool,
                   backend: str | None = None) -> dict[str, tuple[float, int]]:
    """Per model alias, (median seconds, runs) of the load time finished element runs recorded (their rank
    sidecars: `timers.load_s`, else `load_seconds`), on the same kind of device as the system's and, given
    `backend`, by the same engine."""
    seen: dict[str, list[float]] = {}
    for meta in history:
        if (meta.get("accelerator", "cpu") != "cpu") != accelerated:
            continue
        if backend is not None and meta.get("backend", backend) != backend:
            continue
        seconds = (meta.get("timers") or {}).get("load_s") or meta.get("load_seconds")
        if meta.get("model") and seconds:
            seen.setdefault(meta["model"], []).append(float(seconds))
    return {m: (statistics.median(v), len(v)) for m, v in seen.items()}


def model_path(info) -> str | None:
    """A plan model's resolved path: plans built here hold dicts, plans read back from disk ModelInfo objects."""
    return info.get("path") if isinstance(info, dict) else getattr(info, "path", None)


def _fingerprint(info) -> str | None:
    return info.get("fingerprint") if isinstance(info, dict) else getattr(info, "fingerprint", None)


def sibling_loads(exp: Path, models: dict, accelerated: bool, backend: str) -> dict[str, tuple[float, int, str]]:
    """Per model alias of this plan, (median seconds, runs, experiment) measured by another experiment beside
    this one (same output directory) that ran the same model (same fingerprint) with the same engine on the
    same kind of device: the one with the most runs."""
    wanted = {fp: alias for alias, info in models.items() if (fp := _fingerprint(info))}
    found: dict[str, tuple[float, int, str]] = {}
    parent = Path(exp).parent
    if not wanted or not parent.is_dir():
        return found
    for other in sorted(parent.iterdir()):
        if other == Path(exp) or not (other / "meta" / "history").is_dir():
            continue
        try:
            theirs = json.loads((other / "plan.json").read_text()).get("models", {})
        except (OSError, ValueError, AttributeError):
            continue
        same = {a: wanted[m.get("fingerprint")] for a, m in theirs.items()
                if isinstance(m, dict) and m.get("fingerprint") in wanted}
        if not same:
            continue
        for their_alias, (seconds, runs) in measured_loads(read_history(other), accelerated, backend).items():
            mine = same.get(their_alias)
            if mine and runs > found.get(mine, (0.0, 0, ""))[1]:
                found[mine] = (seconds, runs, other.name)
    return found


def model_loads(models: dict, backend: str, measured: dict[str, tuple[float, int]],
                elsewhere: dict[str, tuple[float, int, str]] | None = None) -> dict[str, LoadTime]:
    """Per model alias: measured by this experiment, else by another beside it (`elsewhere`), else estimated
    from its size on disk and the engine."""
    out = {}
    for alias, info in models.items():
        if alias in measured:
            seconds, runs = measured[alias]
            out[alias] = LoadTime(seconds, f"measured: median of {runs} rank load(s) of this experiment")
        elif alias in (elsewhere or {}):
            seconds, runs, name = elsewhere[alias]
            out[alias] = LoadTime(seconds, f"measured: median of {runs} rank load(s) of experiment {name}, "
                                           "same model and engine")
        else:
            out[alias] = estimated_load(size_on_disk(model_path(info)), backend)
    return out


def makespan(durations: Sequence[float], slots: int) -> float:
    """Wall-clock time for tasks started in order, each as soon as one of `slots` is free."""
    if not durations:
        return 0.0
    free = [0.0] * max(1, min(slots, len(durations)))
    for d in durations:
        heapq.heapreplace(free, free[0] + d)
    return max(free)


@dataclass(frozen=True)
class QueueEstimate:
    queue: str | None
    arrays: int
    elements: int
    nodes: int
    walltime_s: int
    concurrency: int
    longest_s: float          # the longest element: its model's load + its work
    wall_s: float             # expected time from the first element's start to the last one's end
    node_hours: float         # the most that can be charged: every element for its whole walltime
    load_s: float             # the longest load of a model in the sweep
    preemptable: bool = False

    @property
    def serial(self) -> bool:
        return self.concurrency == 1 and self.elements > 1

    @property
    def over_walltime(self) -> bool:
        return self.longest_s > self.walltime_s


def concurrency(n_elements: int, throttle: int | None, queue=None, one_machine: bool = False) -> int:
    """Elements running at once: the array throttle and the queue's subjob and running-job limits."""
    limits = [x for x in (throttle, getattr(queue, "max_concurrent_subjobs", None),
                          getattr(queue, "max_running", None)) if x]
    if one_machine and not throttle:
        limits.append(1)
    return max(1, min([n_elements, *limits]))


def estimate(packing, loads: dict[str, LoadTime], *, one_machine: bool = False, queue=None) -> QueueEstimate:
    """The time to results of one packing (submit/packing.Packing) on its queue (`queue`: QueueLimits)."""
    from lmsweep.submit.systems import walltime_seconds
    groups = max(1, packing.groups)
    # an element's model copies share its units; a copy with no unit left to take does not make it faster
    durations = [(loads[e.model].seconds if e.model in loads else 0.0) + e.est_seconds / min(groups, max(1, e.n_units))
                 for e in packing.elements]
    slots = concurrency(len(packing.elements), packing.throttle, queue, one_machine)
    wall = sum(makespan([durations[i] for i in array], slots) for array in packing.arrays)
    walltime = walltime_seconds(packing.walltime)
    return QueueEstimate(
        queue=packing.queue, arrays=len(packing.arrays), elements=len(packing.elements), nodes=packing.nodes,
        walltime_s=walltime, concurrency=slots, longest_s=max(durations), wall_s=wall,
        node_hours=len(packing.elements) * packing.nodes * walltime / 3600,
        load_s=max((load.seconds for load in loads.values()), default=0.0),
        preemptable=bool(getattr(queue, "preemptable", False)))


def recommend(chosen: QueueEstimate, others: Sequence[QueueEstimate]) -> QueueEstimate | None:
    """The queue that finishes soonest without an element running past its walltime, if not the chosen one."""
    fits = [e for e in [chosen, *others] if not e.over_walltime]
    if not fits:
        return None
    best = min(fits, key=lambda e: (e.wall_s, e.node_hours))
    if chosen.over_walltime:
        return None if best.queue == chosen.queue else best
    gain = chosen.wall_s - best.wall_s
    return best if gain >= MIN_GAIN_S and best.wall_s <= MIN_GAIN_FRACTION * chosen.wall_s else None


def _duration(seconds: float) -> str:
    """`~1d 8h 36m` / `~24m 12s`: days for a wall clock a user plans an allocation around."""
    s = int(round(seconds))
    d, rest = divmod(s, 86400)
    return "~" + (f"{d}d " if d else "") + hms(rest)


def line(e: QueueEstimate, chosen: bool = False) -> str:
    at_once = "one at a time" if e.concurrency == 1 else f"{e.concurrency} at once"
    return (f"  {e.queue or '(none)'}{' (chosen)' if chosen else ''}: {e.arrays} array(s), {e.elements} element(s) "
            f"x {e.nodes} node(s), at most {e.node_hours:,.1f} node-hours; {at_once}: {_duration(e.wall_s)} "
            f"(longest element {hms(e.longest_s)})")


def describe(chosen: QueueEstimate, others: Sequence[QueueEstimate], unfit: Sequence[tuple[str, str]],
             loads: dict[str, LoadTime]) -> list[str]:
    """The decision's lines: per queue, the recommendation, and the warnings."""
    out = ["time to results for the whole plan (from the first element's start; queue wait not counted):"]
    for alias, load in loads.items():
        out.append(f"  model {alias}: load {hms(load.seconds)} per element ({load.source})")
    out.append(line(chosen, chosen=True))
    out += [line(e) for e in sorted(others, key=lambda e: e.wall_s)]
    out += [f"  {name}: does not fit ({why})" for name, why in unfit]
    best = recommend(chosen, others)
    if best is not None:
        caveat = "; preemptable: jobs may be killed, `lmsweep resubmit` runs what is left" if best.preemptable else ""
        out.append(f"recommended: queue {best.queue} ({_duration(best.wall_s)} instead of {_duration(chosen.wall_s)}; "
                   f"--queue {best.queue}{caveat})")
    if chosen.serial:
        out.append(f"warning: queue {chosen.queue or '(none)'} runs these {chosen.elements} elements one at a time "
                   f"(%1): {_duration(chosen.wall_s)} of wall clock"
                   + (f"; queue {best.queue} finishes in {_duration(best.wall_s)}" if best is not None else ""))
    if chosen.over_walltime:
        out.append(f"warning: the longest element is estimated at {hms(chosen.longest_s)} (model load "
                   f"{hms(chosen.load_s)} + work), past its walltime {hms(chosen.walltime_s)}: it would be killed "
                   f"before it finishes; raise the walltime or lower execution.max_units_per_element")
    return out
