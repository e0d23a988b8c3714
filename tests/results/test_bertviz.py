"""bertviz's head view and model view over stored attention rows (`plot attention --bertviz`, and in a
notebook runner/tasks/attention_views.py's bertviz_head_view / bertviz_model_view).

The views are bertviz's own (the optional `bertviz` extra, which make test installs). Their pages load
require.js, d3 and jQuery from cdnjs.cloudflare.com; the browser test serves those scripts from the npm
registry's packages on a local HTTPS server that headless Chromium reaches under that host name, so the page
runs exactly as bertviz wrote it.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import cli
from helpers.task_runs import rows, run_spec

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
if not IN_CI:                   # in CI a missing bertviz fails at import instead
    pytest.importorskip("bertviz", reason="the bertviz extra is not installed (make test installs it)")
# What bertviz 1.4.1's pages fetch, and the npm package each is served from. npm has no jQuery 2.0.0; 2.1.0's
# API is the same for the four calls bertviz makes.
CDN_FILES = {"ajax/libs/require.js/2.3.6/require.min.js": ("requirejs@2.3.6", "package/require.js"),
             "ajax/libs/d3/5.7.0/d3.min.js": ("d3@5.7.0", "package/dist/d3.min.js"),
             "ajax/libs/jquery/2.0.0/jquery.min.js": ("jquery@2.1.0", "package/dist/jquery.min.js")}
PARAMS = re.compile(r"const params = (\{.*?\}); // HACK", re.S)


@pytest.fixture(scope="module")
def experiment(tiny_llama, tmp_path_factory):
    spec = f"""name: att
models: [{{alias: tiny, source: {tiny_llama}}}]
prompts:
  - name: seeds
    items: [{{id: father, text: "No, I am your father"}}]
