"""Input files as they come from other tools and other disks: a byte-order mark, CSV rows of the wrong
width, a prompt path that is a FIFO, a device or a directory, a model directory whose config.json is not an
object or whose safetensors are cut short. Each is read correctly, or refused by `validate` with one line
and exit 2, quickly (nothing hangs on a FIFO)."""
from __future__ import annotations

import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lmsweep.cli import main

BOM = b"\xef\xbb\xbf"
MODEL = "package:smollm2-135m-instruct"


def spec_text(prompt_file: str = "p.csv", model: str = MODEL, task: str = "generate") -> str:
    return (f"name: files\nmodels:\n  - source: {model}\nprompts:\n  - name: p\n    file: {prompt_file}\n"
            f"task: {task}\ndecoding:\n  max_new_tokens: 4\n")


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (opening a FIFO blocks until a writer comes)."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def validate(spec: Path, capsys) -> tuple[int, list[str]]:
    with deadline(20):
        code = main(["validate", str(spec)])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def refused(spec: Path, capsys) -> str:
    """The one error line of `validate` (exit 2, one line, `error: ` prefix dropped), nothing written."""
    before = sorted(p.name for p in spec.parent.iterdir())
    code, lines = validate(spec, capsys)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert sorted(p.name for p in spec.parent.iterdir()) == before
    return lines[0].removeprefix("error: ")


# ---- 1. a byte-order mark is dropped, whatever the format -----------------------------------------------

BOM_FILES = {
    # id: (file name, content after the BOM)
    "csv": ("p.csv", b"id,text,label\nq1,hello there,pos\nq2,once upon a time,neg\n"),
    "csv_crlf": ("p.csv", b"id,text,label\r\nq1,hello there,pos\r\nq2,once upon a time,neg\r\n"),
    "jsonl": ("p.jsonl", b'{"id": "q1", "text": "hello there", "label": "pos"}\n'
                         b'{"id": "q2", "text": "once upon a time", "label": "neg"}\n'),
    "yaml_list": ("p.yaml", b"- {id: q1, text: hello there, label: pos}\n"
                            b"- {id: q2, text: once upon a time, label: neg}\n"),
    "yaml_items": ("p.yml", b"items:\n  - {id: q1, text: hello there, label: pos}\n"
                            b"  - {id: q2, text: once upon a time, label: neg}\n"),
}


@pytest.mark.parametrize("case", sorted(BOM_FILES))
@pytest.mark.parametrize("spec_bom", [False, True], ids=["spec", "spec_with_bom"])
def test_a_byte_order_mark_is_dropped_and_the_id_column_kept(case, spec_bom, tmp_path):
    from lmsweep.jobs.plan import load_prompts
    from lmsweep.jobs.spec import load_spec

    name, content = BOM_FILES[case]
    (tmp_path / name).write_bytes(BOM + content)
    spec = tmp_path / "spec.yaml"
    spec.write_bytes((BOM if spec_bom else b"") + spec_text(name).encode())
    prompts = load_prompts(load_spec(spec))
    assert [(p.id, p.text, p.label, p.meta) for p in prompts] == [
        ("q1", "hello there", "pos", "{}"), ("q2", "once upon a time", "neg", "{}")]


def test_a_bom_before_a_mapped_id_column_keeps_the_mapping(tmp_path):
    from lmsweep.jobs.plan import load_prompts
    from lmsweep.jobs.spec import load_spec

    (tmp_path / "p.csv").write_bytes(BOM + b"rid,review\n7,great game\n8,bad controls\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text("p.csv").replace("    file: p.csv\n",
                                               "    file: p.csv\n    id_column: rid\n    text_column: review\n"))
    assert [(p.id, p.text, p.meta) for p in load_prompts(load_spec(spec))] == [
        ("7", "great game", "{}"), ("8", "bad controls", "{}")]


# ---- 2. CSV rows with more or fewer fields than the header ---------------------------------------------

