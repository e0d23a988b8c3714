"""`lmsweep report EXP`: one self-contained HTML page, checked as text and as headless Chromium shows it."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.cli import cli
from lmsweep.results.report import plot_throughput, trace
from lmsweep.runner.tasks.attention_views import last_layer_map as attention_matrix
from lmsweep.runner.tasks.classify.views import plot_accuracy_by_shots

SPEC = """
name: rep
description: report test
models:
  - {{alias: tiny, source: {model}}}
prompts: ["Shakespeare was a", "Once upon a time", "The capital of France is", "I skip across the", "No"]
task: generate
decoding:
  max_new_tokens: 6
  include: [{{}}, {{num_beams: 2}}, {{repetition_penalty: 1.3}}]
execution:
  batch_size: 2
"""
PLOT_BLUE = (31, 119, 180)       # matplotlib's first colour: only a rendered plot puts it on screen
HEADER = (46, 92, 138)           # the report's table header background


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_llama) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    spec = tmp / "spec.yaml"
    spec.write_text(SPEC.format(model=tiny_llama))
    cli("run", str(spec), "--output-dir", str(tmp / "runs"), "--quiet", check=True)
    proc = cli("report", str(tmp / "runs" / "rep"), check=True)
    out = tmp / "runs" / "rep" / "report.html"
    assert str(out) in proc.stdout.replace("\n", "")
    return out


@pytest.mark.slow
def test_report_is_one_self_contained_page(report):
    text = report.read_text()
    assert "<script" not in text and "<link" not in text and not re.search(r"src=['\"]https?:", text)
    assert len(re.findall(r"<img class='plot' [^>]*src='data:image/png;base64,", text)) == 2   # decoding, batch
    for heading in ("Spec", "Status", "Summary", "Plots", "Provenance"):
        assert f"<h2>{heading}</h2>" in text
    assert "15/15 units done" in text and "distinct_2" in text and "latency_p90_s" in text


@pytest.mark.slow
def test_report_renders_in_headless_chromium_with_tables_and_a_plot(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    from PIL import Image

    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr
    assert dom.stdout.count("<table>") >= 6 and dom.stdout.count("data:image/png;base64,") == 2
    shot = tmp_path / "report.png"
    proc = subprocess.run(flags + ["--window-size=1280,5000", f"--screenshot={shot}", report.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 100                       # not a blank page

    def count(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(pixels.astype(int) - rgb).max(axis=1) <= 3).sum())
    assert count(HEADER) > 2000, "no table headers on screen"
    assert count(PLOT_BLUE) > 2000, "no plot on screen"


@pytest.mark.slow
def test_trace_finds_the_sidecar_of_the_run_that_wrote_each_row_after_a_resume(report, tmp_path):
    """A resumed element rewrites meta/element-E-rank-R.json; rows of the first run still trace to theirs."""
    exp = tmp_path / "runs" / "rep"
    shutil.copytree(report.parent, exp)
    first_history = sorted((exp / "meta" / "history").glob("*.json"))
    assert len(first_history) == 1
    parts = sorted((exp / "results" / "task=generate").glob("part-*.parquet"))
    lost = set(pd.read_parquet(parts[0])["unit_id"])
    kept = set(pd.read_parquet(parts[-1])["unit_id"]) - lost
    parts[0].unlink()
    cli("run", str(report.parents[2] / "spec.yaml"), "--output-dir", str(tmp_path / "runs"), "--quiet",
            check=True)
    history = sorted((exp / "meta" / "history").glob("*.json"))
    assert len(history) == 2 and history[0] == first_history[0]

    def sidecar_of(unit: str) -> str:
        facts = dict(trace(exp, unit).values.tolist())
        assert facts["model_fingerprint"].startswith("sha256:") and "torch 2." in facts["packages"]
        return Path(facts["sidecar"]).name
    assert {sidecar_of(u) for u in lost} == {history[1].name}
    assert sidecar_of(next(iter(kept))) == history[0].name
    proc = cli("results", str(exp), "--trace", next(iter(kept)), check=True)
    assert "model_fingerprint" in proc.stdout and "lmsweep commit" in proc.stdout


def test_report_of_a_missing_experiment_is_exit_2(tmp_path):
    proc = cli("report", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "no plan here" in proc.stderr
    assert not (tmp_path / "nope").exists()


# ---- plots from rows shaped like the attention and classify schemas ------------------------------------

def test_attention_heatmap_averages_the_last_layers_heads():
    a, b = np.arange(9, dtype=np.float32), np.arange(9, dtype=np.float32)[::-1].copy()
    df = pd.DataFrame({
        "model": ["m"] * 3, "unit_id": ["u"] * 3, "prompt_id": ["p"] * 3, "seq_len": [3] * 3,
        "layer": [0, 1, 1], "head": [0, 0, 1], "tokens": [["a", "b", "c"]] * 3,
        "attention": [np.zeros(9), a, b], "attention_f32": [None] * 3})
    matrix, where, tokens = attention_matrix(df)
    assert matrix.shape == (3, 3) and np.allclose(matrix, 4.0)          # mean of a and reversed a
    assert "layer 1" in where and "mean over heads" in where and tokens == ["a", "b", "c"]


def test_accuracy_by_shots_plot_needs_shots_and_correct():
    df = pd.DataFrame({"model": ["m"] * 4, "shots": [0, 0, 2, 2], "correct": [True, False, True, True]})
    assert len(plot_accuracy_by_shots(df)) == 1
    assert plot_accuracy_by_shots(df.drop(columns="shots")) == []


def test_throughput_plot_falls_back_to_units_per_second_without_token_counts():
    df = pd.DataFrame({"unit_id": ["a", "b"], "model": ["m", "m"], "decoding": [None, None], "variant": [0, 0],
                       "batch_size": [2, 2], "batch_latency_s": [0.5, 0.5]})
    imgs = plot_throughput(df)
    assert len(imgs) == 1 and "Throughput by model" in imgs[0]       # one variant: no variant axis (issue 26)
