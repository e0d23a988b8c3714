"""Packing: how many nodes per element, how many elements, how many arrays — for one queue.

Pure functions of (per-unit model and cost, profile limits, requested options). The result
re-groups the plan's units into elements (`apply_packing`), which `lmsweep submit` does before it
writes the plan, so workers only ever read the plan.

Rules, in order:
1. Walltime must fit the queue; nodes per element start at the queue's minimum (Polaris prod: 10)
   unless given; a request below the minimum is refused with the reason (a one-GPU-per-element
   plan on Polaris prod would hold 10 nodes to use one GPU and cap the sweep at 10 GPUs running).
2. An element holds one model (a rank loads one model once) and at most the work that its model copies
   (`ranks / tensor_parallel`; every rank under vLLM) finish in ELEMENT_FILL of the walltime; units are
   cut by the plan's own packer (jobs.plan.ElementPacker: greedy, in plan order) with this capacity, so a
   queue of the plan's capacity gets exactly the plan's elements.
3. The total number of array tasks must fit the queue's queued-jobs limit (subjobs count each);
   if not, nodes per element grow (bigger elements, fewer of them) up to the queue maximum.
4. Arrays hold at most max_array_size tasks (Slurm MaxArraySize, PBS max_array_size); a larger
   plan is split into several arrays, chained with `afterany` so the throttle holds overall.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from lmsweep.console import hms
from lmsweep.jobs.plan import (
    ELEMENT_FILL,
    Element,
    ElementPacker,
    Plan,
    element_budget,
    model_copies,
    prompt_token_estimate,
    unit_cost,
)
from lmsweep.submit.systems import QueueLimits, walltime_seconds


class PackingError(ValueError):
    """The plan cannot be submitted to this queue as asked; the message says why and what would work.

    `field` names the setting at fault (e.g. ``execution.nodes``) so the CLI can point at its line.
    """

    def __init__(self, message: str, field: str = "execution"):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class PackRequest:
    system: str
    queue: QueueLimits | None            # None: no queue (a backend running on this machine)
    ranks_per_node: int
    walltime: str
    tokens_per_second: float
    nodes: int | None = None             # asked for explicitly (execution.nodes / --nodes)
    ranks: int | None = None             # asked for explicitly (execution.ranks_per_element)
    tensor_parallel: int = 1             # ranks one model copy spans (jobs.plan.rank_span: 1 under vLLM)
    max_units_per_element: int | None = None
    max_array_size: int | None = None
    max_queued: int | None = None        # overrides the queue's (e.g. live Slurm MaxJobCount)
    array_limit: int | None = None       # asked-for throttle %K
    other_queues: tuple[QueueLimits, ...] = ()   # the system's other queues, to suggest one in errors
    one_machine: bool = False            # the backend runs every rank on this machine (Scheduler.one_machine)


@dataclass(frozen=True)
class Packing:
    queue: str | None
    nodes: int
    ranks_per_node: int
    walltime: str
    capacity: float                      # cost units one element holds (jobs.plan.element_budget)
    element_of_unit: np.ndarray = field(repr=False)
    elements: tuple[Element, ...] = field(repr=False)
    arrays: tuple[tuple[int, ...], ...]  # element indices per array (task i of array a runs arrays[a][i])
    throttle: int | None
    tensor_parallel: int = 1
    notes: tuple[str, ...] = ()

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def groups(self) -> int:
        """Model replicas per element: ranks / tensor_parallel, each working through its own units."""
        return model_copies(self.ranks, self.tensor_parallel)

    def describe(self) -> list[str]:
        """The packing decision in a few lines a user can check against the queue's rules."""
        n_el = len(self.elements)
        units = sum(e.n_units for e in self.elements)
        walls = [e.est_seconds / self.groups for e in self.elements]
        sizes = [len(a) for a in self.arrays]
        lo, hi = min(e.n_units for e in self.elements), max(e.n_units for e in self.elements)
        each = f"{lo}" if lo == hi else f"{lo}-{hi}"
        work = hms(max(walls)) if hms(min(walls)) == hms(max(walls)) else f"{hms(min(walls))}-{hms(max(walls))}"
        node_hours = n_el * self.nodes * walltime_seconds(self.walltime) / 3600
        lines = [
            f"queue: {self.queue or '(none)'}; walltime {self.walltime} per element",
            f"elements: {n_el} for {units} unit(s), {each} units each, est. {work} of work each "
            f"(sized to fill <= {ELEMENT_FILL:.0%} of the walltime)",
            f"per element: {self.nodes} node(s) x {self.ranks_per_node} rank(s) = {self.ranks} rank(s); "
            f"at most {node_hours:,.1f} node-hours in all",
            "one job (no array)" if sizes == [1] else
            f"arrays: {len(self.arrays)} ({', '.join(map(str, sizes))} task(s))"
            + (f", at most {self.throttle} running at once" if self.throttle else ""),
        ]
        fill = max(walls) / walltime_seconds(self.walltime)
        if fill < 0.25:
            lines.append(f"note: the largest element uses about {fill:.0%} of its walltime; ask for less "
                         f"(execution.walltime / --walltime) or a smaller queue to wait and spend less")
        return lines + list(self.notes)


