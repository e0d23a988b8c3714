"""How a worker runs its batches: grouped so padding stays small, a failing unit failing alone, and
with batch_size auto, out of memory halving the batch size instead of failing the batch."""
from __future__ import annotations

import traceback
from collections import deque
from itertools import groupby

from lmsweep.runner.units import TaskContext, Unit, UnitFailure


class OutOfMemory(Exception):
    """A batch did not fit: the worker halves the batch size and runs the batch again in pieces."""


def make_batches(task, units: list[Unit], batch_size: int) -> list[list[Unit]]:
    """Group by task variant and the task's batch key, then by prompt length so padding stays small. Units
    that share a context (`Task.context_key`: the answers to one question) are kept together, and a batch
    ends early rather than split them; a run of them longer than a batch is split into full batches."""
    def key(u: Unit) -> tuple:
        return (u.variant, task.batch_key(u))

    def shared(u: Unit) -> tuple:
        context = task.context_key(u)
        return (context is not None, repr(context) if context is not None else u.unit_id)

    keyed = sorted(units, key=lambda u: (key(u), len(u.prompt["prompt_text"]), shared(u), u.unit_id))
    batches = []
    for _, group in groupby(keyed, key=key):
        batch: list[Unit] = []
        for _, run in groupby(group, key=shared):
            run = list(run)
            if len(batch) + len(run) > batch_size and batch:
                batches.append(batch)
                batch = []
            while len(run) > batch_size:
                batches.append(run[:batch_size])
                run = run[batch_size:]
            batch += run
        if batch:
            batches.append(batch)
    return batches


class BatchQueue:
    """The batches left to run, in order; out of memory on one re-batches it and the rest at half its size."""

    def __init__(self, task, units: list[Unit], batch_size: int):
        self._task = task
        self._batches = deque(make_batches(task, units, batch_size))

    def __bool__(self) -> bool:
        return bool(self._batches)

    def next(self) -> list[Unit]:
        return self._batches.popleft()

    def halve(self, failed: list[Unit]) -> int:
        """Put `failed` back with the rest, re-batched at half its size; return the new size."""
        size = max(1, len(failed) // 2)
        self._batches = deque(make_batches(self._task, [u for b in (failed, *self._batches) for u in b], size))
        return size


def run_isolated(task, ctx: TaskContext, batch: list[Unit], oom_raises: bool = False
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
        r, err = run_isolated(task, ctx, [unit])
        rows += r
        errors |= err
    return rows, errors


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def release_memory() -> None:
    import gc

    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _where(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    return f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
