"""The worker: one element of a plan, read top to bottom.

read plan → select this rank's units → skip finished ones → load the model once → run batches →
write each batch's rows atomically → write a metadata sidecar. Exit 0 when every unit of the
element is done, 1 when some failed (their errors are in errors/), 2 for a bad plan, 3 when
preempted (SIGTERM/SIGINT; see runner/signals.py).
"""
from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
import traceback
from collections import deque
from datetime import datetime, timezone
from itertools import groupby
from pathlib import Path

from lmsweep.jobs.decoding import DecodingPoint
from lmsweep.jobs.errors import SpecError
from lmsweep.jobs.plan import PlanFiles, read_plan
from lmsweep.results.load import done_unit_ids
from lmsweep.results.schema import SCHEMA_VERSION
from lmsweep.results.writer import PartWriter
from lmsweep.runner.units import TaskContext, Unit, UnitFailure

EXIT_OK, EXIT_UNITS_FAILED = 0, 1

class OutOfMemory(Exception):
    """A batch did not fit: the worker halves the batch size and runs the batch again in pieces."""


def progress(done: int, total: int, note: str = "") -> None:
    """A machine-readable line the local backend turns into a progress bar; humans can read it too."""
    print(f"PROGRESS {done} {total} {note}".rstrip(), flush=True)


def select_units(plan: PlanFiles, element: int, rank: int = 0, world: int = 1) -> list[Unit]:
    units = plan.units(element).to_pylist()
    prompts = plan.prompts().to_pylist()
    points = plan.points
    mine = units[rank::world]
    return [Unit(unit_id=u["unit_id"], unit_key=u["unit_key"], element=u["element"], variant=u["variant"],
                 point_index=u["point"], point=points[u["point"]] if points else None, seed=u["seed"],
                 prompt=prompts[u["prompt_index"]]) for u in mine]


def make_batches(task, units: list[Unit], batch_size: int) -> list[list[Unit]]:
    """Group by task variant and the task's batch key, then by prompt length so padding stays small."""
    def key(u: Unit) -> tuple:
        return (u.variant, task.batch_key(u))

    keyed = sorted(units, key=lambda u: (key(u), len(u.prompt["prompt_text"]), u.unit_id))
    batches = []
    for _, group in groupby(keyed, key=key):
        group = list(group)
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    return batches


