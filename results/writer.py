"""Atomic Parquet part files: written under a dot-name, then renamed, so readers never see a partial file."""
from __future__ import annotations

import itertools
import os
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmsweep.results.schema import ERROR_SCHEMA, schema_for


def results_dir(exp_dir: Path, task: str) -> Path:
    return exp_dir / "results" / f"task={task}"


def errors_dir(exp_dir: Path) -> Path:
    return exp_dir / "errors"


def lock_path(exp_dir: Path, element: int) -> Path:
    """The element's lock file: a worker holds it while it runs the element (runner/locks.py), and
    compaction takes it to leave a running element alone (results/compact.py)."""
    return Path(exp_dir) / "locks" / f"element-{element:05d}.lock"


COLUMNS_KEY = b"lmsweep.columns"
_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_SEQ = itertools.count()


def part_name(element: int, rank: int) -> str:
    """Unique per writer and call, across processes and hosts: element, rank, a nanosecond clock, a
    hash of the host name, the pid and a per-process counter."""
    return f"part-e{element:05d}-r{rank:04d}-{time.time_ns()}-{_HOST}-{os.getpid()}-{next(_SEQ)}.parquet"


def write_atomic(table: pa.Table, directory: Path, name: str,
                 before_rename: Callable[[], None] | None = None) -> Path:
    """Write `name` so that it only ever exists complete. Page checksums let readers detect bit rot.
    `before_rename` runs between the temp file and the rename (the kill tests' `write` point)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    tmp = directory / f".{name}.tmp"
    # The footer has no checksum of its own: record the column names a second time, in its key-value
    # metadata, so a reader can tell a damaged schema (a column silently turned into nulls) from a good one.
    pq.write_table(table.replace_schema_metadata(part_metadata(table.schema)), tmp, write_page_checksum=True)
    return publish(tmp, final, before_rename)


def part_metadata(schema: pa.Schema) -> dict:
    return {**(schema.metadata or {}), COLUMNS_KEY: ",".join(schema.names).encode()}


def publish(tmp: Path, final: Path, before_rename: Callable[[], None] | None = None) -> Path:
    """fsync `tmp`, rename it to `final`, fsync the directory: `final` only ever names a complete file."""
    with open(tmp, "rb") as f:       # the bytes must be on disk before the name says "done"
        os.fsync(f.fileno())
    if before_rename is not None:
        before_rename()
    os.replace(tmp, final)
    fsync_dir(final.parent)          # and the rename itself must survive a node crash
    return final


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:                  # some network filesystems refuse fsync on a directory
        pass


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError inside names `path` when it names no file itself: a full disk fails a write() or close(),
    whose error carries no file name, so the `lmsweep` command could not say where (lmsweep.cli)."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


def write_text_atomic(path: Path, text: str) -> Path:
    """`text` into `path` whole or not at all (a temp dot-file, then a rename; the temp file is removed if
    the write fails). An OSError names `path` (a full disk's write error names no file; see `naming`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if e.errno is None or e.filename not in (None, str(tmp)):
            raise
        # the file the user asked for, not our temporary name for it
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    return path


class UnknownColumn(ValueError):
    """A row holds a column its task's schema lacks: writing it would silently drop that data."""


class PartWriter:
    """One writer per (element, rank); each `write` call makes one part file.

    A row may leave columns out (they are null) but may not add any: `pa.Table.from_pylist` would drop an
    undeclared column without a word, so `write` refuses the whole batch instead (the task's `columns`
    or results.schema.COMMON must declare it)."""

    def __init__(self, exp_dir: Path, task: str, element: int, rank: int,
                 before_rename: Callable[[], None] | None = None):
        self.exp_dir, self.task, self.element, self.rank = exp_dir, task, element, rank
        self.schema = schema_for(task)
        self.names = frozenset(self.schema.names)
        self.before_rename = before_rename

    def write(self, rows: list[dict]) -> Path | None:
        if not rows:
            return None
        unknown = set().union(*map(dict.keys, rows)) - self.names
        if unknown:
            raise UnknownColumn(f"task {self.task!r} returned column {sorted(unknown)[0]!r}, which its schema lacks "
                                f"(declare it in the task's `columns`, runner/tasks/{self.task}); nothing written")
        table = pa.Table.from_pylist(rows, schema=self.schema)
        return write_atomic(table, results_dir(self.exp_dir, self.task), part_name(self.element, self.rank),
                            self.before_rename)

    def write_errors(self, rows: list[dict]) -> Path | None:
        if not rows:
            return None
        table = pa.Table.from_pylist(rows, schema=ERROR_SCHEMA)
        return write_atomic(table, errors_dir(self.exp_dir), part_name(self.element, self.rank))
