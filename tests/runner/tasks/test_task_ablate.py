"""The ablate task: every number of a row (KL to the clean pass, top-1, the target's and the continuation's
log-probabilities, patching's restored share) equals a hand-written forward hook on one unpadded prompt, on a
Llama and a GPT-2; `heads: all` plans one variant per (layer, head); the plan refuses layers, heads and patching
prompts it could not run; the clean pass runs once per prompt, not once per variant; compare passes a rerun."""
from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.cli import cli, write_spec
from helpers.task_runs import rows, run_spec
from helpers.tolerances import logprob_tolerance, max_abs_logit
from lmsweep.jobs.errors import SpecError
from lmsweep.jobs.plan import plan_spec
from lmsweep.jobs.spec import load_spec

ITEMS = """      - {id: paris, text: "The capital of France is", label: Paris}
      - {id: skip, text: "I skip across the street", meta: {continuation: " and the park every morning"}}
      - {id: plain, text: "Shakespeare was a playwright and"}
"""
CONTINUATIONS = {"skip": " and the park every morning"}
# Where a hand-written hook goes, per architecture: (blocks, attention output projection, MLP) under the model.
MODULES = {
    "llama": (lambda m: m.model.layers, lambda b: b.self_attn.o_proj, lambda b: b.mlp),
    "gpt2": (lambda m: m.transformer.h, lambda b: b.attn.c_proj, lambda b: b.mlp),
}


def spec(models: str, task: str, items: str = ITEMS, name: str = "abl", batch: int = 3) -> str:
    return (f"name: {name}\nmodels: {models}\nprompts:\n  - items:\n{items}task: {task}\n"
            f"execution: {{batch_size: {batch}}}\n")


def tiny_gpt2(path):
    from helpers.tiny_models import make_tokenizer, tiny_causal_lm

    tok = make_tokenizer(path)
    model = tiny_causal_lm("gpt2", len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           bos_token_id=tok.bos_token_id)
    model.save_pretrained(path)
    return path


# ---- the direct computation: one prompt, no padding, hooks written here -------------------------------------

def run_with(model, arch: str, ids: list[int], site: str, layer: int, head: int | None, value):
    """Logits (positions × vocab) of one sequence with the site's activation replaced by `value(activation)`;
    `value` None: the clean pass. Also returns the site's clean activation (whole projection input for head)."""
    blocks, attn_out, mlp = MODULES[arch]
    block = blocks(model)[layer]
    seen = {}
    n_heads = model.config.num_attention_heads

    def head_hook(mod, args):
        x = args[0].clone()
        seen["x"] = x.clone()
        d = x.shape[-1] // n_heads
        if value is not None:
            x[..., head * d:(head + 1) * d] = value(x[..., head * d:(head + 1) * d])
        return (x,)

    def mlp_hook(mod, args, out):
        seen["x"] = out
        return out if value is None else value(out)

    def layer_hook(mod, args, kwargs, out):
        before = args[0] if args else kwargs["hidden_states"]
        after = out[0] if isinstance(out, tuple) else out
        seen["x"] = after - before
        new = after if value is None else before + value(after - before)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handle = (attn_out(block).register_forward_pre_hook(head_hook) if site == "head" else
              mlp(block).register_forward_hook(mlp_hook) if site == "mlp" else
              block.register_forward_hook(layer_hook, with_kwargs=True))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
    finally:
        handle.remove()
    return logits, seen["x"][0]


def sequence(tok, text: str, continuation: str | None) -> tuple[list[int], int]:
    context = tok(text)["input_ids"]
    if continuation is None:
        return context, len(context)
    return tok(text + continuation)["input_ids"], len(context)


