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

A manifest is data on disk, so it is read as untrusted (`read_manifest`): every name in it must be a plain
part name of the manifest's own element, as the writer makes them (no separators, no `..`), naming a
regular file (not a symlink) in the manifest's own directory, and the manifest itself must be a regular
file of our name pattern holding `{"merged": str, "replaces": [str, ...]}`. Anything else (a path out of
the experiment, malformed JSON, wrong types, a symlink) is refused: the manifest is moved to
EXP/quarantine/ with a `.reason` note, reported on one line, and nothing it names is deleted or skipped.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from lmsweep.results.integrity import (
    MANIFEST_PREFIX,
    PARQUET,
    READ_ERRORS,
    live_parts,
    manifests,
    quarantine,
    verify_element_parts,
)
from lmsweep.results.schema import ERROR_SCHEMA, row_key, schema_for
from lmsweep.results.writer import errors_dir, fsync_dir, lock_path, part_metadata, publish, results_dir

# An element with fewer parts is left as it is after a run: 16 files cost ~30 ms to read, while a merge
# rewrites the element's data. `lmsweep results --compact` merges from 2.
WORKER_MIN_PARTS = 16
# Row groups: big enough that a scan pays per-group costs rarely, small enough that a reader holds one
# group at a time in bounded memory and threads get several per file (benchmarks/results.py measures it).
ROW_GROUP_ROWS = 128 * 1024
ROW_GROUP_BYTES = 64 * 2**20
_ELEMENT = re.compile(r"^part-e(\d{5})-")
# What the writers name files: results/writer.part_name (part-e<el>-r<rank>-<ns>-<host>-<pid>-<n>.parquet;
# before the host hash, part-e<el>-r<rank>-<ns>-<pid>.parquet), compact_dir's merged file
# (part-e<el>-c<ns>-<pid>.parquet) and its manifest (_compact-e<el>-<ns>-<pid>.json).
PART_NAME = re.compile(r"^part-e(\d{5})-(?:r\d{4}-\d+-(?:[0-9a-f]{8}-\d+-\d+|\d+)|c\d+-\d+)\.parquet\Z")
MANIFEST_NAME = re.compile(r"^" + re.escape(MANIFEST_PREFIX) + r"e(\d{5})-\d+(?:-\d+)?\.json\Z")
MANIFEST_MAX_BYTES = 64 * 2**20

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


class BadManifest(ValueError):
    """A compaction manifest that is not one our writer made; the message says why (one line)."""


@dataclass(frozen=True)
class Manifest:
    path: Path
    element: int
    merged: str                 # a plain part name in the manifest's directory
    replaces: tuple[str, ...]   # plain part names of the same element, never `merged`

    def merged_in_place(self) -> bool:
        """The merged file exists as a regular file (not a symlink): the merge passed its step 3."""
        return _regular_file(self.path.parent / self.merged)


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _plain_part_name(value, element: int, what: str) -> str:
    if not isinstance(value, str):
        raise BadManifest(f"{what} is {type(value).__name__} {value!r:.80}, not a file name")
    m = PART_NAME.match(value)
    if m is None or "/" in value or "\\" in value or ".." in value or "\0" in value:
        raise BadManifest(f"{what} {value!r:.200} is not a part file name of this directory")
    if int(m.group(1)) != element:
        raise BadManifest(f"{what} {value!r:.200} is a part of element {int(m.group(1))}, not of element {element}")
    return value


