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


OTHER_NAMES = [{"rid": 7, "review": "The game was great", "sentiment": "positive", "text": "a title"},
               {"rid": 8, "review": "Terrible controls", "sentiment": "negative", "text": "another"}]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_prompt_set_names_the_columns_that_hold_id_text_and_label(tmp_path, fmt):
    """`text_column`/`id_column`/`label_column` read files whose columns have other names (it used to be
    an unknown key); a `text` column that is not the mapped one stays as metadata `file_text`."""
    path = tmp_path / f"prompts.{fmt}"
    frame = pd.DataFrame(OTHER_NAMES)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in OTHER_NAMES))
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    (tmp_path / "spec.yaml").write_text(
        f"name: p\nmodels: [package:smollm2-135m-instruct]\nprompts:\n  - name: reviews\n    file: {path.name}\n"
        "    text_column: review\n    id_column: rid\n    label_column: sentiment\ntask: generate\n")
    prompts = load_prompts(load_spec(tmp_path / "spec.yaml"))
    assert [(p.id, p.text, p.label) for p in prompts] == [("7", "The game was great", "positive"),
                                                          ("8", "Terrible controls", "negative")]
    assert [json.loads(p.meta) for p in prompts] == [{"file_text": "a title"}, {"file_text": "another"}]


def test_a_missing_mapped_column_names_the_columns_found(tmp_path, capsys):
    from lmsweep.cli import main

    (tmp_path / "p.jsonl").write_text(json.dumps(OTHER_NAMES[0]) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: p\nmodels: [package:smollm2-135m-instruct]\nprompts:\n  - name: r\n    file: p.jsonl\n"
                    "    text_column: reviw\ntask: generate\n")
    assert main(["validate", str(spec)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'p.jsonl'}:1: row 1: missing `reviw` (the text_column) (did you mean 'review'?); "
        "this row has the columns: rid, review, sentiment, text")
    spec.write_text("name: p\nmodels: [package:smollm2-135m-instruct]\nprompts:\n  - name: r\n    items: [a]\n"
                    "    text_column: review\ntask: generate\n")
    assert main(["validate", str(spec)]) == 2
    assert "text_column maps a prompt file's columns" in capsys.readouterr().err


def test_specs_without_a_column_mapping_keep_their_spec_hash(tmp_path):
    """The mapping appears in the spec's dump only when given (unit_ids.json pins the hashes of the example
    specs; this checks the mechanism directly)."""
    (tmp_path / "p.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    text = ("name: p\nmodels: [package:smollm2-135m-instruct]\nprompts:\n  - name: r\n    file: p.jsonl\n{}"
            "task: generate\n")
    (tmp_path / "a.yaml").write_text(text.format(""))
    (tmp_path / "b.yaml").write_text(text.format("    text_column: text\n"))
    a, b = load_spec(tmp_path / "a.yaml"), load_spec(tmp_path / "b.yaml")
    assert "text_column" not in a.canonical()["prompts"][0] and b.canonical()["prompts"][0]["text_column"] == "text"
    assert a.spec_hash() != b.spec_hash()


def test_an_inline_items_meta_is_stored_like_a_files_extra_columns(tmp_path):
    """An inline item's `meta: {source: r1}` used to be stored nested as {"meta": {"source": "r1"}}."""
    (tmp_path / "spec.yaml").write_text(
        "name: p\nmodels: [package:smollm2-135m-instruct]\nprompts:\n  - name: reviews\n    items:\n"
        "      - {id: a, text: The game was great, label: positive, meta: {source: r1}}\n"
        "      - {id: b, text: Terrible controls}\ntask: generate\n")
    prompts = load_prompts(load_spec(tmp_path / "spec.yaml"))
    assert [json.loads(p.meta) for p in prompts] == [{"source": "r1"}, {}]