task: {{type: attention, dtype: float32}}
"""
    exp = run_spec(tmp_path_factory.mktemp("bertviz"), spec)
    return exp, rows(exp)


def _params(html_text: str) -> dict:
    return json.loads(PARAMS.search(html_text)[1])


def test_head_view_hands_bertviz_the_stored_weights_under_their_layer_numbers(experiment):
    from lmsweep.runner.tasks import attention_views

    exp, df = experiment
    unit = df["unit_id"].iloc[0]
    view = attention_views.bertviz_head_view(exp, unit[:8])
    assert type(view).__name__ == "HTML" and view.__module__.startswith("IPython")
    params = _params(view.data)
    assert params["include_layers"] == [0, 1]
    [data] = params["attention"]
    tokens = list(df["tokens"].iloc[0])
    assert data["left_text"] == data["right_text"] == tokens
    weights = np.asarray(data["attn"])                          # layers × heads × query × key
    assert weights.shape == (2, 4, len(tokens), len(tokens))
    for _, r in df.iterrows():
        stored = np.asarray(r["attention_f32"]).reshape(len(tokens), len(tokens))
        assert np.array_equal(weights[r["layer"], r["head"]], stored)
    assert "cdnjs.cloudflare.com/ajax/libs/require.js" in view.data


def test_model_view_and_a_selection(experiment):
    from lmsweep.runner.tasks import attention_views

    exp, df = experiment
    unit = df["unit_id"].iloc[0]
    params = _params(attention_views.bertviz_model_view(exp, unit, layers=[1], heads=[0, 3]).data)
    assert params["include_layers"] == [1]
    weights = np.asarray(params["attention"][0]["attn"])
    assert weights.shape[:2] == (1, 2)
    want = df[(df["layer"] == 1) & (df["head"] == 3)].iloc[0]
    assert np.array_equal(weights[0, 1].ravel(), np.asarray(want["attention_f32"]))


def test_cli_writes_both_bertviz_pages(experiment, tmp_path):
    exp, df = experiment
    unit = df["unit_id"].iloc[0]
    proc = cli("plot", "attention", str(exp), "--unit", unit[:8], "--bertviz", "--layers", "1",
               "--out", str(tmp_path), check=True)
    pages = [tmp_path / f"attention-father-bertviz-{v}.html" for v in ("head", "model")]      # by prompt id
    for page in pages:
        assert f"wrote {page}" in proc.stdout
        text = page.read_text()
        assert text.startswith("<!DOCTYPE html>") and _params(text)["include_layers"] == [1]
    assert "<div id='vis'>" in pages[0].read_text()
    bad = cli("plot", "attention", str(exp), "--unit", unit, "--bertviz", "--layers", "7")
    assert bad.returncode == 2 and "layer 7 is not stored" in bad.stderr and "stored layers: 0, 1" in bad.stderr


@pytest.fixture(scope="module")
def cdn(tmp_path_factory):
    """A local HTTPS server holding bertviz's CDN files from the npm registry's packages: its port."""
    npm, openssl = shutil.which("npm"), shutil.which("openssl")
    if shutil.which("chromium") is None or npm is None or openssl is None:
        missing = "chromium" if shutil.which("chromium") is None else "npm" if npm is None else "openssl"
        (pytest.fail if IN_CI else pytest.skip)(f"needs {missing} (.ci/run installs chromium)")
    root = tmp_path_factory.mktemp("cdn")
    packs = root / "packs"
    packs.mkdir()
    names = sorted({pkg for pkg, _ in CDN_FILES.values()})
    proc = subprocess.run([npm, "pack", "--silent", *names], cwd=packs, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        (pytest.fail if IN_CI else pytest.skip)(f"npm pack {' '.join(names)} failed: {proc.stderr[-300:]}")
    site = root / "site"
    for url, (pkg, member) in CDN_FILES.items():
        name, version = pkg.rsplit("@", 1)
        with tarfile.open(packs / f"{name}-{version}.tgz") as tar:
            data = tar.extractfile(member).read()
        (site / url).parent.mkdir(parents=True, exist_ok=True)
        (site / url).write_bytes(data)
    key, cert = root / "key.pem", root / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=cdnjs.cloudflare.com"], check=True, capture_output=True)
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_bertviz_pages_draw_in_headless_chromium(experiment, cdn, tmp_path):
    exp, df = experiment
    unit = df["unit_id"].iloc[0]
    cli("plot", "attention", str(exp), "--unit", unit, "--bertviz", "--out", str(tmp_path), check=True)
    tokens = list(df["tokens"].iloc[0])
    for view in ("head", "model"):
        page = tmp_path / f"attention-father-bertviz-{view}.html"
        proc = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
             f"--user-data-dir={tmp_path / ('profile-' + view)}", "--ignore-certificate-errors",
             f"--host-resolver-rules=MAP cdnjs.cloudflare.com 127.0.0.1:{cdn}", "--virtual-time-budget=15000",
             "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Uncaught" not in proc.stderr, proc.stderr[-2000:]
        dom = proc.stdout[proc.stdout.find("<body"):]
        assert "<svg" in dom, f"bertviz's {view} view drew nothing"
        drawn = re.findall(r"<text[^>]*>([^<]*)</text>", dom)
        n, heads = len(tokens), 4
        if view == "head":      # the tokens in two columns, a line per (head, query, key) of the first layer
            assert drawn == tokens + tokens
            assert dom.count("<line") == heads * n * n
            assert re.findall(r'<option value="(\d+)">', dom) == ["0", "1"]              # the layer menu
        else:                   # a thumbnail per (layer, head), each a line per (query, key)
            assert drawn == ["Heads", "0", "1", "2", "3", "Layers", "0", "1"]
            assert dom.count("<line") == 2 * heads * n * n


def test_without_bertviz_the_flag_is_one_line_saying_how_to_install_it(experiment, tmp_path):
    """In this environment minus bertviz (a subprocess over a copy of site-packages without it): exit 2, one
    line naming the extra, and nothing written."""
    import sys

    import transformers

    exp, df = experiment
    site = Path(transformers.__file__).parents[1]
    shadow = tmp_path / "site"
    shadow.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith("bertviz"):
            (shadow / entry.name).symlink_to(entry)
    out = tmp_path / "plots"
    args = ["plot", "attention", str(exp), "--unit", df["unit_id"].iloc[0], "--bertviz", "--out", str(out)]
    code = f"import site, sys; site.addsitedir({str(shadow)!r}); from lmsweep.cli import main; sys.exit(main({args!r}))"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "bertviz is not installed" in proc.stderr and "pip install 'lmsweep[bertviz]'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
