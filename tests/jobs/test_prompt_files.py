"""Prompt sets load the same from YAML, JSONL, CSV and Parquet, with labels and metadata."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from lmsweep.jobs.plan import load_prompts
from lmsweep.jobs.spec import load_spec

ROWS = [{"id": "a", "text": "The game was great", "label": "positive", "source": "r1"},
        {"id": "b", "text": "Terrible controls", "label": "negative", "source": "r2"}]


def write(tmp_path, fmt):
    path = tmp_path / f"prompts.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "csv":
        pd.DataFrame(ROWS).to_csv(path, index=False)
    elif fmt == "parquet":
        pd.DataFrame(ROWS).to_parquet(path)
    else:
        path.write_text("items:\n" + "".join(
            f"  - {{id: {r['id']}, text: \"{r['text']}\", label: {r['label']}, source: {r['source']}}}\n"
            for r in ROWS))
    return path


@pytest.mark.parametrize("fmt", ["yaml", "jsonl", "csv", "parquet"])
def test_formats_agree(tmp_path, fmt):
    path = write(tmp_path, fmt)
    (tmp_path / "spec.yaml").write_text(
        f"name: p\nmodels: [package:smollm2-135m-instruct]\nprompts:\n  - name: reviews\n    file: {path.name}\n"
        "task: generate\n")
    prompts = load_prompts(load_spec(tmp_path / "spec.yaml"))
    assert [(p.id, p.text, p.label) for p in prompts] == [(r["id"], r["text"], r["label"]) for r in ROWS]
    assert [json.loads(p.meta) for p in prompts] == [{"source": "r1"}, {"source": "r2"}]


def test_unicode_prompts_survive(tmp_path):
    (tmp_path / "spec.yaml").write_text(
        "name: u\nmodels: [package:smollm2-135m-instruct]\ntask: generate\n"
        "prompts: [\"مرحبا بالعالم\", \"emoji 🎉 ok\", \"naïve café\"]\n")
    prompts = load_prompts(load_spec(tmp_path / "spec.yaml"))
    assert [p.text for p in prompts] == ["مرحبا بالعالم", "emoji 🎉 ok", "naïve café"]
