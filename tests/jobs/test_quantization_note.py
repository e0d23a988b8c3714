"""validate and plan say when a packaged model's weights are quantised (SmolLM2: a Q4_1 GGUF, dequantised), for
tasks that load weights; a local model and a tokenizer-only task get no note."""
from __future__ import annotations

from helpers.cli import cli

NOTE = ("note: model 'lm' (package:smollm2-135m-instruct) is a Q4_1 GGUF (4-bit), dequantised to float32: its "
        "outputs and internals come from quantised weights")


def write(tmp_path, source: str, task: str):
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: q\nmodels: [{{alias: lm, source: '{source}'}}]\nprompts: [\"Hello\"]\ntask: {task}\n")
    return path


def test_validate_and_plan_note_a_quantised_package(tmp_path):
    spec = write(tmp_path, "package:smollm2-135m-instruct", "next_token")
    assert NOTE in cli("validate", str(spec), check=True).stdout.splitlines()
    assert NOTE in cli("plan", str(spec), "--output-dir", str(tmp_path / "runs"), check=True).stdout.splitlines()


def test_no_note_for_a_tokenizer_only_task_or_a_local_model(tmp_path, tiny_llama):
    assert "note:" not in cli("validate", str(write(tmp_path, "package:smollm2-135m-instruct", "tokenize")),
                              check=True).stdout
    assert "note:" not in cli("validate", str(write(tmp_path, str(tiny_llama), "next_token")), check=True).stdout