def check_rows(df, model, tok, arch: str) -> int:
    """Each row against the direct computation; returns the number of rows checked."""
    checked = 0
    for r in df.to_dict("records"):
        continuation = CONTINUATIONS.get(r["prompt_id"])
        ids, n = sequence(tok, r["prompt_text"], continuation)
        head = None if pd.isna(r["head"]) else int(r["head"])
        clean, act = run_with(model, arch, ids, r["site"], r["layer"], head, None)
        if r["site"] == "head":
            d = act.shape[-1] // model.config.num_attention_heads
            act = act[:, head * d:(head + 1) * d]
        mean = act[:n].mean(0)                             # over the prompt's positions only
        value = (torch.zeros_like if r["method"] == "zero" else lambda x, m=mean: m.expand_as(x))
        ablated, _ = run_with(model, arch, ids, r["site"], r["layer"], head, value)
        tol = logprob_tolerance(model.config, max(float(clean.abs().max()), float(ablated.abs().max())))
        lp, lq = (torch.log_softmax(x[n - 1].double(), -1) for x in (clean, ablated))
        p = lp.exp()
        kl = float((p * (lp - lq)).sum())
        # |Δ KL| ≤ Σ p|δ log p − δ log q| + Σ |Δp| |log p − log q| ≤ 2 tol + tol · Σ p |log p − log q| (first order)
        assert abs(r["kl"] - kl) <= 2 * tol + 1.01 * tol * float((p * (lp - lq).abs()).sum()), (r["site"], kl)
        for col, dist in (("base_top1", lp), ("top1", lq)):
            t = int(r[f"{col}_id"])
            assert float(dist[t]) >= float(dist.max()) - 2 * tol          # the top-1, or within rounding of it
            assert abs(r[f"{col}_prob"] - float(dist[t].exp())) <= tol
        assert r["top1_changed"] == (r["base_top1_id"] != r["top1_id"])
        if not pd.isna(r["label"]):
            t = tok(r["prompt_text"] + " " + r["label"])["input_ids"][n]
            assert r["target_id"] == t and r["target"] == r["label"]
            assert abs(r["base_target_logprob"] - float(lp[t])) <= tol
            assert abs(r["target_logprob"] - float(lq[t])) <= tol
            assert abs(r["target_logprob_delta"] - float(lq[t] - lp[t])) <= 2 * tol
        else:
            assert pd.isna(r["target_id"]) and pd.isna(r["target_logprob"])
        if continuation is not None:
            k = len(ids) - n
            scored = [float(torch.log_softmax(x[n - 1:-1].double(), -1)[range(k), ids[n:]].sum())
                      for x in (clean, ablated)]
            assert r["continuation"] == continuation and r["num_continuation_tokens"] == k
            assert abs(r["base_continuation_logprob"] - scored[0]) <= k * tol
            assert abs(r["continuation_logprob"] - scored[1]) <= k * tol
        else:
            assert pd.isna(r["continuation_logprob"])
        checked += 1
    return checked


def test_llama_heads_mlps_and_layers_zero_and_mean_equal_hand_written_hooks(tiny_llama, tmp_path):
    """Three prompts of different lengths (a target, a continuation, neither) share a right-padded batch."""
    task = "{type: ablate, site: [head, mlp, layer], method: [zero, mean], heads: [2]}"
    df = rows(run_spec(tmp_path, spec(f"[{{alias: tiny, source: {tiny_llama}}}]", task)))
    # 2 methods × (2 layers × head 2 + 2 MLPs + 2 layers) variants × 3 prompts
    assert len(df) == 2 * (2 + 2 + 2) * 3 and df["unit_id"].is_unique
    assert (df["num_layers"] == 2).all() and (df["num_heads"] == 4).all()
    assert df.loc[df["site"] == "head", "head"].notna().all() and df.loc[df["site"] != "head", "head"].isna().all()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    assert check_rows(df, model, tok, "llama") == len(df)
    assert df["top1_changed"].any() and (df["kl"] > 0).all()
    check_summary(df, variants=12, prompts=3)


