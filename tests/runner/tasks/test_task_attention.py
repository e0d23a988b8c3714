"""The attention task: stored weights equal a direct transformers computation; selection, head mean,
GQA head counts, and the size cap that refuses before anything is written."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from helpers.cli import cli
from helpers.task_runs import ATTENTION_PROMPTS as PROMPTS
from helpers.task_runs import rows, run_spec
from helpers.tolerances import logprob_tolerance
from lmsweep.runner.tasks.attention_views import attention_matrix


def spec(model, task: str, name: str = "att") -> str:
    return f"name: {name}\nmodels: [{{alias: tiny, source: {model}}}]\n{PROMPTS}\ntask: {task}\n"


@pytest.fixture(scope="module")
def direct(tiny_llama):
    """Per prompt: token ids and attention (layers × heads × T × T) from one unpadded eager forward."""
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="eager").eval()
    out = {}
    for text in ("No, I am your father", "The animal didn't cross the street because it was too tired"):
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            att = model(torch.tensor([ids]), output_attentions=True).attentions
        out[text] = (ids, torch.stack([a[0] for a in att]).numpy())
    return out


@pytest.fixture(scope="module")
def all_heads(tiny_llama, tmp_path_factory):
    # batch_size 2: the two prompts of different lengths share a padded batch
    return rows(run_spec(tmp_path_factory.mktemp("att"),
                         spec(tiny_llama, "{type: attention}") + "execution: {batch_size: 2}\n"))


def test_weights_match_transformers_in_float16(all_heads, direct):
    assert len(all_heads) == 2 * 2 * 4                        # prompts × layers × query heads
    worst = 0.0
    for _, r in all_heads.iterrows():
        ids, att = direct[r["prompt_text"]]
        assert list(r["token_ids"]) == ids and r["seq_len"] == len(ids)
        assert r["attention"].dtype == np.float16 and r["attention_f32"] is None
        worst = max(worst, float(np.abs(attention_matrix(r) - att[r["layer"], r["head"]]).max()))
    assert worst < 1e-3     # float16 storage: half an ulp at values ≤ 1 is 2⁻¹¹ ≈ 4.9e-4, twice that for fp32 noise


def test_gqa_records_query_heads_and_their_kv_group(all_heads):
    # the tiny Llama has 4 query heads sharing 2 key/value heads
    assert set(all_heads["num_heads"]) == {4} and set(all_heads["num_kv_heads"]) == {2}
    assert sorted(set(all_heads["head"])) == [0, 1, 2, 3]
    assert all(all_heads["kv_head"] == all_heads["head"] // 2)


def test_selected_layers_heads_mean_in_float32(tiny_llama, tmp_path, direct):
    task = "{type: attention, layers: [-1], heads: [0, 2], head_mean: true, dtype: float32, max_tokens: 5}"
    df = rows(run_spec(tmp_path, spec(tiny_llama, task)))
    config = AutoConfig.from_pretrained(tiny_llama)
    assert list(df["layer"]) == [1, 1] and list(df["head"]) == [-1, -1]
    for _, r in df.iterrows():
        ids, att = direct[r["prompt_text"]]
        n = min(len(ids), 5)
        assert r["attention"] is None and r["attention_f32"].dtype == np.float32
        assert r["truncated"] == (len(ids) > 5) and r["num_prompt_tokens"] == len(ids)
        expected = att[1, [0, 2], :n, :n].mean(0)
        # probabilities from fp32 softmaxes: |Δp| ≤ p·|Δ log p| (helpers/tolerances.py)
        assert np.abs(attention_matrix(r) - expected).max() <= logprob_tolerance(config, 1.0)


def test_size_cap_refuses_with_the_estimate_and_writes_nothing(tiny_llama, tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(spec(tiny_llama, "{type: attention, max_storage_mb: 0.001}") + f"output_dir: {tmp_path}\n")
    proc = cli("plan", str(path))
    assert proc.returncode == 2
    assert "max_storage_mb" in proc.stderr and "≈" in proc.stderr and "kB" in proc.stderr
    assert not (tmp_path / "att").exists()


def test_layer_out_of_range_is_a_spec_error(tiny_llama, tmp_path):
    from lmsweep.jobs.errors import SpecError
    from lmsweep.jobs.plan import plan_spec
    from lmsweep.jobs.spec import load_spec

    path = tmp_path / "s.yaml"
    path.write_text(spec(tiny_llama, "{type: attention, layers: [0, 7]}"))
    with pytest.raises(SpecError, match="layer 7 is out of range .* 2 layers"):
        plan_spec(load_spec(path))
