"""hidden_states with labelled prompts: the summary's within- and between-label cosine and cross-validated
linear-probe accuracy per layer, recomputed from transformers' hidden states and the stored vectors; the
plan's refusal without scikit-learn; the PCA coloured by label, the shared colour scale, the report's figure."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from helpers.cli import REPO, cli
from helpers.task_runs import rows, run_spec
from lmsweep.core.task_registry import get_task

# Three labels, four prompts each, one prompt without a label: the probe gets min(5, 4) = 4 folds. The labels are
# what each prompt's words repeat, so mean-pooled embeddings (layer 0) separate them.
WORDS = {"cat": ["cat", "cats", "kitten"], "car": ["car", "road", "wheel"], "sea": ["sea", "wave", "fish"]}
ITEMS = [(f"{label}{i}", " ".join(WORDS[label][(i + j) % 3] for j in range(3 + i)), label)
         for label in WORDS for i in range(4)] + [("zz-none", "an unlabelled prompt", None)]


def labelled_spec(model, task: str = "{type: hidden_states, pooling: mean}") -> str:
    items = ", ".join(json.dumps({"id": i, "text": t, **({"label": lab} if lab else {})}) for i, t, lab in ITEMS)
    return (f"name: hsl\nmodels: [{{alias: tiny, source: {model}}}]\nprompts: [{{name: p, items: [{items}]}}]\n"
            f"task: {task}\nexecution: {{batch_size: 13}}\n")


def direct_vectors(model_dir) -> list[np.ndarray]:
    """Per layer, the prompts' mean-pooled hidden states (rows in ITEMS order), each prompt alone, unpadded."""
    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    per_prompt = []
    with torch.no_grad():
        for _, text, _ in ITEMS:
            states = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states
            per_prompt.append([s[0].mean(0).numpy() for s in states])
    return [np.stack([p[layer] for p in per_prompt]) for layer in range(len(per_prompt[0]))]


def probe_by_hand(x: np.ndarray, y: np.ndarray, folds: int) -> float:
    """The probe's accuracy written out: sklearn's stratified folds (shuffled, seed 0), each training fold's
    mean and standard deviation applied to both sides, a default LogisticRegression; correct over all."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    scores = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y):
        mean, std = x[train].mean(0), x[train].std(0)
        std[std == 0] = 1.0
        fit = LogisticRegression().fit((x[train] - mean) / std, y[train])
        scores.append(float((fit.predict((x[test] - mean) / std) == y[test]).mean()))
    return float(np.mean(scores))


def test_label_summary_equals_a_direct_computation(tiny_llama, tmp_path):
    df = rows(run_spec(tmp_path, labelled_spec(tiny_llama)))
    summary = get_task("hidden_states").summarize(df).set_index("layer")
    labels = np.array([lab for _, _, lab in ITEMS[:-1]])
    same = labels[:, None] == labels[None, :]
    upper = np.triu(np.ones_like(same), k=1)
    for layer, v in enumerate(direct_vectors(tiny_llama)):
        v = v[:-1] / np.linalg.norm(v[:-1], axis=1, keepdims=True)           # the unlabelled prompt is left out
        sims = v @ v.T
        row = summary.loc[layer]
        # float32 states of one right-padded batch against unpadded passes: cosines agree to ~1e-6
        assert row["within_label_cosine"] == pytest.approx(sims[upper & same].mean(), abs=1e-5)
        assert row["between_label_cosine"] == pytest.approx(sims[upper & ~same].mean(), abs=1e-5)
        assert row["prompts"] == 13 and row["labels"] == 3 and row["probe_folds"] == 4
        assert row["probe_chance"] == pytest.approx(4 / 12)
        stored = df[(df["layer"] == layer) & df["label"].notna()].sort_values("prompt_id")
        x = np.stack([np.asarray(h, dtype=np.float64) for h in stored["hidden_f32"]])
        assert row["probe_accuracy"] == probe_by_hand(x, stored["label"].to_numpy(), folds=4)
    # the labels are the words each prompt repeats: the embeddings' mean separates them
    assert summary.loc[0, "probe_accuracy"] == 1.0
    assert summary.loc[0, "within_label_cosine"] > summary.loc[0, "between_label_cosine"]


def test_unlabelled_prompts_keep_the_summary_as_it_was(tiny_llama, tmp_path):
    spec = labelled_spec(tiny_llama).replace(', "label": "cat"', "").replace(', "label": "car"', "") \
        .replace(', "label": "sea"', "")
    summary = get_task("hidden_states").summarize(rows(run_spec(tmp_path, spec)))
    assert list(summary.columns) == ["model", "variant", "layer", "prompts", "mean_cosine", "min_cosine",
                                     "max_cosine"]


def test_a_label_with_one_prompt_gets_cosines_but_no_probe(tiny_llama, tmp_path):
    from lmsweep.runner.tasks.hidden_states import label_separation

    v = np.eye(3, dtype=np.float32) + 0.1
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    out = label_separation(v, unit @ unit.T, ["a", "a", "b"])
    assert out["probe_accuracy"] is None and out["probe_folds"] is None and out["labels"] == 2
    assert out["within_label_cosine"] == pytest.approx(float(unit[0] @ unit[1]))
    assert out["between_label_cosine"] == pytest.approx(float((unit[0] @ unit[2] + unit[1] @ unit[2]) / 2))


def test_without_scikit_learn_plan_and_summary_refuse_naming_the_extra(tiny_llama, tmp_path, monkeypatch):
    """`lmsweep run` ends with the summary, which needs scikit-learn for labelled prompts: the plan refuses
    before anything runs; a summary read elsewhere refuses in one line. `sys.modules["sklearn"] = None` is
    Python's own "not importable" (find_spec answers None, import raises)."""
    from lmsweep.errors import UsageError
    from lmsweep.jobs.errors import SpecError
    from lmsweep.jobs.plan import plan_spec
    from lmsweep.jobs.spec import load_spec

    df = rows(run_spec(tmp_path / "run", labelled_spec(tiny_llama)))
    (tmp_path / "spec.yaml").write_text(labelled_spec(tiny_llama))
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(SpecError, match=r"spec.yaml:3: prompts: the prompts carry labels.*needs scikit-learn: "
                                        r"pip install 'lmsweep\[analysis\]'"):
        plan_spec(load_spec(tmp_path / "spec.yaml"))
    with pytest.raises(UsageError, match=r"pip install 'lmsweep\[analysis\]'"):
        get_task("hidden_states").summarize(df)
    get_task("hidden_states").summarize(df.assign(label=None))          # unlabelled: no probe, no refusal


