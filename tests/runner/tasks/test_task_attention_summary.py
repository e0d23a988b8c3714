"""The attention task's `store: summary | both`: per (unit, layer, head) mean row entropy, mass on the first
token, on the previous token, on the diagonal and the mean attention distance, checked against the same
statistics computed from transformers' own weights (eager, output_attentions=True); the per-layer hooks
that feed them; and the plan-time estimate that counts what is stored."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from helpers.cli import cli
from helpers.task_runs import ATTENTION_PROMPTS, rows, run_spec
from helpers.tiny_models import ARCHITECTURES, tiny_causal_lm
from helpers.tolerances import logprob_tolerance
from lmsweep.runner.tasks.attention_views import attention_matrix

TEXTS = ("No, I am your father", "The animal didn't cross the street because it was too tired")
PROMPTS = ATTENTION_PROMPTS + '      - {id: one, text: "No"}\n'
SUMMARY = ["row_entropy", "sink_mass", "prev_token_mass", "diag_mass", "mean_distance"]


def spec(model, task: str, name: str = "att") -> str:
    return (f"name: {name}\nmodels: [{{alias: tiny, source: {model}}}]\n{PROMPTS}\ntask: {task}\n"
            "execution: {batch_size: 3}\n")          # prompts of 5, 12 and 1 tokens share a padded batch


def statistics(a: np.ndarray) -> dict[str, float | None]:
    """The five summaries of one (n × n) attention map, written out from their definitions in float64."""
    a = a.astype(np.float64)
    n = len(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(a > 0, a * np.log(a), 0.0)
    distance = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
    return {"row_entropy": float(np.mean(-plogp.sum(1))), "sink_mass": float(np.mean(a[:, 0])),
            "prev_token_mass": float(np.mean([a[i, i - 1] for i in range(1, n)])) if n > 1 else None,
            "diag_mass": float(np.mean(np.diag(a))), "mean_distance": float(np.mean((a * distance).sum(1)))}


def tolerances(expected: dict[str, float | None], delta: float) -> dict[str, float]:
    """How far each statistic may move when every weight p moves to p·e^ε with |ε| ≤ delta (two fp32
    computations of the same softmax: helpers/tolerances.py), using |e^ε − 1| ≤ 2|ε| for |ε| ≤ 1:
    a mass by 2δ; a row's entropy by Σ|Δ(p ln p)| ≤ Σ 2δp(|ln p| + 1) = 2δ(H + 1); a row's distance by
    Σ|Δp|·|i−j| ≤ 2δ·d. The means over rows keep the bounds (with H and d their means)."""
    return {"row_entropy": 2 * delta * (expected["row_entropy"] + 1), "sink_mass": 2 * delta,
            "prev_token_mass": 2 * delta, "diag_mass": 2 * delta,
            "mean_distance": 2 * delta * expected["mean_distance"]}


@pytest.fixture(scope="module")
def direct(tiny_llama):
    """Per prompt: transformers' attention (layers × heads × T × T) from one unpadded eager forward."""
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModel.from_pretrained(tiny_llama, attn_implementation="eager").eval()
    out = {}
    for text in (*TEXTS, "No"):
        with torch.no_grad():
            att = model(**tok(text, return_tensors="pt"), output_attentions=True).attentions
        out[text] = torch.stack([a[0] for a in att]).numpy()
    return out


# One run per store, shared by the tests below (the summary one under the name the docs' snippet reads).
TASKS = {"both": ("att", "{type: attention, store: both, dtype: float32}"),
         "full": ("att", "{type: attention, dtype: float32}"),
         "summary": ("attention_summary", "{type: attention, store: summary}")}


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    return {store: run_spec(tmp_path_factory.mktemp(store), spec(tiny_llama, task, name))
            for store, (name, task) in TASKS.items()}


@pytest.fixture(scope="module")
def both(runs):
    return rows(runs["both"])


def test_summaries_match_the_statistics_of_transformers_weights(both, direct, tiny_llama):
    delta = logprob_tolerance(AutoConfig.from_pretrained(tiny_llama), 1.0)
    assert len(both) == 3 * 2 * 4                                          # prompts × layers × heads
    for _, r in both.iterrows():
        expected = statistics(direct[r["prompt_text"]][r["layer"], r["head"]])
        tol = tolerances(expected, delta)
        for name in SUMMARY:
            if expected[name] is None:
                assert r["prompt_text"] == "No" and name == "prev_token_mass" and pd_null(r[name])
            else:
                assert abs(r[name] - expected[name]) <= tol[name], (r["prompt_id"], r["layer"], r["head"], name)


