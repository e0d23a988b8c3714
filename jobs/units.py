"""Content-addressed unit ids: a hash of the canonical JSON of everything that decides a unit's output."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def unit_key_json(task: str, prompt: str, decoding: str, seed: int | None) -> str:
    """Canonical JSON of a unit minus its model, assembled from pre-serialised canonical parts
    (keys in sorted order), so a million units do not each pay for json.dumps of nested dicts."""
    return ('{"decoding":' + decoding + ',"prompt":' + prompt + ',"seed":' + ("null" if seed is None else str(seed))
            + ',"task":' + task + "}")


def unit_ids(model: str, task: str, prompt: str, decoding: str, seed: int | None) -> tuple[str, str]:
    """(unit_id, unit_key): the id covers the model; the key is the same unit on any model, for
    comparing two models or backends unit by unit."""
    key_json = unit_key_json(task, prompt, decoding, seed)
    return digest('{"model":' + model + ',"unit":' + key_json + "}"), digest(key_json)