def check_summary(df, variants: int, prompts: int) -> None:
    """The summary: one row per intervention, its means over the prompts, the largest mean KL first."""
    from lmsweep.core.task_registry import get_task

    summary = get_task("ablate").summarize(df)
    assert len(summary) == variants and (summary["units"] == prompts).all()
    assert list(summary["mean_kl"]) == sorted(summary["mean_kl"], reverse=True)
    for top in summary.head(3).to_dict("records"):
        g = df[(df["site"] == top["site"]) & (df["method"] == top["method"]) & (df["layer"] == top["layer"]) &
               ((df["head"] == top["head"]) if not pd.isna(top["head"]) else df["head"].isna())]
        assert len(g) == prompts
        assert math.isclose(top["mean_kl"], g["kl"].mean()) and top["top1_changed"] == g["top1_changed"].mean()
        assert math.isclose(top["mean_target_logprob_delta"], g["target_logprob_delta"].mean())
        assert math.isclose(top["mean_continuation_logprob_delta"], g["continuation_logprob_delta"].mean())
    assert len(get_task("ablate").examples(df)) == min(20, len(df))


def test_gpt2_heads_and_layers_equal_hand_written_hooks(tmp_path):
    source = tiny_gpt2(tmp_path / "gpt2")
    task = "{type: ablate, site: [head, mlp, layer], method: [zero, mean], layers: [1]}"
    df = rows(run_spec(tmp_path, spec(f"[{{alias: g, source: {source}}}]", task)))
    assert len(df) == 2 * (2 + 1 + 1) * 3 and set(df["layer"]) == {1}
    tok = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    assert check_rows(df, model, tok, "gpt2") == len(df)


PAIRS = """      - {id: rome, text: "The capital of Rome is", label: Paris, meta: {clean: "The capital of France is"}}
      - {id: dog, text: "My dog really wanted to eat", label: icecream, meta: {clean: "My cat really wanted to eat"}}
"""
CLEAN = {"rome": "The capital of France is", "dog": "My cat really wanted to eat"}


def test_patching_restores_the_clean_activation_by_hand(tiny_llama, tmp_path):
    """Patch one head, one MLP and one layer from the clean prompt's pass into the corrupted one (the prompt)."""
    task = "{type: ablate, site: [head, mlp, layer], method: patch, layers: [1], heads: [2]}"
    df = rows(run_spec(tmp_path, spec(f"[{{alias: tiny, source: {tiny_llama}}}]", task, items=PAIRS)))
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    assert len(df) == 3 * 2
    for r in df.to_dict("records"):
        clean_text = CLEAN[r["prompt_id"]]
        ids, n = sequence(tok, r["prompt_text"], None)
        clean_ids, _ = sequence(tok, clean_text, None)
        assert len(clean_ids) == n
        head = None if pd.isna(r["head"]) else int(r["head"])
        clean_logits, act = run_with(model, "llama", clean_ids, r["site"], 1, head, None)
        if head is not None:
            d = act.shape[-1] // model.config.num_attention_heads
            act = act[:, head * d:(head + 1) * d]
        base, _ = run_with(model, "llama", ids, r["site"], 1, head, None)
        patched, _ = run_with(model, "llama", ids, r["site"], 1, head, lambda x, a=act: a.expand_as(x))
        t = tok(r["prompt_text"] + " " + r["label"])["input_ids"][n]
        lp = [float(torch.log_softmax(x[n - 1].double(), -1)[t]) for x in (clean_logits, base, patched)]
        tol = logprob_tolerance(model.config, max(float(x.abs().max()) for x in (clean_logits, base, patched)))
        assert r["clean_prompt"] == clean_text
        assert abs(r["clean_target_logprob"] - lp[0]) <= tol
        assert abs(r["base_target_logprob"] - lp[1]) <= tol
        assert abs(r["target_logprob"] - lp[2]) <= tol
        restored = (lp[2] - lp[1]) / (lp[0] - lp[1])
        # d(a/b) ≤ (|da| + |restored|·|db|)/|b| with |da| ≤ 2 tol, |db| ≤ 2 tol
        assert abs(r["restored"] - restored) <= 2 * tol * (1 + abs(restored)) / abs(lp[0] - lp[1])


