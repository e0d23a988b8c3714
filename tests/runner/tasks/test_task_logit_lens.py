"""The logit_lens task: each layer's top-k, entropy and target rank equal a direct transformers computation
(final norm, then lm_head, on one unpadded prompt), the last layer equals the next_token task (the last hidden
state is not normed twice), targets from labels and free columns, the plan's layer and size checks."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.cli import REPO, cli
from helpers.task_runs import rows, run_spec
from helpers.tiny_models import ARCHITECTURES, tiny_causal_lm
from helpers.tolerances import logprob_tolerance
from lmsweep.jobs.errors import SpecError
from lmsweep.jobs.plan import plan_spec
from lmsweep.jobs.spec import load_spec

ITEMS = """      - {id: paris, text: "The capital of France is", label: Paris}
      - {id: skip, text: "I skip across the street and the park every", label: morning}
      - {id: plain, text: "Shakespeare was a"}
"""


def spec(models: str, task: str, items: str = ITEMS, name: str = "lens") -> str:
    return f"name: {name}\nmodels: {models}\nprompts:\n  - items:\n{items}task: {task}\nexecution: {{batch_size: 3}}\n"


def direct_lens(model, tok, text: str) -> list[torch.Tensor]:
    """Per hidden state (0 = embeddings): the lens logits at the last token, computed by hand. The last entry is
    the model's own logits: transformers returns Llama's last hidden state after the final norm."""
    with torch.no_grad():
        out = model(**tok(text, return_tensors="pt"), output_hidden_states=True)
        lens = [model.lm_head(model.model.norm(h[0, -1])).float() for h in out.hidden_states[:-1]]
    return [*lens, out.logits[0, -1].float()]


def first_target_token(tok, text: str, target: str) -> int:
    context = tok(text)["input_ids"]
    return tok(text + " " + target)["input_ids"][len(context)]


def check_rows(df, model, tok, top_k: int) -> float:
    """Every stored row against the direct computation; returns the largest |Δp| seen."""
    worst = 0.0
    for text, got in df.groupby("prompt_text"):
        lens = direct_lens(model, tok, text)
        got = got.set_index("layer").sort_index()
        assert list(got.index) == list(range(len(lens)))
        for layer, r in got.iterrows():
            logits = lens[layer]
            tol = logprob_tolerance(model.config, float(logits.abs().max()))
            logp = torch.log_softmax(logits, -1)
            probs = logp.exp()
            top = probs.topk(top_k)
            assert list(r["topk_ids"]) == top.indices.tolist(), (text, layer)
            dp = max(abs(a - b) for a, b in zip(r["topk_probs"], top.values.tolist()))
            assert dp <= tol
            worst = max(worst, dp)
            entropy = float(-(probs * logp).sum())
            assert abs(r["entropy"] - entropy) <= tol * (entropy + 1)
            if not pd.isna(r["label"]):
                t = first_target_token(tok, text, r["label"])
                assert r["target_id"] == t and r["target"] == r["label"]
                # the rank counts the tokens more likely than the target: those within rounding may go either way
                assert int((logp > logp[t] + tol).sum()) + 1 <= r["target_rank"] <= int((logp >= logp[t] - tol).sum())
                assert abs(r["target_prob"] - float(probs[t])) <= tol
            else:
                assert pd.isna(r["target_id"]) and pd.isna(r["target_rank"])
    return worst


def test_every_layer_equals_the_final_norm_and_lm_head_by_hand(tiny_llama, tmp_path):
    """Three prompts of different lengths share a right-padded batch; each row equals its unpadded pass."""
    df = rows(run_spec(tmp_path, spec(f"[{{alias: tiny, source: {tiny_llama}}}]", "{type: logit_lens, top_k: 5}")))
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    assert len(df) == 3 * 3 and (df["num_layers"] == 2).all()
    check_rows(df, model, tok, 5)


def with_final_norm_weights(src, dst):
    """A copy of a model whose final RMSNorm has weights other than 1: norming twice then changes a state."""
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.model.norm.weight.copy_(torch.linspace(0.25, 4.0, model.config.hidden_size))
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def test_last_layer_is_next_token_and_not_normed_twice(tiny_llama, tmp_path):
    tiny_llama = with_final_norm_weights(tiny_llama, tmp_path / "normed")
    models = f"[{{alias: tiny, source: {tiny_llama}}}]"
    lens = rows(run_spec(tmp_path / "lens", spec(models, "{type: logit_lens, layers: [-1], top_k: 10}")))
    nt = rows(run_spec(tmp_path / "nt", spec(models, "{type: next_token, top_k: 10}", name="nt")))
    assert (lens["layer"] == 2).all()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    both = lens.merge(nt, on="prompt_text", suffixes=("_lens", "_nt"))
    assert len(both) == 3
    for _, r in both.iterrows():
        logits = direct_lens(model, tok, r["prompt_text"])[-1]
        tol = logprob_tolerance(model.config, float(logits.abs().max()))
        assert list(r["topk_ids_lens"]) == list(r["topk_ids_nt"])
        assert max(abs(a - b) for a, b in zip(r["topk_probs_lens"], r["topk_probs_nt"])) <= 2 * tol
        assert abs(r["entropy_lens"] - r["entropy_nt"]) <= 2 * tol * (r["entropy_nt"] + 1)
    # Norming the (already normed) last state again is a different distribution, far beyond rounding: the
    # comparison above would catch it.
    with torch.no_grad():
        out = model(**tok("Shakespeare was a", return_tensors="pt"), output_hidden_states=True)
        twice = torch.softmax(model.lm_head(model.model.norm(out.hidden_states[-1][0, -1])), -1)
        once = torch.softmax(out.logits[0, -1], -1)
    assert float((twice - once).abs().max()) > 100 * logprob_tolerance(model.config, float(out.logits.abs().max()))


def test_target_from_a_free_column_with_a_prefix_and_in_the_unit_id(tiny_llama, tmp_path):
    models = f"[{{alias: tiny, source: {tiny_llama}}}]"
    items = """      - {id: a, text: "The capital of France is", meta: {answer: " Paris"}}
      - {id: b, text: "The capital of France is", meta: {answer: " Rome"}}
      - {id: c, text: "The capital of France is"}
