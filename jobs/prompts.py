"""Prompt sets from inline lists, files (YAML, JSONL, CSV, Parquet) or Hugging Face datasets
(jobs/prompt_sources.py) into Prompt records."""
from __future__ import annotations

import csv
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lmsweep.jobs.errors import SpecError, did_you_mean
from lmsweep.jobs.prompt_sources import read_dataset
from lmsweep.jobs.spec import PromptItem, PromptSetSpec
from lmsweep.jobs.yamlio import line_of, load_yaml

MAX_PROMPT_CHARS = 1_000_000
KNOWN = ("id", "text", "label")


@dataclass(frozen=True)
class Prompt:
    set: str
    id: str
    text: str
    label: str | None
    meta: str          # JSON object of extra columns, "{}" when none
    system_prompt: str | None
    chat_template: bool


def load_prompt_set(ps: PromptSetSpec, index: int, spec_file: str, spec_dir: Path,
                    lines: dict) -> list[Prompt]:
    """Read one prompt set; errors point at the spec line (inline) or the file row (files)."""
    if ps.items is not None:
        rows = [(line_of(lines, ("prompts", index, "items", i)),
                 {"id": f"p{i}", "text": it} if isinstance(it, str) else _inline_row(it))
                for i, it in enumerate(ps.items)]
        return _to_prompts(ps, rows, spec_file, lambda i: f"prompts[{index}].items[{i}]")
    if ps.dataset is not None:
        def error(message: str, key: str) -> SpecError:
            return SpecError(message, file=spec_file, line=line_of(lines, ("prompts", index, "dataset", key)),
                             field=f"prompts[{index}].dataset.{key}")
        got = read_dataset(ps.dataset, spec_dir, error)
        if not got.rows:
            raise error(f"prompt set {ps.name!r} is empty: {got.shown} has no rows", "path")
        return _to_prompts(ps, [(None, row) for row in got.rows], got.shown, lambda i: f"row {got.origins[i] + 1}",
                           default_ids=[f"p{o}" for o in got.origins])
    path = Path(ps.file)
    if not path.is_absolute():
        path = spec_dir / path
    problem = "prompt file not found: the path is empty" if not ps.file.strip() else _not_a_file(path)
    if problem:
        raise SpecError(problem, file=spec_file, line=line_of(lines, ("prompts", index, "file")),
                        field=f"prompts[{index}].file")
    rows = _read_rows(path)
    return _to_prompts(ps, rows, str(path), lambda i: f"row {i + 1}")


FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as a prompt file, or None. Decided by stat alone: a FIFO is never opened
    (opening one blocks until a writer comes), nor a device (/dev/zero never ends)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"prompt file not found: {path}"
    except OSError as e:      # a broken symlink loop, a path through a file, no permission
        return f"cannot read prompt file {path}: {e.strerror}"
    if stat.S_ISREG(mode):
        return None
    what = next((name for test, name in FILE_KINDS if test(mode)), "not a regular file")
    return f"prompt file {path} is {what}, not a regular file"


def _inline_row(item: PromptItem) -> dict[str, Any]:
    """An inline item as a file row: its `meta:` mapping's keys become the row's free columns (they were
    stored nested, as `{"meta": {...}}`, unlike a file's extra columns)."""
    row = item.model_dump(exclude={"meta"})
    return {**{k: v for k, v in item.meta.items() if k not in KNOWN}, **row}


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    shown = str(path)
    if suffix in (".yaml", ".yml"):
        data, lines = load_yaml(path)
        if isinstance(data, dict) and "items" in data:
            data = data["items"]
        if not isinstance(data, list):
            raise SpecError("expected a list of prompts (or a mapping with `items:`)", file=shown)
        out = []
        for i, item in enumerate(data):
            row = {"id": f"p{i}", "text": item} if isinstance(item, str) else item
            if not isinstance(row, dict):
                raise SpecError(f"item {i}: expected a string or a mapping with id/text",
                                file=shown, line=line_of(lines, ("items", i)) or line_of(lines, (i,)))
            out.append((line_of(lines, ("items", i)) or line_of(lines, (i,)), row))
        return out
    if suffix in (".jsonl", ".ndjson"):
        out = []
        with path.open(encoding="utf-8-sig", errors="strict") as f:    # -sig: a leading BOM is dropped
            try:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise SpecError(f"invalid JSON: {e.msg}", file=shown, line=n) from None
                    if not isinstance(row, dict):
                        raise SpecError("each line must be a JSON object with id and text", file=shown, line=n)
                    out.append((n, row))
            except UnicodeDecodeError:
                raise SpecError("not UTF-8 text", file=shown) from None
        return out
    if suffix == ".csv":
        try:
            # -sig: a leading BOM (Excel writes one) is dropped, or it would glue itself to the first
            # column's name and turn `id` into metadata.
            with path.open(encoding="utf-8-sig", newline="") as f:
                return _csv_rows(csv.reader(f), shown)
        except UnicodeDecodeError:
            raise SpecError("not UTF-8 text", file=shown) from None
        except csv.Error as e:
            raise SpecError(f"malformed CSV: {e}", file=shown) from None
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise SpecError(f"unreadable Parquet: {str(e).splitlines()[0]}", file=shown) from None
        return [(None, row) for row in table.to_pylist()]
    raise SpecError(f"unsupported prompt file type {suffix!r}; expected .yaml, .jsonl, .csv or .parquet",
                    file=shown)


