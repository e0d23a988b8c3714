"""The hidden_states task: stored states equal transformers' output_hidden_states=True (SmolLM2 and MiniLM,
fp32), pooling and float16 storage, the plan's layer and size checks, the cosine summary, the plots."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from helpers.cli import REPO, cli
from helpers.task_runs import rows, run_spec
from helpers.tolerances import hidden_relative_tolerance
from lmsweep.jobs.errors import SpecError
from lmsweep.jobs.model_sources import resolve
from lmsweep.jobs.plan import plan_spec
from lmsweep.jobs.spec import load_spec

PROMPTS = ["The cat sat on the mat.", "Stock markets fell sharply today after the announcement.", "A dog"]


def spec(models: str, task: str, prompts=PROMPTS) -> str:
    items = ", ".join(f'"{p}"' for p in prompts)
    return f"name: hs\nmodels: {models}\nprompts: [{items}]\ntask: {task}\nexecution: {{batch_size: 3}}\n"


def direct_states(model, tok, text: str) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states


def stored(row) -> np.ndarray:
    flat = row["hidden_f32"] if row["hidden_f32"] is not None else row["hidden"]
    v = np.asarray(flat, dtype=np.float32)
    return v.reshape(int(row["seq_len"]), -1) if row["pooling"] == "none" else v


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "minilm"])
def test_every_token_of_every_layer_equals_output_hidden_states(name, tmp_path, smollm2_dir):
    """Three prompts of different lengths in one right-padded batch, each equal to its own unpadded pass."""
    if name == "smollm2":
        source, path, cls = "package:smollm2-135m-instruct", smollm2_dir, AutoModelForCausalLM
    else:
        source, path, cls = "package:all-minilm-l6-v2", resolve("package:all-minilm-l6-v2").path, AutoModel
    df = rows(run_spec(tmp_path, spec(f"[{{alias: m, source: '{source}', dtype: float32}}]",
                                      "{type: hidden_states, pooling: none}")))
    tok, model = AutoTokenizer.from_pretrained(path), cls.from_pretrained(path, dtype=torch.float32).eval()
    worst = 0.0
    for text in PROMPTS:
        states = direct_states(model, tok, text)
        got = df[df["prompt_text"] == text].set_index("layer").sort_index()
        assert list(got.index) == list(range(len(states)))                  # 0 = embeddings … num_layers
        assert (got["num_layers"] == len(states) - 1).all()
        assert list(got["token_ids"].iloc[0]) == tok(text)["input_ids"]
        for layer, r in got.iterrows():
            want = states[layer][0].numpy()
            # relative to the layer's largest |value|: SmolLM2's reach ~1e4 (massive activations), where one
            # float32 ulp is ~1e-3
            worst = max(worst, float(np.abs(stored(r) - want).max() / max(1.0, np.abs(want).max())))
    assert worst <= hidden_relative_tolerance(model.config)


def test_pooling_last_and_mean_and_float16(tiny_llama, tmp_path):
    models = f"[{{alias: tiny, source: {tiny_llama}}}]"
    tok, model = AutoTokenizer.from_pretrained(tiny_llama), AutoModel.from_pretrained(tiny_llama).eval()
    for pooling, dtype in (("last", "float32"), ("mean", "float16")):
        df = rows(run_spec(tmp_path / pooling, spec(models, f"{{type: hidden_states, layers: [0, -1], "
                                                            f"pooling: {pooling}, dtype: {dtype}}}")))
        assert sorted(set(df["layer"])) == [0, 2]                           # -1: the last of 2 layers
        for text in PROMPTS:
            states = direct_states(model, tok, text)
            for layer in (0, 2):
                r = df[(df["prompt_text"] == text) & (df["layer"] == layer)].iloc[0]
                want = states[layer][0, -1] if pooling == "last" else states[layer][0].mean(0)
                assert r["hidden_size"] == want.shape[0] == len(stored(r))
                tol = 1e-4 if dtype == "float32" else 2e-3 * float(want.abs().max())
                assert np.abs(stored(r) - want.numpy()).max() < tol
                assert (r["hidden_f32"] is None) == (dtype == "float16")


def test_summary_is_the_cosine_similarity_between_prompts_per_layer(tiny_llama, tmp_path):
    from lmsweep.core.task_registry import get_task

    models = f"[{{alias: tiny, source: {tiny_llama}}}]"
    df = rows(run_spec(tmp_path, spec(models, "{type: hidden_states, pooling: mean}")))
    summary = get_task("hidden_states").summarize(df).set_index("layer")
    tok, model = AutoTokenizer.from_pretrained(tiny_llama), AutoModel.from_pretrained(tiny_llama).eval()
    vectors = [[s[0].mean(0).numpy() for s in direct_states(model, tok, t)] for t in PROMPTS]
    for layer in range(3):
        v = np.stack([vs[layer] for vs in vectors])
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        sims = (v @ v.T)[~np.eye(3, dtype=bool)]
        assert summary.loc[layer, "mean_cosine"] == pytest.approx(sims.mean(), abs=1e-5)
        assert summary.loc[layer, "min_cosine"] == pytest.approx(sims.min(), abs=1e-5)
        assert summary.loc[layer, "prompts"] == 3


def test_plan_checks_layers_and_size(tiny_llama, tmp_path):
    models = f"[{{alias: tiny, source: {tiny_llama}}}]"

    def plan(task: str):
        path = tmp_path / "spec.yaml"
        path.write_text(spec(models, task))
        return plan_spec(load_spec(path))

    with pytest.raises(SpecError, match=r"task.layers.*layer 3 is out of range for model 'tiny', which has 3 hidden "
                                        r"states \(embeddings \+ 2 layers\)"):
        plan("{type: hidden_states, layers: [0, 3]}")
    with pytest.raises(SpecError, match="select at least one"):
        plan("{type: hidden_states, layers: []}")
    # 3 prompts × 3 layers × 64 floats × 4 bytes = 2304 bytes pooled
    assert plan("{type: hidden_states, max_storage_mb: 0.0024}").n_units == 3
    with pytest.raises(SpecError, match=r"hidden states would take ≈2.3 kB \(float32, pooling last\), above "
                                        r"task.max_storage_mb=0.002"):
        plan("{type: hidden_states, max_storage_mb: 0.002}")
    with pytest.raises(SpecError, match="pooling none"):
        plan("{type: hidden_states, pooling: none, max_storage_mb: 0.0024}")   # per token: many times larger


@pytest.mark.slow
def test_example_config_runs_and_plots(tmp_path, smollm2_dir):
    cli("run", str(REPO / "configs" / "hidden_states.yaml"), "--output-dir", str(tmp_path), "--quiet", check=True)
    exp = tmp_path / "hidden_states"
    summary = cli("results", str(exp), "--summary", "--csv", check=True).stdout
    assert summary.splitlines()[0].startswith("model,layer,prompts,mean_cosine")     # one variant: no column
    proc = cli("plot", "hidden_states", str(exp), "--layers", "0,15,30", check=True)
    pngs = sorted((exp / "plots").glob("hidden-states-*.png"))
    assert {p.name for p in pngs} == {"hidden-states-similarity-smollm2.png", "hidden-states-pca-smollm2.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in pngs)
    assert str(pngs[0]) in proc.stdout
    bad = cli("plot", "hidden_states", str(exp), "--layers", "31")
    assert bad.returncode == 2 and "layer 31 is not stored (stored layers: 0–30)" in bad.stderr