def read_manifest(path: Path) -> Manifest:
    """A manifest as our writer makes it, or BadManifest (FileNotFoundError: deleted meanwhile)."""
    path = Path(path)
    named = MANIFEST_NAME.match(path.name)
    if named is None:
        raise BadManifest(f"name {path.name!r} is not {MANIFEST_PREFIX}eNNNNN-<ns>-<pid>.json")
    element = int(named.group(1))
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise BadManifest("not a regular file" + (" (a symlink)" if stat.S_ISLNK(st.st_mode) else ""))
    if st.st_size > MANIFEST_MAX_BYTES:
        raise BadManifest(f"{st.st_size} bytes, more than a manifest ever holds")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MANIFEST_MAX_BYTES + 1)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadManifest(f"not JSON: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(data, dict) or not {"merged", "replaces"} <= data.keys():
        raise BadManifest(f'expected {{"merged": "<part>", "replaces": ["<part>", ...]}}, got {raw[:120]!r}')
    merged = _plain_part_name(data["merged"], element, "merged")
    if not isinstance(data["replaces"], list):
        raise BadManifest(f"replaces is {type(data['replaces']).__name__}, not a list of file names")
    replaces = tuple(_plain_part_name(name, element, "replaces") for name in data["replaces"])
    if merged in replaces:
        raise BadManifest(f"merged {merged!r} is also among the parts it replaces")
    directory = path.parent
    for name in (merged, *replaces):
        target = directory / name
        if target.parent != directory or (target.is_symlink() or (target.exists() and not _regular_file(target))):
            raise BadManifest(f"{name!r} is a symlink or not a regular file")
    return Manifest(path, element, merged, replaces)


def _experiment_of(directory: Path) -> Path:
    """EXP for EXP/results/task=<task>/ and EXP/errors/, the only directories that hold manifests."""
    return directory.parent if directory.name == "errors" else directory.parent.parent


def quarantine_manifest(path: Path, reason: str, exp_dir: Path | None = None) -> Path | None:
    """Move a refused manifest to EXP/quarantine/ and say so on one line (integrity.quarantine)."""
    exp_dir = Path(exp_dir) if exp_dir is not None else _experiment_of(path.parent)
    return quarantine(exp_dir, path, reason, what="compaction manifest", after="nothing it names was deleted",
                      done="refused", cannot="ignoring")


def checked_manifests(directory: Path, exp_dir: Path | None = None) -> list[Manifest]:
    """The directory's manifests that our writer could have made; every other one is quarantined."""
    out = []
    for path in manifests(directory):
        try:
            out.append(read_manifest(path))
        except FileNotFoundError:
            continue                                  # the merge finished and deleted it meanwhile
        except (BadManifest, OSError) as e:
            reason = f"{type(e).__name__}: {e}" if not isinstance(e, BadManifest) else str(e)
            quarantine_manifest(path, reason.replace("\n", " "), exp_dir)
    return out


def recover(directory: Path, element: int, exp_dir: Path | None = None) -> None:
    """Finish (merged file in place) or undo (not yet) a merge of this element that was killed."""
    for m in checked_manifests(directory, exp_dir):
        if m.element != element:
            continue
        if m.merged_in_place():
            for name in m.replaces:
                target = directory / name
                if _regular_file(target):             # never a symlink, never a directory
                    target.unlink(missing_ok=True)
            fsync_dir(directory)
        m.path.unlink(missing_ok=True)
    for tmp in [*directory.glob(f".part-e{element:05d}-c*.tmp"),          # killed before its rename
                *directory.glob(f".{MANIFEST_PREFIX}e{element:05d}-*.tmp")]:
        tmp.unlink(missing_ok=True)


def compact_dir(directory: Path, schema: pa.Schema, keys: list[str] | None, element: int, min_parts: int = 2,
                hook: Hook = None, exp_dir: Path | None = None) -> Compacted | None:
    """Merge the element's parts in `directory` into one file, de-duplicated by `keys` (None: keep all)."""
    if not directory.is_dir():
        return None
    recover(directory, element, exp_dir)
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
            done = compact_dir(directory, schema, keys, element, min_parts, hook, exp_dir)
        except READ_ERRORS:               # a damaged part: quarantine it (its units are rerun), merge the rest
            verify_element_parts(exp_dir, directory, schema, element)
            done = compact_dir(directory, schema, keys, element, min_parts, hook, exp_dir)
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
            found |= {m.element for m in checked_manifests(directory, exp_dir)}
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
