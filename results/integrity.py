"""Read part directories so that a damaged part file is never taken for results.

Our writer never leaves a partial file under a final name (temp dot-file, fsync, rename), but a
results tree can still hold one: a copy or rsync cut short, a filesystem that lost data in a crash,
a file dropped there by hand, bit rot. Such a file would either make every read fail or, worse, count
its units as done. So reads go through `read_parts`: the fast path is one pyarrow dataset scan (with
Parquet page checksums verified); if it raises, each file is checked on its own, the bad ones are
moved to EXP/quarantine/ (same relative path, plus a `.reason` note) and the scan is retried without
them. Their units are then missing, so the next run redoes them. If the tree is read-only the bad
files are skipped, with a warning, instead of moved.

Compaction (results/compact.py) merges an element's parts into one file and leaves, while it deletes the
old ones, a manifest `_compact-*.json` naming the merged file and the parts it replaces: once the merged
file exists, `live_parts` drops the parts its manifest names, so a tree caught at any moment of a
compaction reads every row once.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from lmsweep.results.writer import COLUMNS_KEY

# Dot- and underscore-prefixed names are in-flight temp files (or metadata); pyarrow skips them too.
IGNORED_PREFIXES = (".", "_")
PARQUET = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
    page_checksum_verification=True))
READ_ERRORS = (pa.ArrowException, OSError, ValueError)


MANIFEST_PREFIX = "_compact-"


# JSON files beside the parts are records, never rows: a worker's element crash record in errors/
# (errors/element-NNNNN.json, runner/worker.py); compaction manifests start with "_" anyway.
RECORD_SUFFIXES = (".json",)


def part_files(directory: Path) -> list[Path]:
    """Every file a dataset scan of `directory` would read."""
    out = []
    for root, dirs, files in os.walk(directory):
        for d in dirs:
            if d.startswith(PART_PREFIX):
                _warn_once(Path(root) / d, "skipped a directory where a part file should be (it holds no rows; "
                                           "move it aside)")
        dirs[:] = sorted(d for d in dirs if not d.startswith(IGNORED_PREFIXES + (PART_PREFIX,)))
        out += [Path(root) / f for f in sorted(files)
                if not f.startswith(IGNORED_PREFIXES) and not f.endswith(RECORD_SUFFIXES)]
    return out


PART_PREFIX = "part-"
_WARNED: set[str] = set()


def _warn_once(path: Path, what: str) -> None:
    """A warning on stderr, once per path and process (a read lists a directory several times)."""
    if str(path) not in _WARNED:
        _WARNED.add(str(path))
        print(f"warning: {what}: {path}", file=sys.stderr, flush=True)


def check_part(path: Path, schema: pa.Schema) -> str | None:
    """Why `path` cannot be read as a part with `schema`, or None if it reads in full."""
    try:
        written = pq.read_schema(path)
        table = ds.dataset(path, schema=schema, format=PARQUET).to_table()
    except READ_ERRORS as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
    recorded = (written.metadata or {}).get(COLUMNS_KEY)
    if recorded is not None and recorded.decode(errors="replace").split(",") != written.names:
        return "damaged footer: its column names differ from the ones the writer recorded"
    if "unit_id" in schema.names and table.num_rows and table.column("unit_id").null_count:
        return "rows without a unit_id (not a part file of this task)"
    return None


def quarantine(exp_dir: Path, path: Path, reason: str, *, what: str = "unreadable part",
               after: str = "its units will be rerun", done: str = "quarantined",
               cannot: str = "skipping") -> Path | None:
    """Move a bad file to EXP/quarantine/<its path under EXP> beside a `.reason` note, and say so on one line;
    a symlink is moved as a link, never followed. None if it cannot be moved (a read-only tree: then the
    line says it is `cannot`-ed in place)."""
    exp_dir = Path(exp_dir)
    try:
        rel = path.parent.resolve().relative_to(exp_dir.resolve()) / path.name
    except ValueError:
        rel = Path(path.name)
    dest = exp_dir / "quarantine" / rel
    if dest.exists() or dest.is_symlink():
        dest = dest.with_name(f"{dest.name}.{time.time_ns()}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    except FileNotFoundError:
        return None                       # another process moved or deleted it first
    except OSError as e:
        print(f"warning: {cannot} {what} {path} ({reason}); cannot move it to quarantine: "
              f"{e.strerror}", file=sys.stderr, flush=True)
        return None
    dest.with_name(dest.name + ".reason").write_text(f"{path}\n{reason}\n")
    print(f"warning: {done} {what} {path} → {dest} ({reason}); {after}", file=sys.stderr, flush=True)
    return dest


def manifests(directory: Path) -> list[Path]:
    return sorted(directory.glob(MANIFEST_PREFIX + "*.json"))


def superseded(directory: Path) -> set[str]:
    """Names of parts a finished merge replaced (its merged file exists) but that are not deleted yet.
    A manifest our writer could not have made (a path out of the directory, malformed) is quarantined."""
    from lmsweep.results.compact import checked_manifests  # lazily: compact imports this module

    out: set[str] = set()
    for m in checked_manifests(directory):
        if m.merged_in_place():
            out.update(m.replaces)
    return out


def live_parts(directory: Path) -> list[Path]:
    """The part files that hold the rows: every part, less those a finished merge replaced."""
    files = part_files(directory)
    gone = superseded(directory)
    return [p for p in files if p.name not in gone] if gone else files


def read_parts(exp_dir: Path, directory: Path, schema: pa.Schema, columns: list[str] | None = None,
               filter: pc.Expression | None = None) -> pa.Table | None:
    """All rows of a part directory (None if it does not exist), never from a damaged part."""
    if not directory.is_dir():
        return None
    for _ in range(3):                    # a compaction may delete a part between listing and reading it
        files = [str(p) for p in live_parts(directory)]
        try:
            return ds.dataset(files, schema=schema, format=PARQUET).to_table(columns=columns, filter=filter)
        except FileNotFoundError:
            continue
        except READ_ERRORS:
            break
    good = []
    for path in live_parts(directory):
        reason = check_part(path, schema)
        if reason is None:
            good.append(str(path))
        elif path.exists():
            quarantine(exp_dir, path, reason)
    return ds.dataset(good, schema=schema, format=PARQUET).to_table(columns=columns, filter=filter)


def verify_element_parts(exp_dir: Path, directory: Path, schema: pa.Schema, element: int) -> list[Path]:
    """Read an element's own parts in full (every page checksum) and quarantine the bad ones.

    Deciding what is done reads only the unit_id column of every part, which cannot see damage in
    the other columns; a worker therefore verifies its element's parts completely first."""
    if not directory.is_dir():
        return []
    moved = []
    for path in sorted(directory.glob(f"part-e{element:05d}-*")):
        reason = check_part(path, schema)
        if reason is not None and quarantine(exp_dir, path, reason) is not None:
            moved.append(path)
    return moved


def sweep_temp_files(exp_dir: Path, element: int) -> list[Path]:
    """Delete an element's leftover temporary parts. Only call while holding the element's lock."""
    removed = []
    prefix = f".part-e{element:05d}-"
    for directory in [*sorted((exp_dir / "results").glob("task=*")), exp_dir / "errors"]:
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if path.name.startswith(prefix) and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
