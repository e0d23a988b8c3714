"""`lmsweep plot attention`: a PNG heatmap grid and a standalone HTML head view, from stored rows."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from helpers.cli import cli
from helpers.task_runs import rows, run_spec


@pytest.fixture(scope="module")
def experiment(tiny_llama, tmp_path_factory):
    spec = f"""name: att
models: [{{alias: tiny, source: {tiny_llama}}}]
prompts:
  - name: seeds
    items: [{{id: father, text: "No, I am your father"}}]
task: attention
"""
    exp = run_spec(tmp_path_factory.mktemp("plots"), spec)
    return exp, rows(exp)["unit_id"].iloc[0]


def test_plot_writes_png_grid_and_standalone_html(experiment, tmp_path):
    exp, unit = experiment
    proc = cli("plot", "attention", str(exp), "--unit", unit[:8], "--out", str(tmp_path), check=True)
    png, page = tmp_path / "attention-father.png", tmp_path / "attention-father.html"      # named by prompt id
    assert str(png) in proc.stdout and str(page) in proc.stdout
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    text = page.read_text()
    assert "father" in text and "<svg" in text
    assert not re.search(r"(src|href)\s*=", text)                         # nothing fetched from anywhere
    payload = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)[1])
    assert len(payload["views"]) == 2 * 4                                 # layers × heads
    n = len(payload["tokens"])
    assert all(len(v["weights"]) == n and abs(sum(v["weights"][-1]) - 1) < 1e-2 for v in payload["views"])


def test_layer_and_head_filters_and_bad_unit(experiment, tmp_path):
    exp, unit = experiment
    cli("plot", "attention", str(exp), "--unit", unit, "--layers", "1", "--heads", "0,3",
            "--out", str(tmp_path), check=True)
    text = (tmp_path / "attention-father.html").read_text()
    assert text.count('"layer": 1') == 2 and '"layer": 0' not in text
    proc = cli("plot", "attention", str(exp), "--unit", "zzzz")
    assert proc.returncode == 2 and "no attention rows for unit 'zzzz'" in proc.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a headless chromium to run the page's script")
def test_head_view_script_runs_in_a_browser(experiment, tmp_path):
    exp, unit = experiment
    cli("plot", "attention", str(exp), "--unit", unit, "--out", str(tmp_path), check=True)
    page = tmp_path / "attention-father.html"
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "Uncaught" not in proc.stderr
    assert proc.stdout.count("<option") == 8 and "<line" in proc.stdout     # views listed, lines drawn