def test_patching_needs_aligned_prompts_and_a_clean_column(tiny_llama, tmp_path):
    from lmsweep.core.task_registry import get_task
    from lmsweep.runner.units import TaskContext, Unit

    task = get_task("ablate")
    variant = task.variant({"type": "ablate", "site": "head", "layer": 0, "head": 1, "method": "patch",
                            "target_column": "label", "target_prefix": " ", "continuation_column": "continuation",
                            "clean_column": "clean"})
    units = [Unit(unit_id=f"u{i}", unit_key=f"u{i}", element=0, variant=0, point_index=None, point=None, seed=None,
                  prompt={"prompt_text": text, "label": "Paris", "meta": json.dumps(meta)})
             for i, (text, meta) in enumerate([("The capital of Rome is", {"clean": "The capital of France is"}),
                                               ("The capital of Italy is", {"clean": "Paris"}),
                                               ("The capital of Italy is", {})])]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    got, errors = task.run(TaskContext(model, tok, variant), units)
    assert [r["unit_id"] for r in got] == ["u0"]
    assert "patching needs them aligned token for token" in errors["u1"]
    assert "has no clean prompt (column 'clean')" in errors["u2"]
    # the plan refuses a patching sweep with a prompt lacking its clean prompt, naming the field
    items = PAIRS + '      - {id: lone, text: "Shakespeare was a"}\n'
    (tmp_path / "spec.yaml").write_text(spec(f"[{{alias: tiny, source: {tiny_llama}}}]",
                                             "{type: ablate, method: patch}", items=items))
    with pytest.raises(SpecError, match=r"task.clean_column: method patch needs each prompt's clean prompt in column "
                                        r"'clean'; prompt 'lone' has none"):
        plan_spec(load_spec(tmp_path / "spec.yaml"))