CSV_ROWS = {
    # id: (CSV content, the message after `p.csv:`)
    "too_many_fields": (b"id,text\na,hello,x,y\n", "2: row 1 has 4 fields, the header has 2"),
    "one_too_many": (b"id,text\na,hello\nb,world,extra\n", "3: row 2 has 3 fields, the header has 2"),
    "too_few_fields": (b"id,text,label\na,hello\n", "2: row 1 has 2 fields, the header has 3"),
    "one_field": (b"id,text,label\na,hello,pos\nb\n", "3: row 2 has 1 field, the header has 3"),
    "after_a_multiline_field": (b'id,text\na,"two\nlines"\nb,x,y\n', "4: row 2 has 3 fields, the header has 2"),
    "after_a_blank_line": (b"id,text\na,hello\n\nb,x,y\n", "4: row 2 has 3 fields, the header has 2"),
    "with_a_bom": (BOM + b"id,text\na,hello,x\n", "2: row 1 has 3 fields, the header has 2"),
}


@pytest.mark.parametrize("case", sorted(CSV_ROWS))
def test_a_csv_row_of_the_wrong_width_is_one_line_naming_it(case, tmp_path, capsys):
    content, message = CSV_ROWS[case]
    (tmp_path / "p.csv").write_bytes(content)
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text("p.csv"))
    assert refused(spec, capsys) == f"{tmp_path.resolve() / 'p.csv'}:{message}"


# ---- 3. a prompt path that exists but is not a regular file --------------------------------------------

def _directory(tmp_path: Path) -> str:
    (tmp_path / "p.jsonl").mkdir()
    return "p.jsonl"


def _fifo(tmp_path: Path) -> str:
    os.mkfifo(tmp_path / "p.jsonl")
    return "p.jsonl"


def _fifo_yaml(tmp_path: Path) -> str:
    os.mkfifo(tmp_path / "p.yaml")
    return "p.yaml"


def _symlink_to_fifo(tmp_path: Path) -> str:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "p.csv").symlink_to(tmp_path / "pipe")
    return "p.csv"


NOT_FILES = {
    # id: (make the path, what the message says it is)
    "directory": (_directory, "is a directory"),
    "fifo": (_fifo, "is a FIFO (named pipe)"),
    "fifo_yaml": (_fifo_yaml, "is a FIFO (named pipe)"),
    "symlink_to_fifo": (_symlink_to_fifo, "is a FIFO (named pipe)"),
    "char_device": (lambda _: "/dev/null", "is a character device"),
}


@pytest.mark.parametrize("case", sorted(NOT_FILES))
def test_a_prompt_path_that_is_not_a_regular_file_says_what_it_is(case, tmp_path, capsys):
    make, what = NOT_FILES[case]
    name = make(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(name))
    line = refused(spec, capsys)
    assert line.startswith(f"{spec}:6: prompts[0].file: prompt file "), line
    assert f"{what}, not a regular file" in line and "not found" not in line, line


def test_a_missing_prompt_file_is_still_not_found(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text("nowhere.csv"))
    assert refused(spec, capsys) == (f"{spec}:6: prompts[0].file: prompt file not found: "
                                     f"{tmp_path.resolve()}/nowhere.csv")


# ---- 4. a local model directory's files ----------------------------------------------------------------

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}


def model_dir(path: Path, config: bytes | None = None) -> Path:
    """config.json and two safetensors shards with an index, all sound unless the test damages one."""
    path.mkdir()
    (path / "config.json").write_bytes(config if config is not None else json.dumps(CONFIG).encode())
    rng = np.random.default_rng(0)
    save_file({"a.weight": rng.standard_normal((16, 8)).astype(np.float32),
               "a.bias": np.zeros(16, np.float16)}, str(path / "model-00001-of-00002.safetensors"))
    save_file({"b.weight": rng.standard_normal((4, 4)).astype(np.float32)},
              str(path / "model-00002-of-00002.safetensors"))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "a.bias": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors"}}))
    return path


def model_spec(tmp_path: Path, model: Path, task: str = "generate") -> Path:
    (tmp_path / "p.jsonl").write_text('{"id": "a", "text": "hello"}\n')
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text("p.jsonl", model=str(model), task=task))
    return spec


