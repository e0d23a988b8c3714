"""Compaction: an element's many part files (one per batch and rank) merged into one, atomically.

What a read costs is the number of files (about 2 ms of CPU each), not rows, so a long sweep that wrote
a part per batch is merged, element by element, into one part per (element, task) (and one errors part).
Steps, each safe to be killed after (the kill tests stop at every one, `LMSWEEP_TEST_KILL_AT=compact:N`):

1. the merged rows are written to a temporary dot-file (readers and the worker's sweep ignore or delete it);
2. a manifest `_compact-eNNNNN-<ns>.json` (atomic: temp, fsync, rename) names the merged file and the
   parts it replaces; until the merged file exists it means nothing;
3. the merged file is renamed into place: from now on readers (`integrity.live_parts`) skip the parts
   the manifest names;
4. the replaced parts are deleted (killed halfway: the rest are still skipped);
5. the manifest is deleted.

A merge killed between steps is finished or undone by the next compaction of the element (`recover`).
The caller must hold the element's lock (runner/locks.py): the worker does at the end of its element;
`lmsweep results EXP --compact` takes it without waiting and leaves running elements alone.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from lmsweep.results.integrity import MANIFEST_PREFIX, PARQUET, READ_ERRORS, live_parts, manifests, verify_element_parts
from lmsweep.results.schema import ERROR_SCHEMA, row_key, schema_for
from lmsweep.results.writer import errors_dir, fsync_dir, part_metadata, publish, results_dir

# An element with fewer parts is left as it is after a run: 16 files cost ~30 ms to read, while a merge
# rewrites the element's data. `lmsweep results --compact` merges from 2.
WORKER_MIN_PARTS = 16
# Row groups: big enough that a scan pays per-group costs rarely, small enough that a reader holds one
# group at a time in bounded memory and threads get several per file (benchmarks/results.py measures it).
ROW_GROUP_ROWS = 128 * 1024
ROW_GROUP_BYTES = 64 * 2**20
_ELEMENT = re.compile(r"^part-e(\d{5})-")

Hook = Callable[[], None] | None


@dataclass(frozen=True)
class Compacted:
    element: int
    directory: Path
    parts: int              # files replaced
    rows: int
    bytes: int              # size of the merged file


def element_of(name: str) -> int | None:
    m = _ELEMENT.match(name)
    return int(m.group(1)) if m else None


def element_parts(directory: Path, element: int) -> list[Path]:
    prefix = f"part-e{element:05d}-"
    return [p for p in live_parts(directory) if p.name.startswith(prefix)] if directory.is_dir() else []


def recover(directory: Path, element: int) -> None:
    """Finish (merged file in place) or undo (not yet) a merge of this element that was killed."""
    for path in manifests(directory):
        if not path.name.startswith(f"{MANIFEST_PREFIX}e{element:05d}-"):
            continue
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (directory / m["merged"]).is_file():
            for name in m["replaces"]:
                (directory / name).unlink(missing_ok=True)
            fsync_dir(directory)
        path.unlink(missing_ok=True)
    for tmp in [*directory.glob(f".part-e{element:05d}-c*.tmp"),          # killed before its rename
                *directory.glob(f".{MANIFEST_PREFIX}e{element:05d}-*.tmp")]:
        tmp.unlink(missing_ok=True)


def compact_dir(directory: Path, schema: pa.Schema, keys: list[str] | None, element: int, min_parts: int = 2,
                hook: Hook = None) -> Compacted | None:
    """Merge the element's parts in `directory` into one file, de-duplicated by `keys` (None: keep all)."""
    if not directory.is_dir():
        return None
    recover(directory, element)
    parts = element_parts(directory, element)
    if len(parts) < min_parts:
        return None
    stamp = f"e{element:05d}-{time.time_ns()}-{os.getpid()}"
    merged = directory / f"part-e{element:05d}-c{time.time_ns()}-{os.getpid()}.parquet"
    tmp = directory / f".{merged.name}.tmp"
    try:
        rows = _write_merged(parts, schema, keys, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _step(hook)                                                       # 1: merged bytes in a temp file
    manifest = directory / f"{MANIFEST_PREFIX}{stamp}.json"
    manifest_tmp = directory / f".{manifest.name}.tmp"
    manifest_tmp.write_text(json.dumps({"merged": merged.name, "replaces": [p.name for p in parts]}))
    publish(manifest_tmp, manifest)
    _step(hook)                                                       # 2: manifest, merged not in place
    publish(tmp, merged)
    _step(hook)                                                       # 3: merged in place, old parts too
    for i, path in enumerate(parts):
        path.unlink(missing_ok=True)
        if i == len(parts) // 2:
            _step(hook)                                               # 4: half the old parts deleted
    fsync_dir(directory)
    _step(hook)                                                       # 5: old parts gone, manifest left
    manifest.unlink(missing_ok=True)
    return Compacted(element, directory, len(parts), rows, merged.stat().st_size)


def compact_element(exp_dir: Path, task: str, element: int, min_parts: int = 2, hook: Hook = None) \
        -> list[Compacted]:
    """Merge the element's result parts and its error parts. The caller holds the element's lock."""
    exp_dir = Path(exp_dir)
    out = []
    for directory, schema, keys in ((results_dir(exp_dir, task), schema_for(task), row_key(task)),
                                    (errors_dir(exp_dir), ERROR_SCHEMA, None)):
        try:
            done = compact_dir(directory, schema, keys, element, min_parts, hook)
        except READ_ERRORS:               # a damaged part: quarantine it (its units are rerun), merge the rest
            verify_element_parts(exp_dir, directory, schema, element)
            done = compact_dir(directory, schema, keys, element, min_parts, hook)
        if done is not None:
            out.append(done)
    return out


def _step(hook: Hook) -> None:
    if hook is not None:
        hook()


def _write_merged(parts: list[Path], schema: pa.Schema, keys: list[str] | None, tmp: Path) -> int:
    """Stream the parts' rows into `tmp` in row groups of ROW_GROUP_ROWS / ROW_GROUP_BYTES; memory holds
    one row group, not the element."""
    dataset = ds.dataset([str(p) for p in parts], schema=schema, format=PARQUET)
    batches: Iterable[pa.RecordBatch] = dataset.to_batches()
    if keys and _has_duplicates(dataset, keys):
        batches = _first_copies(batches, keys)
    schema = schema.with_metadata(part_metadata(schema))
    rows = 0
    with pq.ParquetWriter(tmp, schema, write_page_checksum=True) as writer:
        for group in _row_groups(batches):
            writer.write_table(group.replace_schema_metadata(schema.metadata), row_group_size=ROW_GROUP_ROWS)
            rows += group.num_rows
    return rows


def _has_duplicates(dataset: ds.Dataset, keys: list[str]) -> bool:
    table = dataset.to_table(columns=keys)
    return table.group_by(keys).aggregate([]).num_rows < table.num_rows


def _first_copies(batches: Iterable[pa.RecordBatch], keys: list[str]) -> Iterator[pa.RecordBatch]:
    """Drop rows whose key was seen before (a unit written twice by racing runs; the copies are identical)."""
    seen: set[tuple] = set()
    for batch in batches:
        mask = []
        for key in zip(*(batch.column(k).to_pylist() for k in keys)):
            mask.append(key not in seen)
            seen.add(key)
        yield batch.filter(pa.array(mask, pa.bool_()))


def _row_groups(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
    buf: list[pa.RecordBatch] = []
    rows = size = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        buf.append(batch)
        rows += batch.num_rows
        size += batch.nbytes
        if rows >= ROW_GROUP_ROWS or size >= ROW_GROUP_BYTES:
            yield pa.Table.from_batches(buf)
            buf, rows, size = [], 0, 0
    if buf:
        yield pa.Table.from_batches(buf)


# ---- `lmsweep results EXP --compact`: every element not running now -----------------------------------

def try_lock(exp_dir: Path, element: int) -> int | None:
    """The element's lock (runner/locks.py) if no worker holds it now, as an fd to close; else None."""
    from lmsweep.runner.locks import lock_path

    path = lock_path(exp_dir, element)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o664)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def elements_with_parts(exp_dir: Path, task: str) -> list[int]:
    found = set()
    for directory in (results_dir(exp_dir, task), errors_dir(exp_dir)):
        if directory.is_dir():
            found |= {e for p in os.scandir(directory) if (e := element_of(p.name)) is not None}
            found |= {int(p.name[len(MANIFEST_PREFIX) + 1:][:5]) for p in manifests(directory)}
    return sorted(found)


def compact_experiment(exp_dir: Path, hook: Hook = None) -> tuple[list[Compacted], list[int]]:
    """Compact every element whose lock is free; returns what was merged and the elements left alone."""
    from lmsweep.jobs.plan import read_plan

    exp_dir = Path(exp_dir)
    task = read_plan(exp_dir).task_type
    done, running = [], []
    for element in elements_with_parts(exp_dir, task):
        fd = try_lock(exp_dir, element)
        if fd is None:
            running.append(element)
            continue
        try:
            done += compact_element(exp_dir, task, element, hook=hook)
        finally:
            os.close(fd)
    return done, running