def plan_unit_costs(plan: Plan) -> np.ndarray:
    """Per-unit cost, the same model build_plan sizes elements with (jobs.plan.unit_cost)."""
    prompt_tokens = np.array([prompt_token_estimate(p.text) for p in plan.prompts], dtype=np.int64)
    pt = prompt_tokens[plan.units.column("prompt_index").to_numpy()]
    est = plan.units.column("est_tokens").to_numpy().astype(np.int64)
    return np.array(unit_cost(pt, est - pt), dtype=np.float64)


def _queue_text(req: PackRequest) -> str:
    q = req.queue
    assert q is not None
    limits = [f"{q.min_nodes}-{q.max_nodes} nodes", f"<= {q.max_walltime}"]
    if q.max_queued:
        limits.append(f"{q.max_queued} queued")
    if q.max_running:
        limits.append(f"{q.max_running} running")
    if q.max_concurrent_subjobs:
        limits.append(f"%{q.max_concurrent_subjobs} subjobs at once")
    return f"{req.system} queue {q.name} ({', '.join(limits)})"


def choose_nodes(req: PackRequest) -> tuple[int, int, bool]:
    """(nodes, ranks per node, may grow) from the request and queue; refuses what the queue won't run."""
    q, ppn = req.queue, req.ranks_per_node
    if req.one_machine:                   # one machine: every rank on it
        return 1, req.ranks or (req.nodes or 1) * ppn, False
    if req.ranks is not None and req.nodes is None:
        nodes = max(1, math.ceil(req.ranks / ppn))
        if nodes == 1:
            ppn = req.ranks
        elif req.ranks != nodes * ppn:
            raise PackingError(f"{req.ranks} ranks are not a whole number of nodes of {ppn} ranks on "
                               f"{req.system}; use a multiple of {ppn} or set execution.nodes",
                               "execution.ranks_per_element")
        explicit = True
    else:
        nodes, explicit = (req.nodes, True) if req.nodes is not None else (q.min_nodes if q else 1, False)
    if q is not None and not q.min_nodes <= nodes <= q.max_nodes:
        asked = nodes * ppn
        field = ("execution.ranks_per_element" if req.ranks is not None and req.nodes is None
                 else "execution.nodes")
        what = f"{req.ranks} rank(s) per element" if field.endswith("element") else f"{nodes} node(s) per element"
        if nodes < q.min_nodes:
            full = req.ranks_per_node
            one = "one GPU per array element" if asked == 1 else f"{asked} rank(s) per array element"
            small = [o.name for o in req.other_queues if o.min_nodes <= nodes <= o.max_nodes]
            alt = f", or use queue {' / '.join(small)} for small elements" if small else ""
            raise PackingError(
                f"{what} asks for {one}, below the minimum of {_queue_text(req)}: PBS/Slurm reject a smaller "
                f"job, and padding it to {q.min_nodes} nodes ({q.min_nodes * full} ranks) would leave all but "
                f"{asked} idle; with {q.max_running or 'only a few'} jobs running at once the sweep would use "
                f"{(q.max_running or 1) * asked} rank(s) in all. Remove it and lmsweep packs "
                f"few large elements ({q.min_nodes} nodes x {full} ranks each){alt}.", field)
        raise PackingError(f"{what} is above the maximum of {_queue_text(req)}", field)
    return nodes, ppn, not explicit