CONFIGS = {
    # id: (config.json bytes, what the message says)
    "list": (b'[{"model_type": "llama"}]', "holds an array, not a JSON object"),
    "string": (b'"llama"', "holds a string, not a JSON object"),
    "number": (b"7", "holds a number, not a JSON object"),
    "null": (b"null", "holds null, not a JSON object"),
    "truncated": (b'{"model_type": "llama", "architec',
                  "is not valid JSON (Unterminated string starting at: line 1 column 25)"),
    "empty": (b"", "is not valid JSON (Expecting value: line 1 column 1)"),
    "not_utf8": (b'{"model_type": "\xff"}', "is not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_a_config_json_that_is_not_an_object_is_one_line_naming_it(case, tmp_path, capsys):
    content, what = CONFIGS[case]
    model = model_dir(tmp_path / "m", config=content)
    spec = model_spec(tmp_path, model)
    line = refused(spec, capsys)
    assert line.startswith(f"{spec}:3: models[0].source: {model.resolve() / 'config.json'} {what}"), line


def _truncate(by: int, name: str = "model-00001-of-00002.safetensors"):
    def damage(model: Path) -> str:
        f = model / name
        size = f.stat().st_size
        os.truncate(f, size - by)
        return f"{f} is {size - by:,} bytes but its safetensors header says {size:,}: truncated"
    return damage


def _cut_to(size: int, name: str = "model-00002-of-00002.safetensors"):
    def damage(model: Path) -> str:
        f = model / name
        os.truncate(f, size)
        if size < 8:
            return f"{f} is {size:,} bytes, too short for a safetensors file"
        header = 8 + int.from_bytes(f.read_bytes()[:8], "little")
        return f"{f} is {size:,} bytes, shorter than its own safetensors header ({header:,} bytes): truncated"
    return damage


def _append(model: Path) -> str:
    f = model / "model-00002-of-00002.safetensors"
    size = f.stat().st_size
    with f.open("ab") as out:
        out.write(b"\0" * 10)
    return f"{f} is {size + 10:,} bytes but its safetensors header says {size:,}: 10 bytes too many"


def _garbage_header(model: Path) -> str:
    f = model / "model-00002-of-00002.safetensors"
    raw = bytearray(f.read_bytes())
    raw[8:12] = b"\xff\xfe{]"
    f.write_bytes(bytes(raw))
    return f"{f}: its safetensors header is not valid JSON"


def _huge_header_length(model: Path) -> str:
    f = model / "model-00002-of-00002.safetensors"
    raw = bytearray(f.read_bytes())
    raw[:8] = (1 << 40).to_bytes(8, "little")
    f.write_bytes(bytes(raw))
    return f"{f} is not a safetensors file (its header length reads {1 << 40:,} bytes)"


def _missing_shard(model: Path) -> str:
    (model / "model-00002-of-00002.safetensors").unlink()
    return (f"{model / 'model.safetensors.index.json'} names the shard model-00002-of-00002.safetensors, "
            f"which is missing")


def _fifo_weights(model: Path) -> str:
    os.mkfifo(model / "model-00003-of-00002.safetensors")
    return f"{model / 'model-00003-of-00002.safetensors'} is not a regular file"


WEIGHTS = {
    # id: damage(model dir) -> the message after `models[0].source: `
    "truncated_by_one_byte": _truncate(1),
    "truncated_by_half": _truncate(300),
    "cut_inside_the_header": _cut_to(40),
    "cut_inside_the_length": _cut_to(5),
    "empty": _cut_to(0),
    "trailing_bytes": _append,
    "header_not_json": _garbage_header,
    "header_length_absurd": _huge_header_length,
    "shard_missing": _missing_shard,
    "a_fifo_named_like_weights": _fifo_weights,
}


@pytest.mark.parametrize("case", sorted(WEIGHTS))
def test_damaged_safetensors_in_a_model_directory_are_refused_by_validate(case, tmp_path, capsys):
    model = model_dir(tmp_path / "m").resolve()
    spec = model_spec(tmp_path, model)
    assert validate(spec, capsys)[0] == 0                    # sound as written
    message = WEIGHTS[case](model)
    line = refused(spec, capsys)
    assert line.startswith(f"{spec}:3: models[0].source: {message}"), line


def test_a_tokenizer_only_task_does_not_read_the_weights(tmp_path, capsys):
    """tokenize never loads the weights (tests/runner/tasks/test_task_tokenize.py runs it on garbage ones),
    so a damaged checkpoint does not stop it."""
    model = model_dir(tmp_path / "m")
    _truncate(300)(model)
    code, lines = validate(model_spec(tmp_path, model, task="tokenize"), capsys)
    assert code == 0, lines
