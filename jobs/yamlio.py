"""Safe YAML loading that remembers the line of every key, so errors can point at it."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmsweep.jobs.errors import SpecError

MAX_NODES = 200_000      # a spec is small; more nodes means an alias bomb or a mistake
MAX_BYTES = 5_000_000
MAX_DEPTH = 64           # nesting; a spec needs about 6 (PyYAML itself recurses, so deeper input crashes it)

Path_ = tuple[Any, ...]


def load_yaml(path: Path) -> tuple[Any, dict[Path_, int]]:
    """Return (data, lines) where lines maps a key path like ('decoding', 'top_p') to its 1-based line."""
    shown = str(path)
    try:
        with path.open("rb") as f:       # at most one byte past the limit: /dev/zero is refused, not read
            raw = f.read(MAX_BYTES + 1)
            size = os.fstat(f.fileno()).st_size      # 0 for a pipe or a device
    except FileNotFoundError:
        raise SpecError("file not found", file=shown) from None
    except OSError as e:
        raise SpecError(f"cannot read: {e.strerror}", file=shown) from None
    if len(raw) > MAX_BYTES:
        raise SpecError(f"file is {f'{size} bytes' if size > MAX_BYTES else f'over {MAX_BYTES} bytes'}; a spec "
                        f"must be under {MAX_BYTES}", file=shown)
    try:
        text = raw.decode("utf-8-sig")    # -sig: a leading byte-order mark (some Windows editors) is dropped
    except UnicodeDecodeError as e:
        raise SpecError(f"not UTF-8 text (byte {e.start})", file=shown) from None
    return parse_yaml(text, shown)


def parse_yaml(text: str, shown: str) -> tuple[Any, dict[Path_, int]]:
    _check_depth(text, shown)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise SpecError(f"YAML nested more than {MAX_DEPTH} levels deep", file=shown) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(f"malformed YAML: {problem}", file=shown,
                        line=mark.line + 1 if mark else None) from None
    if node is None:
        raise SpecError("empty file", file=shown)
    lines: dict[Path_, int] = {}
    _walk(node, (), lines, [0], shown, ())
    loader = yaml.SafeLoader("")
    try:
        data = loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise SpecError(f"malformed YAML: {getattr(e, 'problem', e)}", file=shown,
                        line=mark.line + 1 if mark else None) from None
    finally:
        loader.dispose()
    return data, lines


def _check_depth(text: str, shown: str) -> None:
    """Refuse deep nesting before PyYAML's recursive composer overflows the stack on it."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise SpecError(f"YAML nested more than {MAX_DEPTH} levels deep", file=shown,
                                    line=event.start_mark.line + 1)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        pass                     # compose reports syntax errors, with their line


def _walk(node: yaml.Node, path: Path_, lines: dict, count: list[int], shown: str, above: tuple) -> None:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise SpecError(f"more than {MAX_NODES} YAML nodes after expanding aliases (an alias bomb?)",
                        file=shown, line=node.start_mark.line + 1)
    if any(node is n for n in above):
        raise SpecError("recursive alias (a node that contains itself)", file=shown,
                        line=node.start_mark.line + 1, field=dotted(path) or None)
    lines.setdefault(path, node.start_mark.line + 1)
    above = above + (node,)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(count[0])
            if isinstance(key_node, yaml.ScalarNode) and key != "<<":
                if key in seen:
                    raise SpecError(f"duplicate key {key!r} (first on line {seen[key]}); YAML would silently "
                                    "keep only the last", file=shown, line=key_node.start_mark.line + 1,
                                    field=dotted(path + (key,)))
                seen[key] = key_node.start_mark.line + 1
            lines.setdefault(path + (key,), key_node.start_mark.line + 1)
            _walk(value_node, path + (key,), lines, count, shown, above)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, path + (i,), lines, count, shown, above)


def line_of(lines: dict[Path_, int], path: Path_) -> int | None:
    """The line of the longest prefix of `path` that the file has."""
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class SpecSource:
    """Where a spec came from: its file, the directory relative paths resolve against, and the line of
    every key (so an error points at `spec.yaml:14`). A spec built in memory has no file and no lines."""

    file: str | None = None
    directory: Path = field(default_factory=Path.cwd)
    lines: dict = field(default_factory=dict)

    def line(self, path: Path_) -> int | None:
        return line_of(self.lines, path)

    def error(self, message: str, field: str, path: Path_ | None = None) -> SpecError:
        """A SpecError at the line of `path` (default: the dotted `field` split on dots)."""
        return SpecError(message, file=self.file, line=self.line(path or tuple(field.split("."))), field=field)
