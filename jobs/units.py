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


def unit_ids_block(model: str, task: str, prompts: list[bytes], decoding: str, seed: int | None
                   ) -> tuple[list[str], list[str]]:
    """`unit_ids` for one (model, task, decoding, seed) and many prompts (UTF-8 canonical JSON), the same
    ids byte for byte. The shared prefix of each hash input is hashed once and its state copied, so a
    million-unit plan spends ~1.5 µs per unit instead of ~3 µs rebuilding and encoding long strings."""
    key_head = hashlib.sha256(('{"decoding":' + decoding + ',"prompt":').encode())
    id_head = hashlib.sha256(('{"model":' + model + ',"unit":{"decoding":' + decoding + ',"prompt":').encode())
    tail = (',"seed":' + ("null" if seed is None else str(seed)) + ',"task":' + task + "}").encode()
    id_tail = tail + b"}"
    key_copy, id_copy = key_head.copy, id_head.copy
    ids, keys = [], []
    for prompt in prompts:
        h = key_copy()
        h.update(prompt)
        h.update(tail)
        keys.append(h.hexdigest()[:20])
        h = id_copy()
        h.update(prompt)
        h.update(id_tail)
        ids.append(h.hexdigest()[:20])
    return ids, keys