# ---- views: the PCA coloured by label, the heatmaps' colour scales, the report's figure ---------------------------

@pytest.fixture(scope="module")
def labelled_exp(tiny_llama, tmp_path_factory):
    return run_spec(tmp_path_factory.mktemp("labelled"), labelled_spec(tiny_llama))


def test_pca_points_are_coloured_by_label_with_a_legend(labelled_exp):
    from lmsweep.runner.tasks.hidden_states_views import projection_figure

    plt, fig = projection_figure(rows(labelled_exp), "tiny", [0, 2])
    for ax in fig.axes[:2]:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["car", "cat", "sea", "(no label)"]
        sizes = [len(c.get_offsets()) for c in ax.collections]
        colours = {tuple(c.get_facecolor()[0]) for c in ax.collections}
        assert sizes == [4, 4, 4, 1] and len(colours) == 4                # one colour per label, grey for none
    plt.close(fig)


def test_heatmaps_group_labels_and_share_a_colour_scale_on_request(labelled_exp):
    from lmsweep.runner.tasks.hidden_states_views import similarity_figure

    df = rows(labelled_exp)
    lows = {}
    for layer in (0, 2):
        v = np.stack([np.asarray(h, dtype=np.float64) for h in df[df["layer"] == layer]["hidden_f32"]])
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        lows[layer] = (v @ v.T)[~np.eye(len(v), dtype=bool)].min()
    assert lows[0] != pytest.approx(lows[2], abs=1e-3)                     # the layers' ranges differ
    for shared in (False, True):
        plt, fig = similarity_figure(df, "tiny", [0, 2], shared_scale=shared)
        heatmaps = [ax for ax in fig.axes if ax.images and ax.get_title()]
        assert len(heatmaps) == 2 and len(fig.axes) == 4                   # a colour bar beside each panel
        for ax, layer in zip(heatmaps, (0, 2)):
            low, high = ax.images[0].get_clim()
            want = min(lows.values()) if shared else lows[layer]
            assert high == 1 and low == pytest.approx(min(want, 0.999), abs=1e-6)
        ticks = [t.get_text() for t in heatmaps[0].get_yticklabels()]
        assert ticks[:5] == ["car0 (car)", "car1 (car)", "car2 (car)", "car3 (car)", "cat0 (cat)"]
        assert ticks[-1] == "zz-none"
        plt.close(fig)


def test_plot_and_report_show_the_label_separation(labelled_exp, tmp_path):
    from lmsweep.results.report import build_report

    proc = cli("plot", "hidden_states", str(labelled_exp), "--shared-scale", "--out", str(tmp_path), check=True)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["hidden-states-pca-tiny.png",
                                                              "hidden-states-similarity-tiny.png"]
    assert "wrote" in proc.stdout
    page = build_report(labelled_exp)
    assert "tiny: within- and between-label cosine and linear-probe accuracy by layer" in page
    assert "<th>probe_accuracy</th>" in page and "<th>within_label_cosine</th>" in page


@pytest.mark.slow
def test_example_config_separates_its_topics_on_smollm2(tmp_path, smollm2_dir):
    """configs/hidden_states_labels.yaml: 12 sentences on 3 topics, every layer. From layer 12 to 28 every
    pair's cosine is above 0.98 (a massive activation dominates the mean), yet the probe, on standardised features,
    still tells the topics apart: the summary says what the cosine alone hides."""
    cli_run = cli("run", str(REPO / "configs" / "hidden_states_labels.yaml"), "--output-dir", str(tmp_path), "--quiet",
                  check=True)
    assert "12/12 units done" in cli_run.stdout
    summary = get_task("hidden_states").summarize(rows(tmp_path / "hidden_states_labels")).set_index("layer")
    assert list(summary.index) == list(range(31)) and (summary["probe_folds"] == 4).all()
    assert (summary.loc[12:28, "min_cosine"] > 0.98).all()
    assert summary.loc[30, "probe_accuracy"] == 1.0 and (summary["probe_accuracy"] > summary["probe_chance"]).all()