"""
    df = rows(run_spec(tmp_path, spec(models, "{type: logit_lens, layers: [0], target_column: answer, "
                                              "target_prefix: ''}", items)))
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    assert df["unit_id"].nunique() == 3                     # the same text, three targets: three units
    got = df.set_index("prompt_id")
    assert got.loc["a", "target"] == " Paris" and pd.isna(got.loc["c", "target"])
    assert got.loc["a", "target_id"] == first_target_token(tok, "The capital of France is", "Paris")
    assert got.loc["b", "target_token"] == tok.decode([first_target_token(tok, "The capital of France is", "Rome")])


def test_plan_checks_layers_and_size(tiny_llama, tmp_path):
    models = f"[{{alias: tiny, source: {tiny_llama}}}]"

    def plan(task: str):
        path = tmp_path / "spec.yaml"
        path.write_text(spec(models, task))
        return plan_spec(load_spec(path))

    with pytest.raises(SpecError, match=r"task.layers.*layer 3 is out of range for model 'tiny', which has 3 hidden "
                                        r"states \(embeddings \+ 2 layers\)"):
        plan("{type: logit_lens, layers: [0, 3]}")
    # 3 prompts × 3 layers × (96 + 20 × 10) bytes = 2664 bytes
    assert plan("{type: logit_lens, max_storage_mb: 0.0027}").n_units == 3
    with pytest.raises(SpecError, match=r"the logit lens would store ≈2.66 kB \(top_k 10\), above "
                                        r"task.max_storage_mb=0.002"):
        plan("{type: logit_lens, max_storage_mb: 0.002}")


def test_summary_and_examples(tiny_llama, tmp_path):
    from lmsweep.core.task_registry import get_task

    df = rows(run_spec(tmp_path, spec(f"[{{alias: tiny, source: {tiny_llama}}}]", "{type: logit_lens}")))
    summary = get_task("logit_lens").summarize(df).set_index("layer")
    assert list(summary.index) == [0, 1, 2]
    assert summary.loc[2, "top1_is_output"] == 1.0                 # the last layer is the output
    assert summary.loc[2, "targets"] == 2                           # two of the three prompts have a label
    last = df[(df["layer"] == 2) & df["target_rank"].notna()]
    assert summary.loc[2, "median_target_rank"] == last["target_rank"].median()
    shown = get_task("logit_lens").examples(df)
    assert len(shown) == 3 and shown["top1_by_layer"].str.startswith("0:").all()


def test_compare_passes_another_batch_size_and_fails_a_perturbed_model(tiny_llama, tmp_path):
    import lmsweep
    from helpers.tiny_models import perturb

    perturbed = perturb(tiny_llama, tmp_path / "perturbed")

    def run(name: str, source, batch: int):
        text = spec(f"[{{alias: tiny, source: {source}}}]", "{type: logit_lens, top_k: 5}", name=name)
        return run_spec(tmp_path / name, text.replace("batch_size: 3", f"batch_size: {batch}"))

    base, rerun, changed = run("base", tiny_llama, 3), run("rerun", tiny_llama, 1), run("changed", perturbed, 3)
    same = lmsweep.compare(base, rerun)
    assert same.passed and same.matched == 9 and same.diffs.empty
    diff = lmsweep.compare(base, changed)
    assert not diff.passed and {c.name for c in diff.failed_checks} >= {"logit-lens max |Δp|"}
    assert set(diff.diffs.columns) >= {"unit_id", "layer", "max_abs_dp", "target_rank_b", "target_rank_c"}


@pytest.mark.slow
def test_example_config_on_smollm2_equals_transformers_and_the_docs(tmp_path, monkeypatch, smollm2_dir):
    """configs/logit_lens.yaml (3 prompts, every layer of SmolLM2) against the direct computation; then
    docs/tasks.md's snippet, run as written beside runs/logit_lens, prints the layers, top-1 tokens and
    target ranks the docs show, and their probabilities to the digits shown (rounding moves them by ~1e-6)."""
    import contextlib
    import io
    import re
    import runpy

    cli("run", str(REPO / "configs" / "logit_lens.yaml"), "--output-dir", str(tmp_path / "runs"), "--quiet",
        check=True)
    df = rows(tmp_path / "runs" / "logit_lens")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    assert len(df) == 3 * 31
    check_rows(df, model, tok, 10)
    paris = df[df["prompt_id"] == "france"].set_index("layer")
    assert paris.loc[30, "target_token"] == " Paris" and paris.loc[30, "target_rank"] == 1

    text = (REPO / "docs" / "tasks.md").read_text()
    section = text[text.index("## `logit_lens`"):text.index("## `attention`")]
    code, shown = re.search(r"```python\n(.*?)```\n```\n(.*?)```", section, re.S).groups()
    (tmp_path / "snippet.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(tmp_path / "snippet.py"))
    got, want = out.getvalue().splitlines(), shown.splitlines()
    assert [line.rsplit(" ", 1)[0] for line in got] == [line.rsplit(" ", 1)[0] for line in want]
    for g, w in zip(got, want):
        assert float(g.rsplit(" ", 1)[1]) == pytest.approx(float(w.rsplit(" ", 1)[1]), rel=1e-2)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_last_layer_is_the_models_own_logits_on_other_architectures(arch, tmp_path):
    """The final norm is found and the last state normed exactly once, whatever the architecture: the last
    layer's lens is the model's next-token distribution; an intermediate layer is its final norm and head."""

    from helpers.tiny_models import make_tokenizer
    from lmsweep.core.task_registry import get_task
    from lmsweep.runner.tasks.logit_lens import lens_parts
    from lmsweep.runner.units import TaskContext, Unit

    tok = make_tokenizer(tmp_path)
    model = tiny_causal_lm(arch, len(tok))
    with torch.no_grad():                               # final norm weights other than 1: norming twice shows
        _, norm, _ = lens_parts(model)
        norm.weight.copy_(torch.linspace(0.25, 4.0, norm.weight.shape[0]))
    task = get_task("logit_lens")
    texts = ["The capital of France is", "Shakespeare was a playwright and poet from"]
    units = [Unit(unit_id=f"u{i}", unit_key=f"u{i}", element=0, variant=0, point_index=None, point=None, seed=None,
                  prompt={"prompt_text": t, "label": None, "meta": "{}"}) for i, t in enumerate(texts)]
    got, errors = task.run(TaskContext(model, tok, task.variant({"type": "logit_lens", "top_k": 5})), units)
    assert not errors
    for i, text in enumerate(texts):
        with torch.no_grad():
            out = model(**tok(text, return_tensors="pt"), output_hidden_states=True)
            middle = model.get_output_embeddings()(norm(out.hidden_states[1][0, -1])).float()
        for layer, logits in ((1, middle), (2, out.logits[0, -1].float())):
            row = next(r for r in got if r["unit_id"] == f"u{i}" and r["layer"] == layer)
            probs = torch.softmax(logits, -1)
            tol = logprob_tolerance(model.config, float(logits.abs().max()))
            assert row["topk_ids"] == probs.topk(5).indices.tolist(), (arch, layer)
            assert max(abs(a - b) for a, b in zip(row["topk_probs"], probs.topk(5).values.tolist())) <= tol
