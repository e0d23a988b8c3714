"""Hostile input, on top of tests/test_bad_input.py: each case is refused with one line naming the file
and the field, exit code 2, nothing written, or else handled correctly (and the test says how)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_bad_input import GOOD_MODEL, spec_text

from lmsweep.cli import main


def parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


PARQUET_SET = "prompts:\n  - name: p\n    file: p.parquet"
JSONL_SET = "prompts:\n  - name: p\n    file: p.jsonl"
CSV_SET = "prompts:\n  - name: p\n    file: p.csv"
AXIS = [round(0.02 * i, 2) for i in range(1, 41)]
HUGE_GRID = (f"decoding:\n  top_k: {list(range(1, 41))}\n  temperature: {AXIS}\n  top_p: {AXIS}\n"
             f"  repetition_penalty: {[1 + x for x in AXIS]}")
GOOD_PARQUET = parquet(pa.table({"id": ["a", "b"], "text": ["hello", "world"]}))

CASES = {
    # id: (spec text or bytes, extra files {name: str | bytes}, fragments the one-line message must hold)
    # -- size: a grid far beyond the cap is refused before it is expanded, with the count
    "huge_grid_beyond_max_units": (spec_text(decoding=HUGE_GRID), {},
                                   ["spec.yaml", "execution.max_units", "5,120,000 units", "2,000,000"]),
    "grid_beyond_a_lowered_cap": (spec_text(decoding="decoding:\n  top_k: [1, 2, 3]",
                                            extra="execution:\n  max_units: 5"), {},
                                  ["execution.max_units", "6 units", "max_units=5"]),
    # -- NUL and control characters
    "nul_in_inline_prompt": (spec_text(prompts='prompts:\n  - name: p\n    items: ["a\\0b"]'), {},
                             ["spec.yaml:6", "prompts[0].items[0].text", "NUL"]),
    "nul_in_jsonl_prompt": (spec_text(prompts=JSONL_SET), {"p.jsonl": '{"id": "a", "text": "x\\u0000y"}\n'},
                            ["p.jsonl:1", "row 1.text", "NUL"]),
    "nul_in_csv_prompt": (spec_text(prompts=CSV_SET), {"p.csv": b"id,text\na,x\x00y\n"},
                          ["p.csv:2", "row 1.text", "NUL"]),
    "nul_in_parquet_prompt": (spec_text(prompts=PARQUET_SET),
                              {"p.parquet": parquet(pa.table({"id": ["a"], "text": ["x\x00y"]}))},
                              ["p.parquet", "row 1.text", "NUL"]),
    "newline_in_output_dir": (spec_text(extra='output_dir: "runs\\n#SBATCH --uid=0"'), {},
                              ["spec.yaml:10", "output_dir", "control character"]),
    "lone_surrogate_in_prompt": (spec_text(prompts='prompts:\n  - name: p\n    items: ["smile \\ud83d\\ude00"]'),
                                 {}, ["spec.yaml:6", "prompts[0].items[0].text", "unpaired UTF-16 surrogate \\ud83d"]),
    "lone_surrogate_in_jsonl_id": (spec_text(prompts=JSONL_SET), {"p.jsonl": '{"id": "\\udc00", "text": "x"}\n'},
                                   ["p.jsonl:1", "row 1", "id", "unicode string", "\\udc00"]),
    "lone_surrogate_in_system_prompt": (spec_text(prompts='prompts:\n  - name: p\n    system_prompt: "\\ud800"\n'
                                                          '    items: [hi]'), {},
                                        ["spec.yaml:6", "prompts[0].system_prompt", "unpaired"]),
    "nul_in_output_dir": (spec_text(extra='output_dir: "runs\\0x"'), {}, ["output_dir", "control character"]),
    # -- length and emptiness
    "prompt_over_a_million_chars": (spec_text(prompts=JSONL_SET),
                                    {"p.jsonl": json.dumps({"id": "a", "text": "x" * 1_000_001}) + "\n"},
                                    ["p.jsonl:1", "row 1.text", "1000001 characters", "limit is 1000000"]),
    "empty_experiment_name": (spec_text(name='name: ""'), {}, ["spec.yaml:1", "name", "1-64 characters"]),
    "name_too_long": (spec_text(name="name: " + "a" * 65), {}, ["spec.yaml:1", "name", "1-64 characters"]),
    "empty_model_source": (spec_text(models='models:\n  - source: ""'), {},
                           ["spec.yaml:3", "models[0].source", "at least 1 character"]),
    "empty_prompt_id": (spec_text(prompts="prompts:\n  - name: p\n    items: [{id: '', text: hi}]"), {},
                        ["spec.yaml:6", "prompts[0].items[0].id", "at least 1 character"]),
    "empty_output_dir": (spec_text(extra='output_dir: ""'), {}, ["spec.yaml:10", "output_dir", "empty"]),
    "empty_prompt_file_path": (spec_text(prompts='prompts:\n  - name: p\n    file: ""'), {},
                               ["spec.yaml:6", "prompts[0].file", "prompt file not found"]),
    # -- path traversal
    "output_dir_with_dotdot": (spec_text(extra="output_dir: runs/../../../etc"), {},
                               ["spec.yaml:10", "output_dir", "contains '..'"]),
    "name_is_dotdot": (spec_text(name="name: '..'"), {}, ["spec.yaml:1", "name", "1-64 characters"]),
    "name_with_slash": (spec_text(name="name: a/b"), {}, ["spec.yaml:1", "name", "1-64 characters"]),
    "model_alias_traversal": (spec_text(models=f"models:\n  - {{alias: ../../x, source: {GOOD_MODEL}}}"), {},
                              ["spec.yaml:3", "models[0]", "model alias '../../x'"]),
    "prompt_set_name_traversal": (spec_text(prompts="prompts:\n  - name: ../p\n    items: [hi]"), {},
                                  ["spec.yaml:5", "prompts[0].name", "'../p'"]),
    # -- shell metacharacters in anything that names a file, a job or a directive
    "command_substitution_in_alias": (spec_text(models=f"models:\n  - {{alias: 'a$(id)', source: {GOOD_MODEL}}}"),
                                      {}, ["models[0]", "model alias 'a$(id)'"]),
    "backticks_in_prompt_set_name": (spec_text(prompts="prompts:\n  - name: '`id`'\n    items: [hi]"), {},
                                     ["prompts[0].name", "'`id`'"]),
    "semicolon_in_slurm_account": (spec_text(extra="execution:\n  slurm: {account: 'a;id'}"), {},
                                   ["spec.yaml:11", "execution.slurm.account", "'a;id'"]),
    "directive_injection_in_pbs_queue": (spec_text(extra='execution:\n  pbs: {queue: "debug\\n#PBS -A other"}'),
                                         {}, ["execution.pbs.queue", "letters, digits"]),
    # -- unicode where only a plain charset may go
    "emoji_in_name": (spec_text(name="name: exp😀"), {}, ["name", "1-64 characters"]),
    "rtl_override_in_name": (spec_text(name="name: \"exp\u202egpj.sh\""), {}, ["name", "1-64 characters"]),
    # -- corrupted and mistyped prompt files
    "parquet_truncated": (spec_text(prompts=PARQUET_SET), {"p.parquet": GOOD_PARQUET[:len(GOOD_PARQUET) // 2]},
                          ["p.parquet", "unreadable Parquet"]),
    "parquet_garbage": (spec_text(prompts=PARQUET_SET), {"p.parquet": b"PAR1" + bytes(range(256)) * 4},
                        ["p.parquet", "unreadable Parquet"]),
    "parquet_zero_bytes": (spec_text(prompts=PARQUET_SET), {"p.parquet": b""},
                           ["p.parquet", "unreadable Parquet", "0 bytes"]),
    "parquet_text_column_is_int": (spec_text(prompts=PARQUET_SET),
                                   {"p.parquet": parquet(pa.table({"id": ["a"], "text": [5]}))},
                                   ["p.parquet", "row 1", "text", "valid string", "got 5"]),
    "parquet_id_column_is_float": (spec_text(prompts=PARQUET_SET),
                                   {"p.parquet": parquet(pa.table({"id": [1.5], "text": ["x"]}))},
                                   ["p.parquet", "row 1", "id", "valid string", "got 1.5"]),
    "parquet_text_is_null": (spec_text(prompts=PARQUET_SET),
                             {"p.parquet": parquet(pa.table({"id": ["a"], "text": pa.array([None], pa.string())}))},
                             ["p.parquet", "row 1", "text", "Field required"]),
    "jsonl_text_is_a_list": (spec_text(prompts=JSONL_SET), {"p.jsonl": '{"id": "a", "text": ["x"]}\n'},
                             ["p.jsonl:1", "row 1", "text", "valid string"]),
    "jsonl_label_is_int": (spec_text(prompts=JSONL_SET), {"p.jsonl": '{"id": "a", "text": "x", "label": 3}\n'},
                           ["p.jsonl:1", "row 1", "label", "valid string"]),
    # -- YAML tricks
    "recursive_alias": ("loop: &a [*a]\n" + spec_text(), {}, ["spec.yaml:1", "recursive alias"]),
    "nesting_10000_deep": ("name: " + "[" * 10_000 + "]" * 10_000 + "\n", {},
                           ["spec.yaml:1", "nested more than 64 levels"]),
    "duplicate_key": (spec_text(extra="name: other"), {}, ["spec.yaml:10", "name", "duplicate key 'name'"]),
    "duplicate_key_flipping_trust_remote_code": (
        spec_text(models=f"models:\n  - {{source: {GOOD_MODEL}, trust_remote_code: false, "
                         "trust_remote_code: true}"), {},
        ["spec.yaml:3", "models[0].trust_remote_code", "duplicate key"]),
    "merge_key_smuggling_an_unknown_key": (
        spec_text(models=f"models:\n  - &m {{alias: a, source: {GOOD_MODEL}}}\n  - {{<<: *m, alias: b, colour: x}}"),
        {}, ["spec.yaml:4", "models[1].colour", "unknown key"]),
    "alias_reusing_a_model": (spec_text(models=f"models:\n  - &m {{alias: a, source: {GOOD_MODEL}}}\n  - *m"), {},
                              ["models", "duplicate alias 'a'"]),
    "custom_tag": (spec_text(name="name: !shell 'rm -rf ~'"), {}, ["spec.yaml:1", "malformed YAML", "'!shell'"]),
    "python_name_tag": (spec_text(name="name: !!python/name:os.system"), {}, ["spec.yaml:1", "malformed YAML"]),
    "yaml_bool_as_name": (spec_text(name="name: yes"), {}, ["spec.yaml:1", "name", "valid string", "True"]),
    "not_utf8": (b"name: caf\xe9\n", {}, ["spec.yaml", "not UTF-8"]),
    "file_over_5_mb": ("# " + "x" * 5_000_001 + "\n" + spec_text(), {}, ["spec.yaml", "must be under 5000000"]),
    # -- numbers that are not numbers
    "nan_temperature": (spec_text(decoding="decoding:\n  temperature: .nan"), {},
                        ["spec.yaml:9", "decoding.temperature", "nan"]),
    "infinite_top_p": (spec_text(decoding="decoding:\n  top_p: .inf"), {}, ["decoding.top_p", "inf"]),
    "max_new_tokens_beyond_int64": (spec_text(decoding="decoding:\n  max_new_tokens: 99999999999999999999"), {},
                                    ["decoding.max_new_tokens", "less than or equal"]),
}


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_spec_gives_one_line_error_exit_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    text, files, expected = CASES[case]
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(text if isinstance(text, bytes) else text.encode())
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    monkeypatch.chdir(tmp_path)                      # the spec's own output_dir would land here
    before = sorted(p.name for p in tmp_path.iterdir())
    started = time.monotonic()
    for command in (["validate", str(spec)], ["plan", str(spec)], ["run", str(spec), "--quiet"]):
        code, lines = run_cli(command, capsys)
        assert code == 2, (command, lines)
        assert len(lines) == 1, lines
        for fragment in expected:
            assert fragment in lines[0], (fragment, lines[0])
    assert time.monotonic() - started < 60            # refused quickly, not after expanding a huge grid
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_corpus_has_at_least_40_cases():
    import test_bad_input

    assert len(CASES) + len(test_bad_input.CASES) >= 40 + 30


# ---- models: remote code and pickles are opt-in, per model ----------------------------------------------

def model_dir(path: Path, *, auto_map: bool = False, weights: str = "model.safetensors") -> Path:
    path.mkdir(parents=True)
    cfg = {"model_type": "llama"} | ({"auto_map": {"AutoModelForCausalLM": "evil.Model"}} if auto_map else {})
    (path / "config.json").write_text(json.dumps(cfg))
    (path / weights).write_bytes(b"\x80\x04not loaded" if weights.endswith((".bin", ".pt", ".pth")) else b"")
    return path


def test_trust_remote_code_on_one_model_does_not_extend_to_another(tmp_path, capsys):
    a = model_dir(tmp_path / "a", auto_map=True)
    b = model_dir(tmp_path / "b", auto_map=True)
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(models=f"models:\n  - {{alias: a, source: {a}, trust_remote_code: true}}\n"
                                     f"  - {{alias: b, source: {b}}}"))
    code, lines = run_cli(["validate", str(spec)], capsys)
    assert code == 2 and len(lines) == 1
    assert "spec.yaml:4: models[1].source:" in lines[0] and "trust_remote_code: true" in lines[0]


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt", "checkpoint.pth"])
def test_pickle_only_checkpoints_are_refused_whatever_their_suffix(weights, tmp_path, capsys):
    m = model_dir(tmp_path / "m", weights=weights)
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(models=f"models:\n  - source: {m}"))
    code, lines = run_cli(["validate", str(spec)], capsys)
    assert code == 2 and len(lines) == 1
    assert "models[0].source" in lines[0] and weights in lines[0] and "allow_pickle: true" in lines[0]


def test_allow_pickle_on_one_model_does_not_extend_to_another(tmp_path, capsys):
    a = model_dir(tmp_path / "a", weights="pytorch_model.bin")
    b = model_dir(tmp_path / "b", weights="pytorch_model.bin")
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(models=f"models:\n  - {{alias: a, source: {a}, allow_pickle: true}}\n"
                                     f"  - {{alias: b, source: {b}}}"))
    code, lines = run_cli(["validate", str(spec)], capsys)
    assert code == 2 and "models[1].source" in lines[0] and "only pickle checkpoints" in lines[0]


# ---- outputs stay under the results root ----------------------------------------------------------------

def test_absolute_output_dir_outside_the_results_root_is_refused(tmp_path, capsys, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("LMSWEEP_RESULTS_ROOT", str(root))
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(extra=f"output_dir: {tmp_path / 'elsewhere'}"))
    for command in (["validate", str(spec)], ["plan", str(spec)]):
        code, lines = run_cli(command, capsys)
        assert code == 2 and len(lines) == 1, lines
        assert "spec.yaml:10: output_dir:" in lines[0] and "outside the results root" in lines[0]
    assert not (tmp_path / "elsewhere").exists()
    code, lines = run_cli(["plan", str(spec), "--output-dir", str(tmp_path / "cli")], capsys)
    assert code == 2 and "--output-dir" in lines[0] and "outside the results root" in lines[0]
    spec.write_text(spec_text(extra=f"output_dir: {root / 'runs'}"))          # inside: fine
    assert main(["plan", str(spec)]) == 0 and (root / "runs" / "bad" / "plan.json").exists()


def test_symlinks_cannot_carry_outputs_out_of_the_results_root(tmp_path, capsys, monkeypatch):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "runs").mkdir(parents=True)
    outside.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("LMSWEEP_RESULTS_ROOT", str(root))
    spec = tmp_path / "spec.yaml"
    # the experiment directory itself a symlink (planted by someone else): refused even without a root
    (root / "runs" / "bad").symlink_to(outside)
    spec.write_text(spec_text(extra="output_dir: runs"))
    code, lines = run_cli(["plan", str(spec)], capsys)
    assert code == 2 and "output_dir" in lines[0] and "is a symlink" in lines[0]
    # an output_dir that is a symlink leading out of the root
    (root / "away").symlink_to(outside)
    spec.write_text(spec_text(extra="output_dir: away"))
    code, lines = run_cli(["plan", str(spec)], capsys)
    assert code == 2 and "output_dir" in lines[0] and f"resolves to {outside.resolve()}" in lines[0]
    assert not list(outside.iterdir())


def test_control_characters_in_the_output_dir_option_are_refused(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text())
    code, lines = run_cli(["plan", str(spec), "--output-dir", str(tmp_path / "a\nb")], capsys)
    assert code == 2 and len(lines) == 1 and "--output-dir" in lines[0] and "control character" in lines[0]


# ---- handled correctly ----------------------------------------------------------------------------------

UNICODE_PROMPTS = ["\u202eevil\u202c txt.exe", "😀👍🏽 family: 👨‍👩‍👧", "مرحبا بالعالم", "שלום עולם",
                   "e\u0301 vs \u00e9", "日本語のテキスト", "zero\u200bwidth", "tab\tand\nnewline", " ",
                   "x" * 200_000]
SHELL_PROMPTS = ["$(touch pwned)", "`touch pwned`", "a; rm -rf ~", "'; echo pwned; '", "\" && echo pwned",
                 "${HOME} $PATH", "#SBATCH --uid=0\n#PBS -A other", "| tee /etc/passwd", "\\x00 not a NUL"]


def test_unicode_rtl_emoji_and_long_prompts_round_trip_exactly(tmp_path, tiny_llama):
    """Plan and run them (tokenize task): every prompt comes back byte for byte."""
    import pandas as pd

    import lmsweep
    from lmsweep.runner.worker import run_element

    prompts = [p for p in UNICODE_PROMPTS if p.strip()] + SHELL_PROMPTS
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: uni\nmodels:\n  - {{alias: tiny, source: {tiny_llama}}}\n"
                    f"prompts:\n  - name: p\n    items: {json.dumps(prompts, ensure_ascii=False)}\ntask: tokenize\n")
    assert main(["plan", str(spec), "--output-dir", str(tmp_path / "runs")]) == 0
    exp = tmp_path / "runs" / "uni"
    stored = pq.read_table(exp / "prompts.parquet").column("prompt_text").to_pylist()
    assert stored == prompts
    assert run_element(exp, 0) == 0
    df = lmsweep.load(exp)
    assert sorted(df["prompt_text"]) == sorted(prompts)
    assert isinstance(df, pd.DataFrame) and df["num_tokens"].min() > 0


def test_whitespace_only_prompt_is_refused(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(prompts='prompts:\n  - name: p\n    items: [" \\t\\n "]'))
    code, lines = run_cli(["validate", str(spec)], capsys)
    assert code == 2 and "prompts[0].items[0].text" in lines[0] and "empty prompt text" in lines[0]


def test_yaml_merge_keys_and_aliases_are_handled(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(models=f"models:\n  - &m {{alias: a, source: {GOOD_MODEL}, dtype: float32}}\n"
                                     "  - {<<: *m, alias: b}"))
    assert main(["plan", str(spec), "--output-dir", str(tmp_path / "runs")]) == 0
    plan = json.loads((tmp_path / "runs" / "bad" / "plan.json").read_text())
    assert sorted(plan["models"]) == ["a", "b"] and plan["models"]["b"]["source"] == GOOD_MODEL


def test_shell_metacharacters_never_reach_a_scheduler_script_unquoted(tmp_path, capsys):
    """Prompts stay in the plan (no script sees them); a legal but nasty output path is quoted so that
    bash reads it back unchanged and runs nothing."""
    weird = tmp_path / "o'dd $(touch owned) ;dir"
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(prompts=f"prompts:\n  - name: p\n    items: {json.dumps(SHELL_PROMPTS)}"))
    code = main(["submit", str(spec), "--system", "slurm-generic", "--output-dir", str(weird), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out
    script = out[out.index("#!/bin/bash"):]
    for prompt in SHELL_PROMPTS:
        assert prompt not in script
    exp_line = next(line for line in script.splitlines() if line.startswith("EXP="))
    got = subprocess.run(["bash", "-c", f'{exp_line}\nprintf %s "$EXP"'], capture_output=True, text=True,
                         cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    assert got.stdout == str(weird / "bad")
    assert not (tmp_path / "owned").exists() and not (tmp_path / "pwned").exists()