def test_the_statistics_are_what_they_say_on_a_causal_model(both):
    """Row 0 of a causal model sees only itself, so a one-token prompt has entropy 0 and all its mass on the
    first token, which is also the diagonal; every mass is in [0, 1]; distances are within the prompt."""
    one = both[both["prompt_id"] == "one"]
    assert (one["row_entropy"] == 0).all() and (one["sink_mass"] == 1).all() and (one["diag_mass"] == 1).all()
    assert (one["mean_distance"] == 0).all()
    masses = both[["sink_mass", "prev_token_mass", "diag_mass"]].stack().dropna()       # one token: no previous
    assert len(masses) == 3 * 24 - 8 and masses.between(0, 1).all()
    assert (both["mean_distance"] <= both["seq_len"] - 1).all()


def test_both_keeps_the_matrices_of_full_and_summary_keeps_none(both, runs):
    full, summary = rows(runs["full"]), rows(runs["summary"])
    key = ["prompt_id", "layer", "head"]
    full, summary, both = (d.sort_values(key, ignore_index=True) for d in (full, summary, both))
    assert all(np.array_equal(a, b) for a, b in zip(full["attention_f32"], both["attention_f32"]))
    assert full[SUMMARY].isna().all().all()                                 # store: full is what it was
    assert summary["attention"].isna().all() and summary["attention_f32"].isna().all()
    assert np.array_equal(summary[SUMMARY].to_numpy(dtype=float), both[SUMMARY].to_numpy(dtype=float),
                          equal_nan=True)
    assert full["unit_id"].iloc[0] not in set(summary["unit_id"])          # a non-default store is its own unit


def test_head_mean_summarises_the_mean_map(tiny_llama, tmp_path, direct):
    task = "{type: attention, store: summary, layers: [-1], heads: [0, 3], head_mean: true}"
    df = rows(run_spec(tmp_path, spec(tiny_llama, task)))
    delta = logprob_tolerance(AutoConfig.from_pretrained(tiny_llama), 1.0)
    assert list(df["head"]) == [-1, -1, -1]
    for _, r in df.iterrows():
        expected = statistics(direct[r["prompt_text"]][1, [0, 3]].mean(0))
        tol = tolerances(expected, delta)
        for name in ("row_entropy", "sink_mass", "diag_mass", "mean_distance"):
            assert abs(r[name] - expected[name]) <= tol[name], (r["prompt_id"], name)


def test_store_full_is_bitwise_what_output_attentions_returns(runs, tiny_llama):
    """The weights now come from per-layer hooks: on the same right-padded batch they are the very tensors
    output_attentions=True returns, so store: full rows are unchanged."""
    df = rows(runs["full"])
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModel.from_pretrained(tiny_llama, attn_implementation="eager").eval()
    texts = [*TEXTS, "No"]
    batch = tok.pad({"input_ids": [tok(t)["input_ids"] for t in texts]}, return_tensors="pt", padding_side="right")
    with torch.inference_mode():
        att = model(**batch, output_attentions=True).attentions
    for _, r in df.iterrows():
        b, n = texts.index(r["prompt_text"]), r["seq_len"]
        assert np.array_equal(attention_matrix(r), att[r["layer"]][b, r["head"], :n, :n].numpy())


