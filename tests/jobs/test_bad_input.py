"""Bad input: one line naming file, line and field; exit code 2; nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmsweep.cli import main

GOOD_MODEL = "package:smollm2-135m-instruct"


def spec_text(**overrides: str) -> str:
    parts = {
        "name": "name: bad",
        "models": f"models:\n  - source: {GOOD_MODEL}",
        "prompts": "prompts:\n  - name: p\n    items: [\"Hello there\", \"Once upon a time\"]",
        "task": "task: generate",
        "decoding": "decoding:\n  max_new_tokens: 4",
        "extra": "",
    }
    parts.update(overrides)
    return "\n".join(v for v in parts.values() if v) + "\n"


CASES = {
    # id: (spec text, extra files {name: content}, expected substrings in the message)
    "malformed_yaml": ("name: [unclosed\nmodels: x\n", {}, ["spec.yaml:", "malformed YAML"]),
    "empty_file": ("", {}, ["spec.yaml", "empty file"]),
    "not_a_mapping": ("- a\n- b\n", {}, ["spec.yaml", "must be a mapping"]),
    "unknown_top_key": (spec_text(extra="colour: blue"), {}, ["spec.yaml:", "colour", "unknown key"]),
    "missing_models": (spec_text(models=""), {}, ["models", "required field is missing"]),
    "wrong_type_batch": (spec_text(extra="execution:\n  batch_size: lots"), {},
                         ["spec.yaml:11", "execution.batch_size", "integer", "'lots'"]),
    "top_p_above_one": (spec_text(decoding="decoding:\n  top_p: 1.5"), {},
                        ["spec.yaml:", "decoding", "top_p", "1"]),
    "top_p_zero_axis": (spec_text(decoding="decoding:\n  top_p: [0.9, 0]"), {}, ["decoding", "top_p"]),
    "negative_temperature": (spec_text(decoding="decoding:\n  temperature: -0.5"), {},
                             ["decoding", "temperature", "greater than 0"]),
    "temperature_with_greedy": (spec_text(decoding="decoding:\n  do_sample: false\n  temperature: 0.7"), {},
                                ["decoding", "temperature applies only when sampling", "do_sample: false;",
                                 "set do_sample: true"]),
    "beam_with_sampling": (spec_text(decoding="decoding:\n  num_beams: 4\n  top_k: 5"), {},
                           ["decoding", "beam search with sampling"]),
    "unknown_decoding_key": (spec_text(decoding="decoding:\n  temprature: 0.5"), {},
                             ["decoding", "unknown decoding parameter 'temprature'"]),
    "zip_unequal": (spec_text(decoding="decoding:\n  sweep: zip\n  top_k: [1, 2]\n  temperature: [0.5]"), {},
                    ["decoding", "equal length"]),
    "empty_prompt_set": (spec_text(prompts="prompts:\n  - name: p\n    items: []"), {},
                         ["prompts", "empty prompt set"]),
    "empty_prompt_text": (spec_text(prompts="prompts:\n  - name: p\n    items: [\"  \"]"), {},
                          ["spec.yaml:", "prompts[0].items[0].text", "empty prompt text"]),
    "missing_prompt_file": (spec_text(prompts="prompts:\n  - name: p\n    file: nowhere.jsonl"), {},
                            ["spec.yaml:", "prompts[0].file", "prompt file not found"]),
    "duplicate_prompt_ids": (spec_text(prompts="prompts:\n  - name: p\n    file: p.jsonl"),
                             {"p.jsonl": '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n'},
                             ["p.jsonl:2", "duplicate prompt id 'a'"]),
    "bad_jsonl_line": (spec_text(prompts="prompts:\n  - name: p\n    file: p.jsonl"),
                       {"p.jsonl": '{"id": "a", "text": "x"}\n{"id": "b", "text": \n'},
                       ["p.jsonl:2", "invalid JSON"]),
    "csv_without_text": (spec_text(prompts="prompts:\n  - name: p\n    file: p.csv"),
                         {"p.csv": "id,prompt\n1,hello\n"},
                         ["p.csv:2", "missing `text`; this row has the columns: id, prompt"]),
    "prompt_file_column_typo": (spec_text(prompts="prompts:\n  - {name: p, file: p.jsonl}"),
                                {"p.jsonl": '{"id": "a", "texts": "hello"}\n'},
                                ["p.jsonl:1", "missing `text` (did you mean 'texts'?); this row has the columns: "
                                              "id, texts"]),
    "unsupported_prompt_file": (spec_text(prompts="prompts:\n  - name: p\n    file: p.txt"),
                                {"p.txt": "hello\n"}, ["p.txt", "unsupported prompt file type"]),
    "unknown_task": (spec_text(task="task: summarise"), {}, ["task", "unknown task 'summarise'"]),
    # the task's own line and a suggestion, in the short and the mapping form alike (the mapping form gave
    # pydantic's "Input tag ... does not match", the short form pointed at line 1)
    "task_typo": (spec_text(task="task: next_tokens"), {},
                  ["spec.yaml:7: task: unknown task 'next_tokens' (did you mean 'next_token'?)",
                   "expected one of"]),
    "task_typo_mapping": (spec_text(task="task: {type: next_tokens, top_k: 3}"), {},
                          ["spec.yaml:7: task: unknown task 'next_tokens' (did you mean 'next_token'?)"]),
    "decoding_typo": (spec_text(decoding="decoding:\n  max_new_tokns: 8"), {},
                      ["unknown decoding parameter 'max_new_tokns' (did you mean 'max_new_tokens'?)"]),
    "unknown_task_param": (spec_text(task="task: {type: next_token, top_k: 5, beams: 2}",
                                     decoding=""), {}, ["task", "beams", "unknown key"]),
    "unknown_model_package": (spec_text(models="models:\n  - source: package:gpt-17"), {},
                              ["spec.yaml:", "models[0].source", "unknown model package 'gpt-17'"]),
    "nonexistent_model_dir": (spec_text(models="models:\n  - source: ./no/such/model"), {},
                              ["models[0].source", "model directory not found"]),
    "hub_id_not_cached": (spec_text(models="models:\n  - source: someorg/some-model"), {},
                          ["models[0].source", "not in the local Hugging Face cache", "never downloads"]),
    "duplicate_alias": (spec_text(models=f"models:\n  - {{alias: m, source: {GOOD_MODEL}}}\n"
                                         f"  - {{alias: m, source: {GOOD_MODEL}}}"), {},
                        ["models", "duplicate alias 'm'"]),
    "unsafe_name": (spec_text(name="name: ../../etc"), {}, ["name", "must be 1-64 characters"]),
    "shell_in_name": (spec_text(name="name: 'x; rm -rf ~'"), {}, ["name", "must be 1-64 characters"]),
    "bad_walltime": (spec_text(extra="execution:\n  walltime: 2 hours"), {}, ["execution.walltime", "pattern"]),
    "too_many_units": (spec_text(decoding="decoding:\n  top_k: [1, 2, 3, 4, 5]\n  temperature: [0.1, 0.2, 0.3]",
                                 extra="execution:\n  max_units: 10"), {},
                       ["30 units", "execution.max_units=10"]),
    "next_token_with_grid": (spec_text(task="task: next_token",
                                       decoding="decoding:\n  temperature: [0.5, 1.0]"), {},
                             ["decoding", "ignores decoding"]),
    "alias_bomb": ('a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
                   'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n'
                   'e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n', {},
                   ["spec.yaml", "alias bomb"]),
    "python_tag": ("name: !!python/object/apply:os.system ['echo pwned']\n", {},
                   ["spec.yaml", "malformed YAML"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_error_exit_2_and_writes_nothing(case, tmp_path, capsys):
    text, files, expected = CASES[case]
    (tmp_path / "spec.yaml").write_text(text)
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    before = sorted(p.name for p in tmp_path.iterdir())
    out_dir = tmp_path / "out"
    for command in (["validate", str(tmp_path / "spec.yaml")],
                    ["plan", str(tmp_path / "spec.yaml"), "--output-dir", str(out_dir)]):
        code = main(command)
        captured = capsys.readouterr()
        assert code == 2, captured
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, captured.err
        for fragment in expected:
            assert fragment in lines[0], (fragment, lines[0])
    assert not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_spec_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: file not found" in capsys.readouterr().err


def test_pickle_only_model_dir_is_refused(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    (tmp_path / "spec.yaml").write_text(spec_text(models=f"models:\n  - source: {model}"))
    assert main(["validate", str(tmp_path / "spec.yaml")]) == 2
    msg = capsys.readouterr().err
    assert "only pickle checkpoints" in msg and "allow_pickle: true" in msg


def test_remote_code_needs_opt_in(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "x", "auto_map": {"AutoModel": "x.Y"}}))
    (model / "model.safetensors").write_bytes(b"")
    (tmp_path / "spec.yaml").write_text(spec_text(models=f"models:\n  - source: {model}"))
    assert main(["validate", str(tmp_path / "spec.yaml")]) == 2
    assert "trust_remote_code: true" in capsys.readouterr().err


def test_good_spec_validates(tmp_path, capsys):
    (tmp_path / "spec.yaml").write_text(spec_text())
    assert main(["validate", str(tmp_path / "spec.yaml")]) == 0
    assert "2 unit(s)" in capsys.readouterr().out
    assert not Path("runs/bad").exists()


def test_every_spec_error_is_reported_at_once_each_at_its_own_line(tmp_path, capsys):
    """Two typos used to need two runs, and the line given was the block's (`decoding:`), not the key's."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: typos\n"                                        # 1
                    "models:\n"                                            # 2
                    "  - {source: package:smollm2-135m-instruct, dtyp: float32}\n"   # 3
                    "prompts: [a, b]\n"                                    # 4
                    "task: generate\n"                                     # 5
                    "decoding:\n"                                          # 6
                    "  max_new_token: 16\n"                                # 7
                    "  temperature: [0.7, -1]\n"                           # 8
                    "execution:\n"                                         # 9
                    "  batchsize: 4\n")                                    # 10
    for command in (["validate", str(spec)], ["plan", str(spec), "--output-dir", str(tmp_path / "out")]):
        assert main(command) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [
            f"error: {spec}:3: models[0].dtyp: unknown key (did you mean 'dtype'?)",
            f"error: {spec}:7: decoding.max_new_token: unknown decoding parameter 'max_new_token' (did you mean "
            "'max_new_tokens'?); expected one of do_sample, num_beams, temperature, top_k, top_p, "
            "repetition_penalty, no_repeat_ngram_size, max_new_tokens, num_return_sequences, sweep, include, "
            "exclude, seeds",
            f"error: {spec}:8: decoding.temperature[1]: Input should be greater than 0, got -1",
            f"error: {spec}:10: execution.batchsize: unknown key (did you mean 'batch_size'?)",
        ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