def pack(unit_models: Sequence[str], unit_costs: np.ndarray, req: PackRequest,
         model_order: Sequence[str] | None = None) -> Packing:
    """Assign every unit to an element and every element to an array task, within the queue's limits."""
    q = req.queue
    wall = walltime_seconds(req.walltime)
    if q is not None and wall > q.max_walltime_seconds:
        raise PackingError(f"walltime {req.walltime} is above the maximum of {_queue_text(req)}",
                           "execution.walltime")
    nodes, ppn, can_grow = choose_nodes(req)
    tp = max(1, req.tensor_parallel)
    models = np.asarray(unit_models, dtype=object)
    costs = np.asarray(unit_costs, dtype=np.float64)
    order = list(model_order) if model_order is not None else list(dict.fromkeys(models.tolist()))
    if len(models) == 0:
        raise PackingError("the plan has no units")
    per_group = element_budget(wall, 1, req.tokens_per_second)     # what one model copy finishes
    if costs.max() > per_group:
        raise PackingError(f"one unit is estimated at {costs.max() / req.tokens_per_second:,.0f} s of work, "
                           f"more than {ELEMENT_FILL:.0%} of walltime {req.walltime}: raise the walltime, lower "
                           f"max_new_tokens, or raise execution.tokens_per_second if the estimate is pessimistic",
                           "execution.walltime")
    limit = req.max_queued if req.max_queued is not None else (q.max_queued if q else None)
    notes: list[str] = []
    if q is not None:
        notes.append(f"limits: {_queue_text(req)}")
    index = {m: np.flatnonzero(models == m) for m in order}

    def packed(n: int) -> tuple[float, np.ndarray, list[Element]]:
        """The plan's packer with the capacity of elements of `n` nodes."""
        capacity = element_budget(wall, model_copies(n * ppn, tp), req.tokens_per_second)
        packer = ElementPacker(capacity, req.max_units_per_element, req.tokens_per_second)
        element_of_unit = np.empty(len(models), dtype=np.int32)
        for m in order:
            packer.start(m)
            element_of_unit[index[m]] = packer.add(costs[index[m]])
        return capacity, element_of_unit, packer.close()

    _check_tp(nodes * ppn, tp, req)
    start_nodes = nodes
    capacity, element_of_unit, elements = packed(nodes)
    if limit is not None and len(elements) > limit:
        if not can_grow or q is None:
            raise PackingError(_too_many(len(elements), limit, req, nodes, ppn))
        # greedy packing makes the fewest in-order elements for a capacity, so their count never grows
        # with the nodes: the fewest nodes that fit the limit, by bisection
        hi = q.max_nodes
        top = packed(hi)
        if len(top[2]) > limit:
            raise PackingError(_too_many(len(top[2]), limit, req, hi, ppn))
        lo = nodes + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if len(packed(mid)[2]) <= limit:
                hi = mid
            else:
                lo = mid + 1
        nodes = hi
        _check_tp(nodes * ppn, tp, req)
        capacity, element_of_unit, elements = top if hi == q.max_nodes else packed(hi)
    if nodes != start_nodes:
        notes.append(f"nodes per element raised from {start_nodes} to {nodes} so the {len(elements)} element(s) "
                     f"fit the limit of {limit} queued jobs")
    groups = model_copies(nodes * ppn, tp)
    idle = [e for e in elements if e.n_units < groups]
    if idle:
        notes.append(f"{len(idle)} element(s) have fewer units than the {groups} rank group(s) they get; "
                     f"a smaller queue or fewer nodes would waste less")
    arrays, throttle, more = split_arrays(list(range(len(elements))), req, nodes)
    notes += more
    return Packing(queue=q.name if q else None, nodes=nodes, ranks_per_node=ppn, walltime=req.walltime,
                   capacity=capacity, element_of_unit=element_of_unit, elements=tuple(elements),
                   arrays=arrays, throttle=throttle, tensor_parallel=tp, notes=tuple(notes))


