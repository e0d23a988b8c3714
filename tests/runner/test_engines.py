"""Engines are plug-ins (runner/engines): the registry lists them without importing their libraries,
`execution.backend` is checked against it, no module outside runner/engines/ tells engines apart by name,
and an engine registered from outside the package (tests/runner/reference_engine.py) plans, runs and agrees
with the hf engine through the tasks' own row building."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import cli, write_spec
from helpers.task_runs import rows, run_spec
from helpers.tolerances import logprob_tolerance, max_abs_logit

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_engine  # noqa: E402


@pytest.fixture
def reference():
    reference_engine.register()
    yield reference_engine.NAME
    reference_engine.unregister()


def test_listing_engines_imports_none_of_their_libraries():
    code = ("import sys; from lmsweep.runner.engines import engine_names; from lmsweep.jobs.spec import load_spec; "
            "print(','.join(engine_names())); print([m for m in ('vllm', 'deepspeed', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "hf,deepspeed,vllm" and out[1] == "[]", out


def test_an_unknown_backend_is_a_spec_error_with_the_known_ones(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", "name: s\nmodels: [package:smollm2-135m-instruct]\nprompts: [hi]\n"
                                           "task: generate\nexecution:\n  backend: vlm\n")
    proc = cli("validate", str(spec))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "s.yaml:6: execution.backend: unknown backend 'vlm' (did you mean 'vllm'?); expected one of hf, " \
           "deepspeed, vllm" in proc.stderr, proc.stderr


ENGINE_NAMES = {"hf", "deepspeed", "vllm"}


def _engine_comparisons(path: Path) -> list[str]:
    """`x == "vllm"`, `backend != "hf"`, `b in ("hf", "deepspeed")`: an engine name in a comparison."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Compare):
            continue
        for side in (node.left, *node.comparators):
            for const in ast.walk(side):
                if isinstance(const, ast.Constant) and const.value in ENGINE_NAMES:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_outside_the_engines_tells_engines_apart_by_name():
    files = [p for pkg in ("jobs", "runner", "submit", "results") for p in (REPO / pkg).rglob("*.py")
             if (REPO / "runner" / "engines") not in p.parents]
    assert len(files) > 30
    found = [v for p in files for v in _engine_comparisons(p)]
    assert not found, "engine names compared outside runner/engines/ (declare it on the engine):\n" + "\n".join(found)


def test_the_task_backends_come_from_the_engines_declarations(reference):
    from lmsweep.core.task_registry import get_task

    assert get_task("generate").backends == ("hf", "deepspeed", "vllm", reference)
    assert get_task("attention").backends == ("hf", "deepspeed")


def _spec(model: Path, backend: str, task: str, decoding: str = "") -> str:
    return (f"name: {backend}\nmodels: [{{alias: tiny, source: {model}}}]\n"
            "prompts: [\"Shakespeare was a\", \"I skip across the street and the park every\", \"Once upon\"]\n"
            f"task: {task}\n{decoding}execution: {{backend: {backend}, batch_size: 2}}\n")


def test_a_reference_engine_registered_from_outside_gives_hf_greedy_tokens(tiny_llama, tmp_path, reference):
    decoding = "decoding:\n  max_new_tokens: 12\n  repetition_penalty: [1.0, 1.5]\n"
    hf = rows(run_spec(tmp_path / "hf", _spec(tiny_llama, "hf", "generate", decoding)))
    ref = rows(run_spec(tmp_path / "ref", _spec(tiny_llama, reference, "generate", decoding)))
    assert set(ref["backend"]) == {reference} and len(ref) == len(hf) == 6
    key = ["prompt_id", "decoding", "sequence_index"]
    both = hf.merge(ref, on=key, suffixes=("_hf", "_ref"))
    assert len(both) == 6
    for a, b in zip(both["token_ids_hf"], both["token_ids_ref"]):
        assert list(a) == list(b)
    assert (both["text_hf"] == both["text_ref"]).all()
    assert (both["finish_reason_hf"] == both["finish_reason_ref"]).all()


def test_a_reference_engine_next_token_is_within_the_logprob_tolerance_of_hf(tiny_llama, tmp_path, reference):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = "{type: next_token, top_k: 10}"
    hf = rows(run_spec(tmp_path / "hf", _spec(tiny_llama, "hf", task)))
    ref = rows(run_spec(tmp_path / "ref", _spec(tiny_llama, reference, task)))
    both = hf.merge(ref, on="prompt_id", suffixes=("_hf", "_ref"))
    assert len(both) == 3
    tok, model = AutoTokenizer.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tol = logprob_tolerance(model.config, max_abs_logit(model, [tok(t)["input_ids"] for t in both["prompt_text_hf"]]))
    for _, r in both.iterrows():
        assert list(r["topk_ids_hf"]) == list(r["topk_ids_ref"])
        assert max(abs(a - b) for a, b in zip(r["topk_probs_hf"], r["topk_probs_ref"])) <= tol
        assert abs(r["entropy_hf"] - r["entropy_ref"]) <= tol * (r["entropy_hf"] + 1)


def test_what_the_reference_engine_refuses_is_refused_at_plan_time(tmp_path, reference, tiny_llama):
    from lmsweep.errors import SpecError
    from lmsweep.jobs.plan import plan_spec
    from lmsweep.jobs.spec import load_spec

    path = write_spec(tmp_path / "s.yaml", _spec(tiny_llama, reference, "generate", "decoding: {num_beams: 2}\n"))
    with pytest.raises(SpecError, match=f"beam search is not served by backend {reference}"):
        plan_spec(load_spec(path))
    path = write_spec(tmp_path / "a.yaml", _spec(tiny_llama, reference, "attention"))
    with pytest.raises(SpecError, match="hf, deepspeed"):
        plan_spec(load_spec(path))