def run_element(exp_dir: Path, element: int, batch_size: int | None = None) -> int:
    from lmsweep.runner import autobatch, backends, distributed, loading, locks, signals
    from lmsweep.runner.tasks import TASKS, model_class_for

    started = time.perf_counter()        # cheap timers for the sidecar: where the element's time went
    timers = {"setup_s": 0.0, "load_s": 0.0, "task_s": 0.0, "model_s": 0.0, "write_s": 0.0}
    plan = read_plan(exp_dir)
    spec = plan.meta["spec"]
    task_name = plan.meta["task"]["type"]
    task = TASKS[task_name]
    execution = spec["execution"]
    batch_size = batch_size or execution["batch_size"]
    model_alias = plan.meta["elements"][element]["model"]
    model_info = plan.meta["models"][model_alias]
    variants = plan.meta["variants"]

    # Who this rank is (MPI, torchrun or alone), its tensor-parallel group, device and threads. A request
    # this node cannot serve (e.g. float16 on CPU) is a SpecError here, before any unit runs.
    world = distributed.discover()
    distributed.export_env(world)
    distributed.abort_on_crash(world)
    where = _model_field(spec, model_alias)
    settings = backends.resolve(execution, model_info, backends.detect_accelerator(),
                                spec_file=plan.meta.get("spec_file"), where=where)
    backends.check_architecture(settings, backends.model_type(model_info["path"]),
                                spec_file=plan.meta.get("spec_file"), where=where)
    layout = _tp_layout(world.size, settings.tp, plan.meta.get("spec_file"))
    group, leader, rank = layout.group_of(world.rank), layout.is_leader(world.rank), world.rank
    threads, threads_from = distributed.threads_for_rank(execution.get("threads_per_rank"), world.local_size)
    binding = distributed.bind_device(world, settings.accelerator)
    backends.prepare_environment()
    tp_group = backends.init_process_groups(world, layout, settings)

    # Rank 0 decides what is left; each TP group takes a disjoint share of it.
    units = select_units(plan, element)
    # One live worker per element: rank 0 holds its lock until this process ends (runner/locks.py).
    lock = locks.claim_element(exp_dir, element, task_name, signals.stop_requested) if rank == 0 else True
    pending = world.bcast(_pending(exp_dir, task_name, units) if rank == 0 and lock else None)
    if pending is None:                  # SIGTERM while waiting for the lock
        return signals.EXIT_PREEMPTED
    todo = layout.share([units[i] for i in pending], group)
    timers["setup_s"] = time.perf_counter() - started
    total = len(todo) + (len(units) - len(pending) if group == 0 else 0)
    if leader:
        progress(total - len(todo), total, f"element {element} rank {rank}")
    if not pending:
        return EXIT_OK

    import torch
    torch.set_num_threads(threads)
    loaded, backend_info, loads = None, {}, 0
    if todo or settings.tp > 1:          # a TP group with no share still joins the collective model set-up
        unit0 = todo[0] if todo else units[pending[0]]
        signals.test_point("load")
        load_start = time.perf_counter()
        loaded = loading.load(model_info, model_class_for(task, variants[unit0.variant]), task.ATTN)
        loads += 1
        model, backend_info = (backends.wrap(loaded.model, settings, tp_group, binding["device"],
                                             spec_file=plan.meta.get("spec_file"), where=where)
                               if loaded.model is not None else (None, {"backend": settings.backend}))
        timers["load_s"] = time.perf_counter() - load_start
        print(f"loaded model {model_alias} in {loaded.load_seconds:.1f}s (loads this rank: {loads}; backend "
              f"{settings.backend}, tp {settings.tp}, {binding['device']})", file=sys.stderr, flush=True)
        ctx = TaskContext(model, loaded.tokenizer, variants[0], device=binding["device"])
    writer = PartWriter(exp_dir, task_name, element, rank, before_rename=signals.test_hook("write"))
    common = _common_columns(plan, model_alias, model_info, element, rank, execution["backend"])
    common["device"] = binding["label"]

    finished, failed, preempted = total - len(todo), 0, False
    auto = batch_size == "auto"
    if auto and todo:
        batch_size, why = autobatch.start_size(ctx.model, todo, settings.accelerator)
        print(f"batch size {why}", file=sys.stderr, flush=True)
    batches = deque(make_batches(task, todo, batch_size if todo else 1))
    while batches:
        batch = batches.popleft()
        if signals.stop_requested():     # SIGTERM/SIGINT: no new batch; what is written stays written
            preempted = True
            break
        ctx.params = variants[batch[0].variant]
        task_start = time.perf_counter()
        try:                             # auto: halve on out-of-memory (not with TP: peers would diverge)
            rows, errors = _run_isolated(task, ctx, batch, oom_raises=auto and settings.tp == 1)
        except OutOfMemory as e:
            size = max(1, len(batch) // 2)
            batches = deque(make_batches(task, [u for b in (batch, *batches) for u in b], size))
            print(f"out of memory at batch size {len(batch)} ({e}); continuing with {size}",
                  file=sys.stderr, flush=True)
            _release_memory()
            continue
        timers["task_s"] += time.perf_counter() - task_start
        timers["model_s"] += sum({r["batch_latency_s"] for r in rows if r.get("batch_latency_s")})
        signals.test_point("batch")
        by_id = {u.unit_id: u for u in batch}
        now = datetime.now(timezone.utc)
        finished += len(batch) - len(errors)
        failed += len(errors)
        if not leader:                   # the group's other ranks computed the same rows
            continue
        write_start = time.perf_counter()
        writer.write([{**common, **_unit_columns(by_id[r["unit_id"]]), **r, "batch_size": len(batch),
                       "finished_at": now} for r in rows])
        writer.write_errors([{"unit_id": uid, "element": element, "rank": rank, "model": model_alias,
                              "error": msg, "host": common["host"], "failed_at": now}
                             for uid, msg in errors.items()])
        timers["write_s"] += time.perf_counter() - write_start
        progress(finished, total, f"element {element} rank {rank}" + (f" failed {failed}" if failed else ""))
    if preempted:
        print(f"preempted: element {element} rank {rank} stopped after {finished} of {total} units; "
              f"exit {signals.EXIT_PREEMPTED}", file=sys.stderr, flush=True)
        return signals.EXIT_PREEMPTED

    extra = {"world": world.layout(), "mpi_library": world.mpi_library,
             "tensor_parallel": {"tp": layout.tp, "groups": layout.n_groups, "group": group,
                                 "group_ranks": layout.members(group), "leader": leader},
             "binding": binding, "threads": {"n": threads, "from": threads_from,
                                             "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
             "accelerator": settings.accelerator, "backend_config": backend_info or None,
             "torch_extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR") if settings.backend == "deepspeed"
             else None,
             # model_s: inside model forward/generate (the tasks' batch_latency_s); task_s adds tokenizing
             # and decoding; total_s runs from run_element's start to here, so total_s - load_s - model_s is overhead.
             "model_loads": loads, "timers": {**timers, "total_s": time.perf_counter() - started}}
    meta = _write_sidecar(exp_dir, element, rank, world.size, model_alias, loaded, threads, len(todo), failed,
                          execution, extra)
    ranks = world.allgather(meta)        # also keeps every rank alive until the whole element is done
    if rank == 0:
        _write_element_sidecar(exp_dir, element, ranks)
    return EXIT_UNITS_FAILED if any(m["units_failed"] for m in ranks) else EXIT_OK


def _pending(exp_dir: Path, task_name: str, units: list[Unit]) -> list[int]:
    done = done_unit_ids(exp_dir, task_name)
    return [i for i, u in enumerate(units) if u.unit_id not in done]


def _model_field(spec: dict, alias: str) -> str:
    aliases = [m.get("alias") for m in spec.get("models", [])]
    return f"models[{aliases.index(alias)}]" if alias in aliases else f"model {alias}"


def _tp_layout(world_size: int, tp: int, spec_file: str | None):
    from lmsweep.runner.distributed import TPLayout

    try:
        return TPLayout(world_size, tp)
    except ValueError as e:
        raise SpecError(f"this element was launched with {e}", file=spec_file,
                        field="execution.ranks_per_element") from None


def _run_isolated(task, ctx: TaskContext, batch: list[Unit], oom_raises: bool = False
                  ) -> tuple[list[dict], dict[str, str]]:
    """Run a batch; if it raises, run its units one by one so one bad unit fails alone. With `oom_raises`,
    running out of memory on a batch of several units raises OutOfMemory instead (batch_size: auto)."""
    try:
        return task.run(ctx, batch)
    except Exception as e:
        if oom_raises and len(batch) > 1 and _is_oom(e):
            raise OutOfMemory(str(e)[:200]) from e
        if len(batch) == 1:
            kind = "" if isinstance(e, UnitFailure) else f"{type(e).__name__}: "
            return [], {batch[0].unit_id: f"{kind}{e}"[:2000] + _where(e)}
    rows, errors = [], {}
    for unit in batch:
        r, err = _run_isolated(task, ctx, [unit])
        rows += r
        errors |= err
    return rows, errors


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _release_memory() -> None:
    import gc

    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _where(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    return f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""


def _common_columns(plan: PlanFiles, alias: str, model_info: dict, element: int, rank: int, backend: str) -> dict:
    return {"experiment": plan.experiment, "spec_hash": plan.meta["spec_hash"], "element": element,
            "rank": rank, "model": alias, "model_source": model_info["source"],
            "model_fingerprint": model_info["fingerprint"], "backend": backend, "host": socket.gethostname(),
            "schema_version": SCHEMA_VERSION}


def _unit_columns(u: Unit) -> dict:
    p: DecodingPoint | None = u.point
    cols = {"unit_id": u.unit_id, "unit_key": u.unit_key, "prompt_set": u.prompt["prompt_set"],
            "prompt_id": u.prompt["prompt_id"], "prompt_text": u.prompt["prompt_text"],
            "label": u.prompt["label"], "variant": u.variant, "point": u.point_index, "seed": u.seed,
            "decoding": p.label() if p is not None else None}
    if p is not None:
        cols |= p.model_dump()
    return cols


def _write_sidecar(exp_dir: Path, element: int, rank: int, world: int, alias: str, loaded, threads,
                   n_units: int, n_failed: int, execution: dict, extra: dict | None = None) -> dict:
    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    import torch
    meta = {
        "element": element, "rank": rank, "world_size": world, "model": alias,
        "model_path": loaded.path if loaded else None, "load_seconds": loaded.load_seconds if loaded else None,
        "host": socket.gethostname(), "python": platform.python_version(),
        "packages": {n: version(n) for n in ("lmsweep", "torch", "transformers", "deepspeed", "mpi4py",
                                             "pandas", "pyarrow")},
        "torch_threads": torch.get_num_threads(), "threads_requested": threads,
        "accelerator": "cuda" if torch.cuda.is_available() else "cpu", "backend": execution["backend"],
        "cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [], "lmsweep_commit": _source_commit(),
        "units_run": n_units, "units_failed": n_failed, "finished_at": time.time(),
        **(extra or {}),
    }
    _write_json(exp_dir / "meta", f"element-{element:05d}-rank-{rank:04d}.json", meta)
    # The file above is rewritten when an element is resumed; each run also keeps its own copy, so rows
    # an earlier run wrote stay traceable (same element and rank, finished_at before this one's).
    _write_json(exp_dir / "meta" / "history", f"element-{element:05d}-rank-{rank:04d}-{time.time_ns()}.json", meta)
    return meta


def _source_commit() -> str | None:
    """The git commit of the lmsweep source this rank runs, when it runs from a checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _write_element_sidecar(exp_dir: Path, element: int, ranks: list[dict]) -> None:
    """One file per element with what holds for all its ranks, and a line per rank (host, device, group)."""
    first = ranks[0]
    summary = {k: first.get(k) for k in ("element", "model", "backend", "accelerator", "python", "packages",
                                         "mpi_library", "backend_config", "world_size")}
    summary |= {
        "tensor_parallel": {k: first["tensor_parallel"][k] for k in ("tp", "groups")} if "tensor_parallel" in first
        else None,
        "hosts": sorted({m["host"] for m in ranks}),
        "load_seconds_max": max((m["load_seconds"] or 0.0) for m in ranks),
        "units_run": sum(m["units_run"] for m in ranks if m.get("tensor_parallel", {}).get("leader", True)),
        "units_failed": sum(m["units_failed"] for m in ranks if m.get("tensor_parallel", {}).get("leader", True)),
        "ranks": [{"rank": m["rank"], "host": m["host"], "local_rank": m.get("world", {}).get("local_rank"),
                   "device": m.get("binding", {}).get("label"), "group": m.get("tensor_parallel", {}).get("group"),
                   "threads": m["torch_threads"], "load_seconds": m["load_seconds"], "units_run": m["units_run"]}
                  for m in ranks],
        "finished_at": time.time(),
    }
    _write_json(exp_dir / "meta", f"element-{element:05d}.json", summary)


def _write_json(directory: Path, name: str, data: dict) -> None:
    directory.mkdir(exist_ok=True)
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, directory / name)
