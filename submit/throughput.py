"""Tokens per second per rank, the figure packing sizes elements with, and where it came from.

In order: the spec's `execution.tokens_per_second` when it sets one; else what this experiment's
finished work measured, when it ran on the same kind of device as the system's (CPU or accelerator);
else the system profile's `tokens_per_second`; else lmsweep's default (50).

Measured: every run of an element leaves a rank sidecar in `meta/history/` with the seconds its batches
took (`timers.task_s`). The cost of the units done (the plan's estimate, in the tokens packing counts)
over those seconds, summed over tensor-parallel group leaders (a group's other ranks compute the same
rows), is the throughput one rank group achieved. Under MIN_SECONDS of batches it is not used: a
few tiny batches measure per-batch overhead, not throughput, and would make packing far too pessimistic.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_SECONDS = 10.0       # of measured batch time before a measurement replaces the profile's figure


@dataclass(frozen=True)
class Throughput:
    tokens_per_second: float
    source: str


def read_history(exp: Path) -> list[dict]:
    """The rank sidecars of every finished element run of an experiment (meta/history/), unreadable ones left out."""
    out = []
    for path in sorted((Path(exp) / "meta" / "history").glob("element-*-rank-*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def measured(exp: Path, unit_ids: list[str], unit_costs: np.ndarray, done: set[str],
             accelerated: bool) -> tuple[float, int] | None:
    """(tokens/s per rank group, element runs measured) from `exp`'s sidecars, or None without any."""
    seconds, runs = 0.0, 0
    for meta in read_history(exp):
        if (meta.get("accelerator", "cpu") != "cpu") != accelerated:
            continue
        if not (meta.get("tensor_parallel") or {}).get("leader", True):
            continue
        seconds += float((meta.get("timers") or {}).get("task_s") or 0.0)
        runs += 1
    cost = float(sum(c for u, c in zip(unit_ids, unit_costs) if u in done))
    if seconds < MIN_SECONDS or cost <= 0:
        return None
    return cost / seconds, runs


def choose(execution, profile, learned: tuple[float, int] | None) -> Throughput:
    if "tokens_per_second" in execution.model_fields_set:
        return Throughput(execution.tokens_per_second, "execution.tokens_per_second")
    if learned is not None:
        tps, runs = learned
        return Throughput(round(tps, 1), f"measured by {runs} finished element run(s) of this experiment on "
                                         f"{'an accelerator' if profile.gpus_per_node else 'CPU'}; "
                                         "set execution.tokens_per_second to override")
    if profile.tokens_per_second:
        return Throughput(profile.tokens_per_second, f"system profile {profile.name}'s default; "
                                                     "set execution.tokens_per_second to override")
    return Throughput(execution.tokens_per_second, "lmsweep's default; set execution.tokens_per_second")
