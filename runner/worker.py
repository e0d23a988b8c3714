"""The worker: one element of a plan, read top to bottom.

read plan → select this rank's units → skip finished ones → load the model once → run batches →
write each batch's rows atomically → write a metadata sidecar. Exit 0 when every unit of the
element is done, 1 when some failed (their errors are in errors/), 2 for a bad plan.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
import traceback
from datetime import datetime, timezone
from itertools import groupby
from pathlib import Path

from jobs.decoding import DecodingPoint
from jobs.plan import PlanFiles, read_plan
from results.load import done_unit_ids
from results.schema import SCHEMA_VERSION
from results.writer import PartWriter
from runner.units import TaskContext, Unit, UnitFailure

EXIT_OK, EXIT_UNITS_FAILED = 0, 1


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


def run_element(exp_dir: Path, element: int, rank: int = 0, world: int = 1,
                batch_size: int | None = None) -> int:
    from runner import loading
    from runner.tasks import TASKS, model_class_for

    plan = read_plan(exp_dir)
    spec = plan.meta["spec"]
    task_name = plan.meta["task"]["type"]
    task = TASKS[task_name]
    execution = spec["execution"]
    batch_size = batch_size or execution["batch_size"]
    threads = execution.get("threads_per_rank") or int(os.environ.get("OMP_NUM_THREADS", "0")) or None

    units = select_units(plan, element, rank, world)
    done = done_unit_ids(exp_dir, task_name)
    todo = [u for u in units if u.unit_id not in done]
    progress(len(units) - len(todo), len(units), f"element {element} rank {rank}")
    if not todo:
        return EXIT_OK

    import torch
    if threads:
        torch.set_num_threads(threads)
    model_alias = plan.meta["elements"][element]["model"]
    model_info = plan.meta["models"][model_alias]
    variants = plan.meta["variants"]
    loaded = loading.load(model_info, model_class_for(task, variants[todo[0].variant]), task.ATTN)
    print(f"loaded model {model_alias} in {loaded.load_seconds:.1f}s (loads this rank: 1)", file=sys.stderr,
          flush=True)
    ctx = TaskContext(loaded.model, loaded.tokenizer, variants[0])
    writer = PartWriter(exp_dir, task_name, element, rank)
    common = _common_columns(plan, model_alias, model_info, element, rank, execution["backend"])

    finished, failed = len(units) - len(todo), 0
    for batch in make_batches(task, todo, batch_size):
        ctx.params = variants[batch[0].variant]
        rows, errors = _run_isolated(task, ctx, batch)
        by_id = {u.unit_id: u for u in batch}
        now = datetime.now(timezone.utc)
        writer.write([{**common, **_unit_columns(by_id[r["unit_id"]]), **r, "batch_size": len(batch),
                       "finished_at": now} for r in rows])
        writer.write_errors([{"unit_id": uid, "element": element, "rank": rank, "model": model_alias,
                              "error": msg, "host": common["host"], "failed_at": now}
                             for uid, msg in errors.items()])
        finished += len(batch) - len(errors)
        failed += len(errors)
        progress(finished, len(units), f"element {element} rank {rank}" + (f" failed {failed}" if failed else ""))

    _write_sidecar(exp_dir, element, rank, world, model_alias, loaded, threads, len(todo), failed, execution)
    return EXIT_UNITS_FAILED if failed else EXIT_OK


def _run_isolated(task, ctx: TaskContext, batch: list[Unit]) -> tuple[list[dict], dict[str, str]]:
    """Run a batch; if it raises, run its units one by one so one bad unit fails alone."""
    try:
        return task.run(ctx, batch)
    except Exception as e:  # noqa: BLE001 - any model error must not stop the element
        if len(batch) == 1:
            kind = "" if isinstance(e, UnitFailure) else f"{type(e).__name__}: "
            return [], {batch[0].unit_id: f"{kind}{e}"[:2000] + _where(e)}
    rows, errors = [], {}
    for unit in batch:
        r, err = _run_isolated(task, ctx, [unit])
        rows += r
        errors |= err
    return rows, errors


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
                   n_units: int, n_failed: int, execution: dict) -> None:
    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    import torch
    meta = {
        "element": element, "rank": rank, "world_size": world, "model": alias, "model_path": loaded.path,
        "load_seconds": loaded.load_seconds, "host": socket.gethostname(), "python": platform.python_version(),
        "packages": {n: version(n) for n in ("lmsweep", "torch", "transformers", "deepspeed", "mpi4py",
                                             "pandas", "pyarrow")},
        "torch_threads": torch.get_num_threads(), "threads_requested": threads,
        "accelerator": "cuda" if torch.cuda.is_available() else "cpu", "backend": execution["backend"],
        "units_run": n_units, "units_failed": n_failed, "finished_at": time.time(),
    }
    out = exp_dir / "meta"
    out.mkdir(exist_ok=True)
    tmp = out / f".element-{element:05d}-rank-{rank:04d}.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out / f"element-{element:05d}-rank-{rank:04d}.json")