def pd_null(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


# ---- the per-layer hooks, on other architectures ------------------------------------------------------------

@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_layer_by_layer_weights_are_transformers_own_on_other_architectures(arch, tmp_path):
    """Whichever way an architecture's weights are read (a hook on the modules transformers records
    `attentions` from, or output_attentions where it declares none), each layer's are the ones
    output_attentions=True returns, in order."""
    from helpers.tiny_models import make_tokenizer
    from lmsweep.runner.tasks.attention_capture import forward_by_layer
    from lmsweep.runner.units import TaskContext, Unit

    tok = make_tokenizer(tmp_path)
    model = tiny_causal_lm(arch, len(tok))
    model.set_attn_implementation("eager")
    base = model.base_model
    units = [Unit(unit_id=f"u{i}", unit_key=f"u{i}", element=0, variant=0, point_index=None, point=None, seed=None,
                  prompt={"prompt_text": t, "label": None, "meta": "{}"}) for i, t in enumerate(TEXTS)]
    got = []
    forward = forward_by_layer(TaskContext(base, tok, None), units, 64,
                               lambda layer, n_layers, w: got.append((layer, n_layers, w.clone())))
    batch = tok.pad({"input_ids": forward.kept}, return_tensors="pt", padding_side="right")
    with torch.inference_mode():
        want = base(**batch, output_attentions=True).attentions
    assert [(layer, n) for layer, n, _ in got] == [(i, len(want)) for i in range(len(want))]
    assert all(torch.equal(w, ref) for (_, _, w), ref in zip(got, want)), arch


def test_a_layers_weights_are_released_before_the_next_layer_runs(tiny_llama):
    """The summaries never hold more than one layer's weights: when layer i+1 hands over its weights, layer
    i's tensor is gone (with output_attentions=True every layer's would live until the pass returns)."""
    from lmsweep.runner.tasks.attention_capture import attention_modules, forward_by_layer
    from lmsweep.runner.units import TaskContext, Unit

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModel.from_pretrained(tiny_llama, attn_implementation="eager").eval()
    assert attention_modules(model) is not None                     # Llama declares them: the hook path
    alive = []

    def on_layer(layer, n_layers, weights):
        gc.collect()
        alive.append([ref() is not None for ref in refs])
        refs.append(weakref.ref(weights))

    refs: list = []
    unit = Unit(unit_id="u", unit_key="u", element=0, variant=0, point_index=None, point=None, seed=None,
                prompt={"prompt_text": TEXTS[1], "label": None, "meta": "{}"})
    forward_by_layer(TaskContext(model, tok, None), [unit], 64, on_layer)
    assert alive == [[], [False]]


# ---- plan time: the estimate counts what is stored ----------------------------------------------------------

def test_summary_plans_where_full_matrices_are_refused(tiny_llama, tmp_path):
    long_text = " ".join(["The animal didn't cross the street because it was too tired."] * 20)
    text = (f"name: long\nmodels: [{{alias: tiny, source: {tiny_llama}}}]\nprompts: [{long_text!r}]\n"
            f"output_dir: {tmp_path}\ntask: {{type: attention, max_tokens: 256, max_storage_mb: 1, store: STORE}}\n")
    for store, code in (("full", 2), ("both", 2), ("summary", 0)):
        path = tmp_path / f"{store}.yaml"
        path.write_text(text.replace("STORE", store))
        proc = cli("plan", str(path))
        assert proc.returncode == code, (store, proc.stderr)
        if code:
            assert "would take ≈" in proc.stderr and "store: summary" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("store", ["both", "summary"])
def test_the_estimate_is_the_rows_arrow_bytes(store, runs, tiny_llama, tmp_path):
    """The plan's estimate (read from its refusal under a tiny cap) against what a run stores, as Arrow holds
    it before Parquet compresses it. Counted: payload, tokens, prompt text, fixed-width columns and offsets,
    the hex ids. Not counted: the other strings (model, its source and fingerprint, prompt set and id, host,
    ...: known only at run time) and validity bitmaps (a bit per column)."""
    import re

    import pyarrow as pa

    from lmsweep.results.load import load_table

    name, task = TASKS[store]
    path = tmp_path / "s.yaml"
    path.write_text(spec(tiny_llama, task.replace("}", ", max_storage_mb: 0.000001}"), name))
    proc = cli("plan", str(path), "--output-dir", str(tmp_path / "runs"))
    value, unit = re.search(r"would take ≈([\d.]+) (B|kB|MB)", proc.stderr).groups()
    estimate = float(value) * {"B": 1, "kB": 1e3, "MB": 1e6}[unit]
    table = load_table(runs[store])
    counted = {"unit_id", "unit_key", "spec_hash", "prompt_text"}
    names = sum(len(v.encode()) for f in table.schema if pa.types.is_string(f.type) and f.name not in counted
                for v in table.column(f.name).to_pylist() if v is not None)
    bitmaps = table.num_rows * table.num_columns / 8
    rounding = 0.005 * estimate                         # the message's 3 significant digits
    assert table.nbytes - names - bitmaps - rounding <= estimate <= table.nbytes + rounding, (estimate, table.nbytes)


def test_the_docs_summary_snippet_runs_on_a_summary_experiment(runs, monkeypatch):
    """docs/tasks.md's `store: summary` snippet, as written, from a directory holding runs/attention_summary
    (the tiny model in place of SmolLM2): a layers × heads table of the mean sink mass over the prompts."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "tasks.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "sink_mass" in b)
    exp = runs["summary"]
    monkeypatch.chdir(exp.parents[1])
    scope: dict = {}
    exec(snippet, scope)
    df = rows(exp)
    assert scope["sinks"].shape == (2, 4)
    assert scope["sinks"].loc[1, 3] == pytest.approx(df[(df["layer"] == 1) & (df["head"] == 3)]["sink_mass"].mean())


def test_the_results_summary_adds_the_summaries_means_only_when_stored(both, runs):
    from lmsweep.core.task_registry import get_task

    task = get_task("attention")
    table = task.summarize(both).set_index("prompt_id")
    for name in SUMMARY:
        assert table.loc["animal", name] == pytest.approx(both[both["prompt_id"] == "animal"][name].mean())
    assert not set(SUMMARY) & set(task.summarize(rows(runs["full"])).columns)