def _csv_rows(reader, shown: str) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) per record; a record with more or fewer fields than the header is an error at its
    line (a field quoted over several lines counts from the line it starts on; blank lines are skipped,
    as DictReader does)."""
    header = next(reader, None)
    if not header:
        raise SpecError("empty CSV (no header row)", file=shown)
    out = []
    end = reader.line_num
    for record in reader:
        line, end = end + 1, reader.line_num
        if not record:
            continue
        if len(record) != len(header):
            raise SpecError(f"row {len(out) + 1} has {_fields(len(record))}, the header has {len(header)}",
                            file=shown, line=line)
        out.append((line, dict(zip(header, record))))
    return out


def _fields(n: int) -> str:
    return f"{n} field" if n == 1 else f"{n} fields"


def _unpaired_surrogate(value: str | None) -> str | None:
    """YAML and JSON accept "\\ud83d" escapes but not the pairs JSON uses for emoji: such text cannot be
    stored as UTF-8."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"\\u{ord(value[e.start]):04x}"
    return None


def _renamed(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """A file row under lmsweep's names: the mapped columns become id/text/label; a column that has one
    of those names without being mapped to it is kept as metadata named `file_<name>`."""
    if all(columns[k] == k for k in KNOWN):
        return dict(row)
    out = {key: row[column] for key, column in columns.items() if column in row}
    for column, value in row.items():
        if column in columns.values():
            continue
        out[f"file_{column}" if column in KNOWN else column] = value
    return out


def _to_prompts(ps: PromptSetSpec, rows: list[tuple[int | None, dict]], file: str,
                field_for, default_ids: list[str] | None = None) -> list[Prompt]:
    if not rows:
        raise SpecError(f"prompt set {ps.name!r} is empty", file=file)
    prompts: list[Prompt] = []
    seen: dict[str, str] = {}
    columns = ps.columns()
    for i, (line, row) in enumerate(rows):
        field = field_for(i)
        text = columns["text"]
        if text not in row:
            found = ", ".join(map(str, row)) or "none"
            mapped = text != "text"
            hint = ("" if mapped else
                    "; to read another column as the text, set `text_column: <column>` in its prompt set")
            raise SpecError(f"missing `{text}`{' (the text_column)' if mapped else ''}"
                            f"{did_you_mean(text, map(str, row))}; this row has the columns: {found}{hint}",
                            file=file, line=line, field=field)
        for key in ("id", "label"):
            if columns[key] != key and columns[key] not in row:
                close = did_you_mean(columns[key], map(str, row))
                raise SpecError(f"missing `{columns[key]}` (the {key}_column){close}; this row has the columns: "
                                f"{', '.join(map(str, row))}",
                                file=file, line=line, field=field)
        row = _renamed(row, columns)
        if row.get("id") is None:
            row["id"] = default_ids[i] if default_ids else f"p{i}"
        if isinstance(row["id"], int) and not isinstance(row["id"], bool):
            row["id"] = str(row["id"])
        known = {k: row[k] for k in KNOWN if row.get(k) is not None}
        try:
            item = PromptItem.model_validate(known | {"meta": {k: v for k, v in row.items() if k not in KNOWN}})
        except ValidationError as e:
            first = e.errors()[0]
            name = ".".join(str(x) for x in first["loc"])
            raise SpecError(f"{name}: {first['msg']}, got {first.get('input')!r}"[:300],
                            file=file, line=line, field=field) from None
        if not item.text.strip():
            raise SpecError("empty prompt text", file=file, line=line, field=f"{field}.text")
        if "\x00" in item.text:
            raise SpecError("prompt text contains a NUL character", file=file, line=line, field=f"{field}.text")
        for name, value in (("text", item.text), ("id", item.id), ("label", item.label)):
            bad = _unpaired_surrogate(value)
            if bad:
                raise SpecError(f"{name} contains an unpaired UTF-16 surrogate {bad} (not valid Unicode text; "
                                "write the character itself, or \\U0001F600 style escapes in YAML)",
                                file=file, line=line, field=f"{field}.{name}")
        if len(item.text) > MAX_PROMPT_CHARS:
            raise SpecError(f"prompt is {len(item.text)} characters; the limit is {MAX_PROMPT_CHARS}",
                            file=file, line=line, field=f"{field}.text")
        if item.id in seen:
            raise SpecError(f"duplicate prompt id {item.id!r} (first at {seen[item.id]})",
                            file=file, line=line, field=f"{field}.id")
        seen[item.id] = field
        prompts.append(Prompt(set=ps.name, id=item.id, text=item.text, label=item.label,
                              meta=json.dumps(item.meta, sort_keys=True, default=str),
                              system_prompt=ps.system_prompt, chat_template=ps.chat_template))
    return prompts