def test_heads_all_plans_a_variant_per_layer_and_head_and_bad_targets_are_refused(tiny_llama, tmp_path):
    models = f"[{{alias: tiny, source: {tiny_llama}}}]"

    def plan(task: str):
        path = tmp_path / "spec.yaml"
        path.write_text(spec(models, task))
        return plan_spec(load_spec(path))

    p = plan("{type: ablate, heads: all}")
    assert [(v["layer"], v["head"]) for v in p.variants] == [(i, h) for i in range(2) for h in range(4)]
    assert p.n_units == 8 * 3 and all("layers" not in v and "heads" not in v for v in p.variants)
    p = plan("{type: ablate, site: [mlp, head], layers: [-1], heads: [0, 3], method: [zero, mean]}")
    assert [(v["site"], v["method"], v["layer"], v["head"]) for v in p.variants] == [
        ("mlp", "zero", 1, None), ("mlp", "mean", 1, None), ("head", "zero", 1, 0), ("head", "zero", 1, 3),
        ("head", "mean", 1, 0), ("head", "mean", 1, 3)]
    with pytest.raises(SpecError, match=r"task.layers: layer 2 is out of range for model 'tiny', which has 2 layers"):
        plan("{type: ablate, layers: [0, 2]}")
    with pytest.raises(SpecError, match=r"task.heads: head 4 is out of range for model 'tiny', which has 4 query "
                                        r"heads"):
        plan("{type: ablate, heads: [4]}")
    # 8 variants × 3 prompts × 400 bytes = 9.6 kB
    assert plan("{type: ablate, max_storage_mb: 0.0096}").n_units == 24
    with pytest.raises(SpecError, match=r"task.max_storage_mb: the ablation sweep would store ≈9.6 kB \(24 rows\)"):
        plan("{type: ablate, max_storage_mb: 0.009}")
    # a causal LM of an architecture whose modules ablate does not know
    other = tmp_path / "mamba"
    shutil.copytree(tiny_llama, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "mamba",
                                                   "architectures": ["MambaForCausalLM"]}))
    (tmp_path / "spec.yaml").write_text(spec(f"[{{alias: m, source: {other}}}]", "{type: ablate}"))
    with pytest.raises(SpecError, match=r"models\[0\]: model 'm' is a mamba model; ablate knows where the heads and "
                                        r"MLPs of these are: bloom, falcon, gemma, "):
        plan_spec(load_spec(tmp_path / "spec.yaml"))
    # the command line: one line naming the field, exit 2
    path = write_spec(tmp_path / "bad.yaml", spec(models, "{type: ablate, heads: [9]}"))
    out = cli("validate", str(path))
    assert out.returncode == 2 and "task.heads: head 9 is out of range" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_the_clean_pass_runs_once_per_prompt_not_per_variant(tiny_llama, monkeypatch):
    from lmsweep.core.task_registry import get_task
    from lmsweep.runner.tasks.ablate import batch
    from lmsweep.runner.units import TaskContext, Unit

    task = get_task("ablate")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    passes = []
    counting = model.register_forward_hook(lambda mod, args, kwargs, out: passes.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    units = [Unit(unit_id=f"u{i}", unit_key=f"u{i}", element=0, variant=0, point_index=None, point=None, seed=None,
                  prompt={"prompt_text": t, "label": None, "meta": "{}"})
             for i, t in enumerate(["The capital of France is", "Shakespeare was a"])]

    def sweep() -> list[dict]:
        out = []
        for head in range(4):
            variant = task.variant({"type": "ablate", "site": "head", "layer": 1, "head": head, "method": "mean",
                                    "target_column": "label", "target_prefix": " ",
                                    "continuation_column": "continuation", "clean_column": "clean"})
            got, errors = task.run(TaskContext(model, tok, variant), units)
            assert len(got) == 2 and not errors
            out += got
        return out

    kept = sweep()
    assert passes == [2] + [2] * 4           # one clean pass of both prompts, then one intervened pass per variant
    # a cache smaller than a batch (it keeps one prompt): each batch runs the other prompt's clean pass again,
    # and the rows are the same
    batch._CLEAN.clear()
    monkeypatch.setattr(batch, "CLEAN_PROMPTS", 1)
    passes.clear()
    again = sweep()
    assert passes == [2, 2] + [1, 2] * 3
    assert [r["top1_id"] for r in again] == [r["top1_id"] for r in kept]
    # the clean passes ran in other batches: equal within rounding. |Δ KL| ≤ 2 tol + tol·Σ p |log p − log q|, and
    # |log p − log q| ≤ 4 max|logit| per token (each log-softmax moves a logit by at most twice the largest)
    counting.remove()
    biggest = max_abs_logit(model, [tok(u.prompt["prompt_text"])["input_ids"] for u in units])
    tol = logprob_tolerance(model.config, biggest)
    assert max(abs(a["kl"] - b["kl"]) for a, b in zip(again, kept)) <= 2 * tol + tol * 4 * biggest


def test_compare_passes_another_batch_size_and_fails_a_perturbed_model(tiny_llama, tmp_path):
    import lmsweep
    from helpers.tiny_models import perturb

    perturbed = perturb(tiny_llama, tmp_path / "perturbed")

    def run(name: str, source, batch: int):
        task = "{type: ablate, layers: [1], heads: [0, 1]}"
        return run_spec(tmp_path / name, spec(f"[{{alias: tiny, source: {source}}}]", task, name=name, batch=batch))

    base, rerun, changed = run("ablation", tiny_llama, 3), run("rerun", tiny_llama, 1), run("changed", perturbed, 3)
    same = lmsweep.compare(base, rerun)
    assert same.passed and same.matched == 2 * 3
    diff = lmsweep.compare(base, changed)
    assert not diff.passed


def test_the_docs_snippet_runs_on_an_experiment(tiny_llama, tmp_path, monkeypatch):
    """docs/tasks.md's Python snippet, run as written beside runs/ablation (a tiny Llama's), prints the heads
    with the largest mean KL."""
    import contextlib
    import io
    import re
    import runpy

    from helpers.cli import REPO

    exp = run_spec(tmp_path, spec(f"[{{alias: tiny, source: {tiny_llama}}}]", "{type: ablate}", name="ablation"))
    text = (REPO / "docs" / "tasks.md").read_text()
    section = text[text.index("## `ablate`"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "snippet.py").write_text(code)
    monkeypatch.chdir(exp.parent.parent)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(tmp_path / "snippet.py"))
    means = rows(exp).groupby(["layer", "head"])["kl"].mean().sort_values(ascending=False)
    assert out.getvalue().splitlines() == [f"{layer} {head} {kl:.3f}" for (layer, head), kl in means.head(3).items()]


# Per architecture, the weights a head's and the MLP's output come from, written out here: (attention output
# projection, last MLP projection) of block `i`, and whether the projection is a Conv1D (weight in × out).
SURGERY = {
    "bloom": (lambda m, i: m.transformer.h[i].self_attention.dense, lambda m, i: m.transformer.h[i].mlp.dense_4h_to_h),
    "falcon": (lambda m, i: m.transformer.h[i].self_attention.dense,
               lambda m, i: m.transformer.h[i].mlp.dense_4h_to_h),
    "gemma": (lambda m, i: m.model.layers[i].self_attn.o_proj, lambda m, i: m.model.layers[i].mlp.down_proj),
    "gpt2": (lambda m, i: m.transformer.h[i].attn.c_proj, lambda m, i: m.transformer.h[i].mlp.c_proj),
    "gpt_neox": (lambda m, i: m.gpt_neox.layers[i].attention.dense,
                 lambda m, i: m.gpt_neox.layers[i].mlp.dense_4h_to_h),
    "opt": (lambda m, i: m.model.decoder.layers[i].self_attn.out_proj, lambda m, i: m.model.decoder.layers[i].fc2),
    "phi": (lambda m, i: m.model.layers[i].self_attn.dense, lambda m, i: m.model.layers[i].mlp.fc2),
    "qwen2": (lambda m, i: m.model.layers[i].self_attn.o_proj, lambda m, i: m.model.layers[i].mlp.down_proj),
}


@pytest.mark.parametrize("arch", sorted(SURGERY))
def test_zeroing_a_head_or_an_mlp_equals_zeroing_its_weights_on_other_architectures(arch, tmp_path):
    """On random two-layer models of eight architectures: zero-ablating head 1 of block 1 gives the next-token
    distribution of the model whose output projection has that head's input columns zeroed, and zero-ablating
    block 1's MLP that of the model whose last MLP projection (weight and bias) is zeroed."""
    import copy

    from helpers.tiny_models import ARCHITECTURES, make_tokenizer, tiny_causal_lm
    from lmsweep.core.task_registry import get_task
    from lmsweep.runner.units import TaskContext, Unit

    assert set(SURGERY) == set(ARCHITECTURES)
    tok = make_tokenizer(tmp_path)
    model = tiny_causal_lm(arch, len(tok))
    task = get_task("ablate")
    texts = ["The capital of France is", "Shakespeare was a playwright and poet from"]
    units = [Unit(unit_id=f"u{i}", unit_key=f"u{i}", element=0, variant=0, point_index=None, point=None, seed=None,
                  prompt={"prompt_text": t, "label": None, "meta": "{}"}) for i, t in enumerate(texts)]
    heads = model.config.num_attention_heads
    for site, (attn_out, mlp_out) in (("head", SURGERY[arch]), ("mlp", SURGERY[arch])):
        variant = task.variant({"type": "ablate", "site": site, "layer": 1, "head": 1 if site == "head" else None,
                                "method": "zero", "target_column": "label", "target_prefix": " ",
                                "continuation_column": "continuation", "clean_column": "clean"})
        got, errors = task.run(TaskContext(model, tok, variant), units)
        assert not errors and len(got) == 2
        cut = copy.deepcopy(model)
        with torch.no_grad():
            if site == "head":
                proj = attn_out(cut, 1)
                conv1d = type(proj).__name__ == "Conv1D"               # GPT-2: weight is (in, out)
                d = (proj.weight.shape[0] if conv1d else proj.weight.shape[1]) // heads
                (proj.weight[d:2 * d] if conv1d else proj.weight[:, d:2 * d]).zero_()
            else:
                proj = mlp_out(cut, 1)
                proj.weight.zero_()
                if proj.bias is not None:
                    proj.bias.zero_()
        for r, text in zip(got, texts):
            ids = tok(text, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                clean, after = (m(ids).logits[0, -1].double() for m in (model, cut))
            tol = logprob_tolerance(model.config, max(float(clean.abs().max()), float(after.abs().max())))
            lp, lq = torch.log_softmax(clean, -1), torch.log_softmax(after, -1)
            kl = float((lp.exp() * (lp - lq)).sum())
            assert kl > 1e-6, (arch, site)                             # the surgery does something here
            assert abs(r["kl"] - kl) <= 2 * tol + 1.01 * tol * float((lp.exp() * (lp - lq).abs()).sum()), (arch, site)
            assert abs(r["top1_prob"] - float(lq.max().exp())) <= tol


def test_heads_all_over_two_models_of_different_shapes(tiny_llama, tmp_path):
    """`heads: all` is resolved per model: a 4-head Llama runs 8 variants and a 2-head GPT-2 the 4 of them it has
    (the plan's variants are the union; each model's units are its own heads only)."""
    gpt2 = tiny_gpt2(tmp_path / "gpt2")
    path = tmp_path / "spec.yaml"
    path.write_text(spec(f"[{{alias: llama, source: {tiny_llama}}}, {{alias: gpt2, source: {gpt2}}}]",
                         "{type: ablate, heads: all}"))
    p = plan_spec(load_spec(path))
    assert [(v["layer"], v["head"]) for v in p.variants] == [(i, h) for i in range(2) for h in range(4)]
    units = p.units.to_pandas()
    per_model = {m: sorted({(p.variants[v]["layer"], p.variants[v]["head"]) for v in g["variant"]})
                 for m, g in units.groupby("model")}
    assert per_model == {"llama": [(i, h) for i in range(2) for h in range(4)],
                         "gpt2": [(i, h) for i in range(2) for h in range(2)]}
    assert len(units) == (8 + 4) * 3


@pytest.mark.slow                      # two exec'd workers: ~10 s idle, under 30 s at load average 12
def test_a_sweep_killed_with_sigkill_resumes_to_the_rows_of_an_uninterrupted_run(tiny_llama, tmp_path):
    """The worker (`python -m lmsweep worker`, as a scheduler runs it) is SIGKILLed while writing its third
    variant's batch; a rerun runs the two variants left (its clean passes start from nothing) and the rows equal
    those of an uninterrupted run, each unit once."""
    import os
    import subprocess
    import sys

    import pyarrow.parquet as pq

    import lmsweep
    from lmsweep.cli import main

    text = spec(f"[{{alias: tiny, source: {tiny_llama}}}]", "{type: ablate, layers: [1], method: mean}", name="kill")
    (tmp_path / "kill.yaml").write_text(text)
    assert main(["plan", str(tmp_path / "kill.yaml"), "--output-dir", str(tmp_path / "runs")]) == 0
    exp = tmp_path / "runs" / "kill"
    cmd = [sys.executable, "-m", "lmsweep", "worker", "--plan", str(exp), "--element", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env={**env, "LMSWEEP_TEST_KILL_AT": "write:3"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    parts = sorted((exp / "results" / "task=ablate").glob("part-*.parquet"))
    assert len(parts) == 2                                   # two variants (4 heads: 4 batches of 3 prompts) written
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ids = [i for part in sorted((exp / "results" / "task=ablate").glob("part-*.parquet"))
           for i in pq.read_table(part, columns=["unit_id"]).column("unit_id").to_pylist()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 4 * 3
    same = lmsweep.compare(run_spec(tmp_path / "base", text), exp)
    assert same.passed and same.matched == 12
