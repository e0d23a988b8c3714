"""Cheap checks of a model's files on disk, without loading them: config.json is a JSON object, and each
safetensors file is whole (its header parses and its size is what the header says).

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON naming each tensor's dtype,
shape and `data_offsets` (begin, end) in the data that follows, then the data. So a file cut short (a copy
interrupted, a disk that filled) is found by reading its first 8 + N bytes and its size: no tensor is read.

Used by `validate` (jobs: a local or Hub-cache model directory) and by the model cache (runner: a converted
packaged model is checked before use and rebuilt when damaged). Imports nothing of runner.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from lmsweep.jobs.errors import SpecError

MAX_HEADER_BYTES = 100_000_000        # what the safetensors library itself accepts
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
              type(None): "null"}


def read_config(path: Path) -> dict:
    """config.json as a dict, or a SpecError (message only; the caller adds file/line/field) naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror}") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{path} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno}); truncated or "
                        "damaged?") from None
    if not isinstance(cfg, dict):
        raise SpecError(f"{path} holds {JSON_TYPES.get(type(cfg), 'a JSON value')}, not a JSON object; a model's "
                        "config.json is a mapping such as {\"model_type\": \"llama\", ...}")
    return cfg


def safetensors_problem(path: Path) -> str | None:
    """None when `path` is a whole safetensors file; otherwise one line naming it and what is wrong
    (for a truncated file, its size and the size its header says)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return f"{path} is not a regular file"
        size = st.st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return (f"{path} is {size:,} bytes, too short for a safetensors file (an 8-byte header length "
                        "comes first): truncated or not safetensors")
            n = int.from_bytes(head, "little")
            if n < 2 or n > MAX_HEADER_BYTES:
                return f"{path} is not a safetensors file (its header length reads {n:,} bytes)"
            if n > size - 8:
                return (f"{path} is {size:,} bytes, shorter than its own safetensors header ({8 + n:,} bytes): "
                        "truncated")
            raw = f.read(n)
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError:                           # JSONDecodeError, UnicodeDecodeError
        return f"{path}: its safetensors header is not valid JSON (damaged, or not safetensors)"
    if not isinstance(header, dict):
        return f"{path}: its safetensors header is not a JSON object (damaged, or not safetensors)"
    spans = []
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        shape = tensor.get("shape") if isinstance(tensor, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_uint(x) for x in offsets)
                and offsets[0] <= offsets[1] and isinstance(shape, list) and all(_uint(x) for x in shape)):
            return f"{path}: tensor {name!r} has no valid shape and data_offsets in the safetensors header"
        width = DTYPE_BYTES.get(tensor.get("dtype"))
        count = 1
        for dim in shape:
            count *= dim
        if width is not None and offsets[1] - offsets[0] != count * width:
            return (f"{path}: tensor {name!r} ({tensor['dtype']} {shape}) spans {offsets[1] - offsets[0]:,} bytes "
                    f"in the safetensors header, not {count * width:,}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            return f"{path}: tensor {name!r} starts at byte {begin:,} of the data, not {end:,} (damaged header)"
        end = stop
    expected = 8 + n + end
    if size < expected:
        return f"{path} is {size:,} bytes but its safetensors header says {expected:,}: truncated"
    if size > expected:
        return (f"{path} is {size:,} bytes but its safetensors header says {expected:,}: "
                f"{size - expected:,} bytes too many (damaged)")
    return None


def weights_problem(directory: Path) -> str | None:
    """The first problem with a model directory's safetensors weights (a shard its index names but that is
    missing; a file whose header or size is wrong), or None."""
    for index in sorted(directory.glob("*.safetensors.index.json")):
        try:
            shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index} is not a safetensors index (a JSON object with a weight_map)"
        for shard in sorted({s for s in shards if isinstance(s, str)}):
            if not (directory / shard).is_file():
                return f"{index} names the shard {shard}, which is missing from {directory}"
    for file in sorted(directory.glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem:
            return problem
    return None


def _uint(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
