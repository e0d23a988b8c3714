"""The worker: one element of a plan, in five phases, each one call in `run_element`.

1. set up the rank: who it is (MPI, torchrun or alone), its tensor-parallel group, device, threads and
   backend settings; a request this node cannot serve is a SpecError here, before any unit runs.
   (SIGTERM/SIGINT handlers are installed by the `worker` command, runner/cli.py.)
2. claim the pending units: rank 0 takes the element's lock and reads which units are already written;
   each TP group takes a disjoint share of the rest, so a resumed element runs only what is missing.
3. load the model once.
4. run the batches: rows written atomically per batch; with batch_size auto an out-of-memory batch halves
   the batch size; a stop request is honoured between batches; a failing unit fails alone.
5. write the sidecars (meta/, runner/sidecars.py).

Checks: an element past the plan's last is refused before anything (`check_element`, runner/cli.py); a
results or errors directory that is not a directory, cannot be written or has no room is refused after
the claim, before the model loads (`check_writable`): one line and exit 2 either way.

Exit 0 when every unit of the element is done, 1 when some failed (their errors are in errors/) or the
element crashed, 2 for a bad plan (SpecError) or experiment directory, 3 when preempted (SIGTERM/SIGINT;
see runner/signals.py). An element that ends in an error of its own (not a unit's) leaves one line for
`lmsweep status` in EXP/errors/element-NNNNN.json (`record_element_error`, written by runner/cli.py);
the next run of the element that ends without one deletes it.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmsweep.core import kill_points
from lmsweep.errors import ExperimentError, SpecError, UsageError
from lmsweep.jobs.decoding import DecodingPoint, point_labels
from lmsweep.jobs.model_sources import model_quantization
from lmsweep.jobs.plan import ModelInfo, PlanFiles, read_plan
from lmsweep.results.compact import WORKER_MIN_PARTS, compact_element
from lmsweep.results.load import done_unit_ids
from lmsweep.results.schema import SCHEMA_VERSION
from lmsweep.results.writer import PartWriter, errors_dir, results_dir, write_text_atomic
from lmsweep.runner import autobatch, distributed, engines, loading, locks, sidecars, signals
from lmsweep.runner.batches import BatchQueue, OutOfMemory, release_memory, run_isolated
from lmsweep.runner.engines import base as engine_base
from lmsweep.runner.units import TaskContext, Unit

EXIT_OK, EXIT_UNITS_FAILED, EXIT_CRASHED = 0, 1, 1
MIN_FREE_BYTES = 16 * 2**20              # less free space than this where results go: refused before the load


def run_element(exp_dir: Path, element: int, batch_size: int | None = None) -> int:
    timers = Timers()
    run = ElementRun.read(Path(exp_dir), element)
    rank = set_up_rank(run)
    claim = claim_pending_units(run, rank)
    if claim is None:                    # SIGTERM while waiting for the lock
        return signals.EXIT_PREEMPTED
    timers.setup_s = timers.elapsed()
    if rank.leader:
        progress(claim.done_before, claim.total, f"element {element} rank {rank.rank}")
    if not claim.pending:
        compact_parts(run, rank)
        return ended(run, rank, EXIT_OK)
    if signals.stop_requested():         # stopped before the model loads (e.g. while torch was imported)
        return preempted(run, rank, claim.done_before, claim.total)
    check_writable(run)                  # before the load: a directory that cannot take results is one line
    model = load_model(run, rank, claim, timers)
    outcome = run_batches(run, rank, claim, model, batch_size or run.plan.execution.batch_size, timers)
    if outcome.preempted:
        return preempted(run, rank, outcome.finished, claim.total)
    ranks = write_sidecars(run, rank, claim, model, outcome, timers)
    if any(m["units_failed"] for m in ranks):
        return ended(run, rank, EXIT_UNITS_FAILED)
    compact_parts(run, rank)
    return ended(run, rank, EXIT_OK)


def preempted(run: ElementRun, rank: Rank, finished: int, total: int) -> int:
    print(f"preempted: element {run.element} rank {rank.rank} stopped after {finished} of {total} "
          f"units; exit {signals.EXIT_PREEMPTED}", file=sys.stderr, flush=True)
    return signals.EXIT_PREEMPTED


def ended(run: ElementRun, rank: Rank, code: int) -> int:
    """The element ran to its end (units may have failed alone): an earlier run's crash record is stale."""
    if rank.rank == 0:
        clear_element_error(run.exp_dir, run.element)
    return code