def _check_tp(ranks: int, tp: int, req: PackRequest) -> None:
    if ranks % tp:
        raise PackingError(f"{ranks} rank(s) per element is not a multiple of tensor_parallel={tp}: "
                           f"set execution.nodes/ranks_per_node so that ranks divide into model replicas")


def _too_many(n: int, limit: int, req: PackRequest, nodes: int, ppn: int) -> str:
    where = _queue_text(req) if req.queue else req.system
    fix = ("raise the walltime (up to the queue maximum), split the sweep into several experiments, "
           "or raise execution.tokens_per_second if the throughput estimate is pessimistic")
    roomier = [o.name for o in req.other_queues if o.max_queued is None or o.max_queued > limit]
    if roomier:
        fix = f"use a queue that takes more jobs ({' / '.join(roomier)}), " + fix
    if req.max_units_per_element:
        fix = "raise or remove execution.max_units_per_element, " + fix
    return (f"the plan needs {n} array task(s) with {nodes} node(s) x {ppn} rank(s) per element, more than the "
            f"{limit} jobs {where} lets one project queue (each array task counts): {fix}")


def split_arrays(elements: list[int], req: PackRequest,
                 nodes: int) -> tuple[tuple[tuple[int, ...], ...], int | None, list[str]]:
    """Arrays of at most max_array_size tasks, and the throttle %K within the queue's subjob limit."""
    q = req.queue
    cap = q.max_concurrent_subjobs if q else None
    notes = []
    if req.array_limit is not None and cap is not None and req.array_limit > cap:
        raise PackingError(f"array limit %{req.array_limit} is above the {cap} subjobs {_queue_text(req)} runs at "
                           f"once; a wider throttle can leave the array never running", "array_limit")
    throttle = req.array_limit or cap
    if req.one_machine:                   # one machine: one task at a time unless asked for more
        throttle = req.array_limit or 1
    size = req.max_array_size or len(elements) or 1
    arrays = tuple(tuple(elements[i:i + size]) for i in range(0, len(elements), size))
    limit = req.max_queued if req.max_queued is not None else (q.max_queued if q else None)
    if limit is not None and len(elements) > limit:
        raise PackingError(_too_many(len(elements), limit, req, nodes, req.ranks_per_node))
    if len(arrays) > 1:
        notes.append(f"{len(elements)} tasks exceed max_array_size {size}: split into {len(arrays)} arrays, "
                     f"each starting after the previous one ends (afterany), so at most "
                     f"{throttle or 'all'} run at once")
    if throttle is not None:
        throttle = min(throttle, max(len(a) for a in arrays)) if arrays else throttle
    return arrays, throttle, notes


def apply_packing(plan: Plan, packing: Packing) -> Plan:
    """The plan with its units re-grouped into the packing's elements (pure; write it with write_plan)."""
    units = plan.units
    col = units.schema.get_field_index("element")
    units = units.set_column(col, units.schema.field("element"), pa.array(packing.element_of_unit, pa.int32()))
    return replace(plan, units=units, elements=list(packing.elements))
