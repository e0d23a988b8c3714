"""How a model's weights are quantised (issue 22, item 6), recorded where a row is traced: the rank and element
sidecars' `model_quantization`, `lmsweep results --trace`, the report's Models table, and validate's note (a
packaged GGUF: SmolLM2 Q4_1, Gemma Q4_K_M; MiniLM and a plain directory: none; a directory whose config.json has
a quantization_config: its method and bits)."""
from __future__ import annotations

import json
import shutil

import pytest

import lmsweep
from helpers.cli import cli
from helpers.task_runs import run_spec
from lmsweep.jobs.model_sources import model_quantization
from lmsweep.results.report import build_report, trace


def spec(source: str, task: str = "next_token") -> str:
    return f"name: q\nmodels: [{{alias: lm, source: '{source}'}}]\nprompts: [\"The capital of France\"]\ntask: {task}\n"


def sidecars(exp) -> tuple[dict, dict]:
    rank = json.loads((exp / "meta" / "element-00000-rank-0000.json").read_text())
    return rank, json.loads((exp / "meta" / "element-00000.json").read_text())


def traced(exp) -> dict:
    """`results --trace` of the experiment's first row, as {fact: value}."""
    return dict(trace(exp, lmsweep.load(exp)["unit_id"].iloc[0]).values.tolist())


def test_the_packaged_models_quantisation():
    assert model_quantization("package:smollm2-135m-instruct") == "Q4_1 GGUF (4-bit)"
    assert model_quantization("package:gemma3-270m") == "Q4_K_M GGUF (4-bit)"
    assert model_quantization("package:all-minilm-l6-v2") is None


def test_smollm2_rows_trace_to_its_4_bit_weights(tmp_path, smollm2_dir):
    exp = run_spec(tmp_path, spec("package:smollm2-135m-instruct"))
    rank, element = sidecars(exp)
    assert rank["model_quantization"] == element["model_quantization"] == "Q4_1 GGUF (4-bit)"
    assert traced(exp)["model_quantization"] == "Q4_1 GGUF (4-bit)"
    unit = lmsweep.load(exp)["unit_id"].iloc[0]
    out = cli("results", str(exp), "--trace", unit[:8], check=True).stdout
    assert "model_quantization" in out and "Q4_1 GGUF (4-bit)" in out
    page = build_report(exp)
    assert "<th>quantization</th>" in page and "<td>Q4_1 GGUF (4-bit)</td>" in page


def test_a_plain_model_and_a_tokenizer_only_task_record_none(tmp_path, tiny_llama, smollm2_dir):
    exp = run_spec(tmp_path / "tiny", spec(str(tiny_llama)))
    assert sidecars(exp)[0]["model_quantization"] is None
    assert traced(exp)["model_quantization"] == "none"
    assert "<td>none</td>" in build_report(exp)
    # tokenize reads no weights: nothing it computes comes from quantised ones
    exp = run_spec(tmp_path / "tok", spec("package:smollm2-135m-instruct", "tokenize"))
    assert sidecars(exp)[0]["model_quantization"] is None


def test_a_run_from_before_the_field_traces_to_the_plans_model(tmp_path, smollm2_dir):
    exp = run_spec(tmp_path, spec("package:smollm2-135m-instruct", "tokenize"))
    for f in [*(exp / "meta").glob("element-*-rank-*.json"), *(exp / "meta" / "history").glob("*.json")]:
        meta = json.loads(f.read_text())
        del meta["model_quantization"]
        f.write_text(json.dumps(meta))
    assert traced(exp)["model_quantization"] == "Q4_1 GGUF (4-bit)"


def test_a_directory_with_a_quantization_config_gets_the_note(tmp_path, tiny_llama):
    model = tmp_path / "gptq"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gptq",
                                                                                     "bits": 4}}))
    assert model_quantization(str(model), str(model)) == "gptq 4-bit"
    (tmp_path / "spec.yaml").write_text(spec(str(model)))
    out = " ".join(cli("validate", str(tmp_path / "spec.yaml"), check=True).stdout.split())   # long lines wrap
    assert (f"note: model 'lm' ({model}) has quantised weights (gptq 4-bit): its outputs and internals come "
            "from quantised weights") in out
    assert model_quantization(str(tiny_llama), str(tiny_llama)) is None


@pytest.mark.parametrize("flag", ["load_in_4bit", "load_in_8bit"])
def test_bitsandbytes_bits_come_from_its_flags(tmp_path, flag):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "bitsandbytes",
                                                                               flag: True}}))
    assert model_quantization(str(tmp_path), str(tmp_path)) == f"bitsandbytes {flag[8]}-bit"