# ---- checks before anything runs, and the element's own error record -------------------------------------

def check_element(exp_dir: Path, element: int) -> None:
    """An element number the plan has (`--element`), else a UsageError naming how many it has."""
    n = len(read_plan(exp_dir).elements)
    if not 0 <= element < n:
        last = f"0 to {n - 1}" if n > 1 else "only element 0" if n == 1 else "none"
        raise UsageError(f"{element}: no such element; the plan of {exp_dir} has {n} element(s) ({last})",
                         field="--element")


def check_writable(run: ElementRun) -> None:
    """After the claim (the element's lock is held), before the model loads: the results and errors
    directories are directories (made if missing), a file can be written in them, and their filesystem
    has MIN_FREE_BYTES free. Else an ExperimentError naming the directory (one line, exit 2), instead of
    a traceback after a long load."""
    for directory in (results_dir(run.exp_dir, run.plan.task_type), errors_dir(run.exp_dir)):
        for d in reversed([directory, *directory.parents]):
            if d.is_relative_to(run.exp_dir) and d.exists() and not d.is_dir():
                raise ExperimentError("is not a directory, so no results can be written under it; move it "
                                      "away and rerun", file=str(d))
        directory.mkdir(parents=True, exist_ok=True)
        try:
            # named as the element's temporary parts, so that a probe left by a kill is swept with them
            fd, probe = tempfile.mkstemp(prefix=f".part-e{run.element:05d}-probe-", suffix=".tmp", dir=directory)
            try:
                os.write(fd, b"\0" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as e:
            raise ExperimentError(f"cannot write here: {e.strerror or e}", file=str(directory)) from None
        free = shutil.disk_usage(directory).free
        if free < MIN_FREE_BYTES:
            raise ExperimentError(f"no space to write results: {free / 2**20:.1f} MiB free on its filesystem, "
                                  f"at least {MIN_FREE_BYTES // 2**20} MiB needed", file=str(directory))


def element_error_path(exp_dir: Path, element: int) -> Path:
    return errors_dir(Path(exp_dir)) / f"element-{element:05d}.json"


def record_element_error(exp_dir: Path, element: int, line: str, exit_code: int) -> Path | None:
    """EXP/errors/element-NNNNN.json: why the element as a whole failed, one line, for `lmsweep status`
    (written whole under a temporary dot-name, then renamed). Best effort: where errors/ cannot be written
    either (the error may be just that), the line is only in the log."""
    path = element_error_path(exp_dir, element)
    record = {"element": int(element), "error": " ".join(str(line).split()), "exit_code": int(exit_code),
              "host": socket.gethostname(), "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        return write_text_atomic(path, json.dumps(record) + "\n")
    except OSError as e:
        print(f"(could not record the element's error in {path}: {e})", file=sys.stderr, flush=True)
        return None


def clear_element_error(exp_dir: Path, element: int) -> None:
    try:
        element_error_path(exp_dir, element).unlink(missing_ok=True)
    except OSError:
        pass


def crash_line(e: BaseException, limit: int = 500) -> str:
    """An unexpected exception as one line: its type and its message's first lines, whitespace folded."""
    text = " ".join(str(e).split())
    line = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def compact_parts(run: ElementRun, rank: Rank) -> None:
    """Every unit done: rank 0 (holding the element's lock) merges the element's parts (results/compact.py)."""
    if rank.rank == 0:
        compact_element(run.exp_dir, run.plan.task_type, run.element, WORKER_MIN_PARTS,
                        kill_points.test_hook("compact"))


# ---- what every phase reads ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ElementRun:
    """The element this process runs: its plan, its model, its task."""

    exp_dir: Path
    plan: PlanFiles
    element: int
    alias: str                           # the element's model
    model: ModelInfo
    task: Any                            # the registered Task (runner/tasks)

    @classmethod
    def read(cls, exp_dir: Path, element: int) -> ElementRun:
        plan = read_plan(exp_dir)
        task = lookup_task(plan.task_type)
        alias = plan.elements[element].model
        return cls(exp_dir, plan, element, alias, plan.models[alias], task)

    @property
    def where(self) -> str:
        """The model's place in the spec, for errors about its settings."""
        return self.plan.model_field(self.alias)


@dataclass
class Timers:
    """Cheap timers for the sidecar: where the element's time went. model_s is inside model forward/
    generate (the tasks' batch_latency_s); task_s adds tokenizing and decoding; total_s runs from
    run_element's start to the sidecar, so total_s - load_s - model_s is overhead."""

    started: float = field(default_factory=time.perf_counter)
    setup_s: float = 0.0
    load_s: float = 0.0
    task_s: float = 0.0
    model_s: float = 0.0
    write_s: float = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def record(self) -> dict:
        return {"setup_s": self.setup_s, "load_s": self.load_s, "task_s": self.task_s, "model_s": self.model_s,
                "write_s": self.write_s, "total_s": self.elapsed()}


def progress(done: int, total: int, note: str = "") -> None:
    """A machine-readable line the local backend turns into a progress bar; humans can read it too.

    If the reader of stdout is gone (the `lmsweep run` that started this worker was killed), that is taken
    as a stop request: the batch just written stays written, the worker exits 3 at the next batch boundary
    instead of dying of BrokenPipeError, and stdout goes to /dev/null from here on."""
    try:
        # One write (unbuffered, PYTHONUNBUFFERED: print would write the newline apart), so that the lines
        # of several ranks that mpiexec merges into one stream never run into each other.
        sys.stdout.write(f"PROGRESS {done} {total} {note}".rstrip() + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
        signals.request_stop("the reader of this worker's output is gone")


# ---- 1. set up the rank ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rank:
    """This process's place in the element; the same settings on every rank of it."""

    world: distributed.World
    settings: engines.Settings
    layout: distributed.TPLayout
    binding: dict                        # the device, and what to record about it (distributed.bind_device)
    threads: int
    threads_from: str                    # "spec" | "OMP_NUM_THREADS" | "default"
    tp_group: Any                        # this rank's tensor-parallel process group; None without TP

    @property
    def rank(self) -> int:
        return self.world.rank

    @property
    def group(self) -> int:
        return self.layout.group_of(self.world.rank)

    @property
    def leader(self) -> bool:
        """The rank of its TP group that writes; the others compute the same rows."""
        return self.layout.is_leader(self.world.rank)

    @property
    def device(self) -> str:
        return self.binding["device"]


def set_up_rank(run: ElementRun) -> Rank:
    world = distributed.discover()
    distributed.export_env(world)
    distributed.abort_on_crash(world)
    spec_file, where = run.plan.spec_file, run.where
    settings = engines.resolve(run.plan.execution.backend, run.model, engines.detect_accelerator(),
                               spec_file=spec_file, where=where)
    engine = settings.engine
    engine.check_architecture(settings, engine_base.model_type(run.model.path), spec_file=spec_file, where=where)
    layout = _tp_layout(world.size, settings.group_size, spec_file)
    threads, threads_from = distributed.threads_for_rank(run.plan.execution.threads_per_rank, world.local_size)
    binding = engine.bind(world, settings, threads)
    if binding is None:                  # the engine leaves the device to the worker
        binding = distributed.bind_device(world, settings.accelerator)
    engine.prepare_environment(settings)
    tp_group = engine_base.init_process_groups(world, layout, settings)
    return Rank(world, settings, layout, binding, threads, threads_from, tp_group)


def _tp_layout(world_size: int, tp: int, spec_file: str | None) -> distributed.TPLayout:
    try:
        return distributed.TPLayout(world_size, tp)
    except ValueError as e:
        raise SpecError(f"this element was launched with {e}", file=spec_file,
                        field="execution.ranks_per_element") from None


# ---- 2. claim the pending units ----------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """The units this rank runs, decided by rank 0 under the element's lock. On rank 0 the Claim holds
    the lock (runner/locks.py): one live worker per element for as long as this process runs it."""

    units: list[Unit]                    # the element's units, in plan order (the same on every rank)
    pending: list[int]                   # indexes into `units` of those no part file holds yet
    todo: list[Unit]                     # this TP group's share of the pending units
    total: int                           # what this rank's progress counts to (group 0 counts the done ones)
    lock: Any                            # rank 0: its locks.ElementLock; other ranks: True

    @property
    def done_before(self) -> int:
        return self.total - len(self.todo)


def claim_pending_units(run: ElementRun, rank: Rank) -> Claim | None:
    """None when a stop request came while rank 0 waited for the lock (every rank then exits 3)."""
    units = select_units(run.plan, run.element)
    task_name = run.plan.task_type
    lock = locks.claim_element(run.exp_dir, run.element, task_name, signals.stop_requested) if rank.rank == 0 \
        else True
    pending = rank.world.bcast(_pending(run.exp_dir, task_name, units) if rank.rank == 0 and lock else None)
    if pending is None:
        return None
    todo = rank.layout.share([units[i] for i in pending], rank.group)
    total = len(todo) + (len(units) - len(pending) if rank.group == 0 else 0)
    return Claim(units, pending, todo, total, lock)


def select_units(plan: PlanFiles, element: int) -> list[Unit]:
    """Every unit of the element, in plan order (claim_pending_units shares them out among TP groups)."""
    prompts = plan.prompts().to_pylist()
    points = plan.points
    return [Unit(unit_id=u["unit_id"], unit_key=u["unit_key"], element=u["element"], variant=u["variant"],
                 point_index=u["point"], point=points[u["point"]] if points else None, seed=u["seed"],
                 prompt=prompts[u["prompt_index"]]) for u in plan.units(element).to_pylist()]


def _pending(exp_dir: Path, task_name: str, units: list[Unit]) -> list[int]:
    done = done_unit_ids(exp_dir, task_name)
    return [i for i, u in enumerate(units) if u.unit_id not in done]


# ---- 3. load the model ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankModel:
    """The model this rank's batches run on, as its task sees it, and what to record about it."""

    loaded: loading.LoadedModel | None   # None: this rank has no units and no TP peers to join
    ctx: TaskContext | None
    backend_info: dict                   # the backend config as recorded (Engine.load)
    loads: int


def load_model(run: ElementRun, rank: Rank, claim: Claim, timers: Timers) -> RankModel:
    start = time.perf_counter()          # load_s counts torch's import too (an engine may import it first here)
    import torch
    torch.set_num_threads(rank.threads)
    settings = rank.settings
    if not (claim.todo or settings.group_size > 1):   # a TP group with no share still joins the model set-up
        return RankModel(None, None, {}, 0)
    unit0 = claim.todo[0] if claim.todo else claim.units[claim.pending[0]]
    kill_points.test_point("load")
    model_class = task_model_class(run.task, task_params(run.plan, unit0.variant))
    loads = 1
    loaded, backend_info = settings.engine.load(run.model, model_class, run.task.attn_implementation, settings,
                                                rank.tp_group, rank.device, spec_file=run.plan.spec_file,
                                                where=run.where, todo=claim.todo)
    timers.load_s = time.perf_counter() - start
    print(f"loaded model {run.alias} in {loaded.load_seconds:.1f}s (loads this rank: {loads}; backend "
          f"{settings.backend}, tp {settings.tp}, {rank.device})", file=sys.stderr, flush=True)
    return RankModel(loaded, task_context(loaded.model, loaded.tokenizer, task_params(run.plan, 0), rank.device,
                                          settings.engine), backend_info, loads)


# ---- the task interface: where the worker looks a task up and builds what it sees --------------------
# (runner/tasks and runner/units.TaskContext own the interface; this block is the worker's side of it)

def lookup_task(task_type: str) -> Any:
    from lmsweep.core.task_registry import get_task

    return get_task(task_type)


def task_params(plan: PlanFiles, variant: int) -> Any:
    """The task parameters a unit runs with: the plan's variant it names, typed by its task."""
    return lookup_task(plan.task_type).variant(plan.variants[variant])


def task_model_class(task: Any, params: Any) -> str | None:
    return task.auto_class_for(params)


def task_context(model: Any, tokenizer: Any, params: Any, device: str, engine: Any = None) -> TaskContext:
    """What a task's batch runner sees: the model, its tokenizer, the variant, and the engine serving the
    model (its primitives: runner/engines)."""
    return engines.EngineContext(model, tokenizer, params, device=device, engine=engine)

# ---- end of the task interface ----------------------------------------------------------------------


# ---- 4. run the batches --------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchOutcome:
    finished: int                        # units done, counting those done before this run (see Claim.total)
    failed: int                          # units that failed in this run (their errors are in errors/)
    preempted: bool


def run_batches(run: ElementRun, rank: Rank, claim: Claim, model: RankModel, batch_size: int | str,
                timers: Timers) -> BatchOutcome:
    """This rank's share, batch by batch (runner/batches.py). A stop request is honoured only between
    batches, so a batch is written whole or not at all; the TP group leader writes and reports progress."""
    task, ctx, todo = run.task, model.ctx, claim.todo
    sink = ResultSink(run, rank)
    finished, failed = claim.done_before, 0
    auto = batch_size == "auto"
    engine = rank.settings.engine
    if auto and todo:                    # the engine's rule: sized from the model, or its own chunk
        chunk = engine.start_batch_size(ctx, todo, rank.settings.accelerator)
        batch_size, why = chunk if chunk is not None else autobatch.start_size(ctx.model, todo,
                                                                               rank.settings.accelerator)
        print(f"batch size {why}", file=sys.stderr, flush=True)
    queue = BatchQueue(task, todo, batch_size if todo else 1)
    # auto: halve on out-of-memory where the engine says so (not with TP: peers would diverge)
    oom_raises = auto and rank.settings.tp == 1 and engine.halves_on_oom
    note = f"element {run.element} rank {rank.rank}"
    while queue:
        batch = queue.next()
        if signals.stop_requested():     # SIGTERM/SIGINT: no new batch; what is written stays written
            return BatchOutcome(finished, failed, preempted=True)
        ctx.params = task_params(run.plan, batch[0].variant)
        task_start = time.perf_counter()
        try:
            rows, errors = run_isolated(task, ctx, batch, oom_raises=oom_raises)
        except OutOfMemory as e:
            size = queue.halve(batch)
            print(f"out of memory at batch size {len(batch)} ({e}); continuing with {size}",
                  file=sys.stderr, flush=True)
            release_memory()
            continue
        timers.task_s += time.perf_counter() - task_start
        timers.model_s += sum({r["batch_latency_s"] for r in rows if r.get("batch_latency_s")})
        kill_points.test_point("batch")
        finished += len(batch) - len(errors)
        failed += len(errors)
        if not rank.leader:              # the group's other ranks computed the same rows
            continue
        write_start = time.perf_counter()
        sink.write(batch, rows, errors)
        timers.write_s += time.perf_counter() - write_start
        progress(finished, claim.total, note + (f" failed {failed}" if failed else ""))
    return BatchOutcome(finished, failed, preempted=False)


class ResultSink:
    """Where a batch's rows and errors go: this rank's part files (results/writer.py), each row the
    element's columns, its unit's plan columns and the task's columns."""

    def __init__(self, run: ElementRun, rank: Rank):
        self.element, self.rank, self.alias = run.element, rank.rank, run.alias
        self.writer = PartWriter(run.exp_dir, run.plan.task_type, run.element, rank.rank,
                                 before_rename=kill_points.test_hook("write"))
        self.common = _common_columns(run, rank)
        self.labels = point_labels(run.plan.points)
        settings = rank.settings
        self.promise = {None: settings.engine.promise(settings, None)} | {
            i: settings.engine.promise(settings, p) for i, p in enumerate(run.plan.points)}

    def promise_of(self, unit: Unit) -> str:
        return self.promise[unit.point_index if unit.point is not None else None]

    def write(self, batch: list[Unit], rows: list[dict], errors: dict[str, str]) -> None:
        by_id = {u.unit_id: u for u in batch}
        now = datetime.now(timezone.utc)
        self.writer.write([{**self.common, **_unit_columns(by_id[r["unit_id"]], self.labels), **r,
                            "reproducible": self.promise_of(by_id[r["unit_id"]]),
                            "batch_size": len(batch), "finished_at": now} for r in rows])
        self.writer.write_errors([{"unit_id": uid, "element": self.element, "rank": self.rank, "model": self.alias,
                                   "error": msg, "host": self.common["host"], "failed_at": now}
                                  for uid, msg in errors.items()])


def _common_columns(run: ElementRun, rank: Rank) -> dict:
    return {"experiment": run.plan.experiment, "spec_hash": run.plan.spec_hash, "element": run.element,
            "rank": rank.rank, "model": run.alias, "model_source": run.model.source,
            "model_fingerprint": run.model.fingerprint, "backend": run.plan.execution.backend,
            "host": socket.gethostname(), "schema_version": SCHEMA_VERSION, "device": rank.binding["label"]}


def _unit_columns(u: Unit, labels: list[str]) -> dict:
    p: DecodingPoint | None = u.point
    cols = {"unit_id": u.unit_id, "unit_key": u.unit_key, "prompt_set": u.prompt["prompt_set"],
            "prompt_id": u.prompt["prompt_id"], "prompt_text": u.prompt["prompt_text"],
            "label": u.prompt["label"], "variant": u.variant, "point": u.point_index, "seed": u.seed,
            "decoding": labels[u.point_index] if p is not None else None}
    if p is not None:
        cols |= p.model_dump()
    return cols


# ---- 5. write the sidecars -----------------------------------------------------------------------------

def write_sidecars(run: ElementRun, rank: Rank, claim: Claim, model: RankModel, outcome: BatchOutcome,
                   timers: Timers) -> list[dict]:
    """This rank's sidecar, and rank 0's for the element; returns every rank's. The allgather also keeps
    every rank alive until the whole element is done."""
    meta = sidecars.write_rank_sidecar(run.exp_dir, run.element, rank.rank, rank.world.size, run.alias, model.loaded,
                                       rank.threads, len(claim.todo), outcome.failed, run.plan.execution.backend,
                                       _rank_record(rank, model, timers),
                                       model_quantization=model_quantization(run.model.source, run.model.path))
    ranks = rank.world.allgather(meta)
    if rank.rank == 0:
        sidecars.write_element_sidecar(run.exp_dir, run.element, ranks)
    return ranks


def _rank_record(rank: Rank, model: RankModel, timers: Timers) -> dict:
    """What the rank sidecar says about this rank beyond the host and packages: its place, device, threads."""
    layout, settings = rank.layout, rank.settings
    return {"world": rank.world.layout(), "mpi_library": rank.world.mpi_library,
            "tensor_parallel": {"tp": layout.tp, "groups": layout.n_groups, "group": rank.group,
                                "group_ranks": layout.members(rank.group), "leader": rank.leader},
            "binding": rank.binding, "threads": {"n": rank.threads, "from": rank.threads_from,
                                                 "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
            "accelerator": settings.accelerator, "backend_config": model.backend_info or None,
            **settings.engine.sidecar(),
            "model_loads": model.loads, "timers": timers.record()}
