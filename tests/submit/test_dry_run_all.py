"""An experiment already run here: `submit --dry-run` says nothing is left and how to see the scripts anyway,
`--dry-run --all` renders every element's script, and the time to results takes the model's load time from
what the finished elements measured (issue 25, items 6 and 2)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from helpers.cli import cli, write_spec
from lmsweep.console import hms


@pytest.fixture(scope="module")
def done(tmp_path_factory, tiny_llama) -> Path:
    """A spec whose every unit is done here (`lmsweep run`)."""
    tmp = tmp_path_factory.mktemp("done")
    spec = write_spec(tmp / "done.yaml", f"""\
name: done
output_dir: {tmp / "runs"}
models:
  - {{alias: tiny, source: {tiny_llama}}}
prompts:
  - {{name: p, items: ["Once upon a time", "The capital of", "My dog"]}}
task: generate
decoding: {{max_new_tokens: 4}}
""")
    cli("run", str(spec), "--quiet", check=True)
    return spec


def test_a_dry_run_of_a_finished_experiment_says_how_to_render_anyway(done):
    out = cli("submit", str(done), "--system", "slurm-generic", "--dry-run", check=True).stdout
    assert "1 element(s) already done: submitting 0 (`--dry-run --all` renders every element's script)" in out
    assert "# ---- array-" not in out


def test_dry_run_all_renders_every_element(done, tmp_path):
    out = cli("submit", str(done), "--system", "slurm-generic", "--dry-run", "--all", "--out", str(tmp_path / "s"),
              check=True).stdout
    assert "--all: rendering all 1 element(s); 1 of them already done here (a submit would run 0)" in out
    [script] = sorted((tmp_path / "s").iterdir())
    text = script.read_text()
    assert "element=$(( 0 + index ))" in text and "worker --plan" in text


def test_all_is_only_for_a_dry_run(done):
    proc = cli("submit", str(done), "--system", "slurm-generic", "--all")
    assert proc.returncode == 2 and "--all: only with --dry-run" in proc.stderr


def test_the_load_time_measured_by_finished_elements_is_used_and_named(done):
    exp = done.parent / "runs" / "done"
    loads = [json.loads(p.read_text())["timers"]["load_s"] for p in (exp / "meta" / "history").iterdir()]
    out = cli("submit", str(done), "--system", "slurm-generic", "--dry-run", check=True).stdout
    assert (f"model tiny: load {hms(statistics.median(loads))} per element (measured: median of {len(loads)} rank "
            f"load(s) of this experiment)") in out


def test_another_experiment_beside_it_with_the_same_model_lends_its_load_time(done):
    """A new experiment in the same output directory, same model: its estimate names the one that ran it."""
    exp = done.parent / "runs" / "done"
    loads = [json.loads(p.read_text())["timers"]["load_s"] for p in (exp / "meta" / "history").iterdir()]
    other = done.parent / "other.yaml"
    other.write_text(done.read_text().replace("name: done", "name: other").replace('"My dog"', '"A new prompt"'))
    out = cli("submit", str(other), "--system", "slurm-generic", "--dry-run", check=True).stdout
    assert (f"model tiny: load {hms(statistics.median(loads))} per element (measured: median of {len(loads)} rank "
            f"load(s) of experiment done, same model and engine)") in out
    # another engine's load says nothing about this one's
    vllm = done.parent / "vllm.yaml"
    vllm.write_text(other.read_text().replace("name: other", "name: vllm") + "execution: {backend: vllm}\n")
    out = cli("submit", str(vllm), "--system", "slurm-generic", "--dry-run", check=True).stdout
    assert "model tiny: load 0:01:00 per element (estimated: vllm start 60 s + " in out
