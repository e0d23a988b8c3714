"""`lmsweep regress --recheck N`: N units of the run rerun beside it at another batch size and order, and the
engine's disagreement with itself reported (the noise floor; it never gates)."""
from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq

from helpers.cli import cli

SPEC = """
name: rc
models: [{{alias: tiny, source: {model}}}]
prompts: [{{name: p, items: {prompts}}}]
task: generate
decoding:
  max_new_tokens: 8
  seeds: [0, 1]
  include: [{{}}, {{temperature: 0.8}}]
execution: {{batch_size: 6}}
"""
PROMPTS = ["Shakespeare was a", "My dog really wanted to eat", "I skip across the", "Once upon a time",
           "The capital of France is", "No, I am your father"]


def test_recheck_reruns_n_units_at_another_batch_size_and_reports_a_zero_floor_on_hf(tmp_path, tiny_llama):
    spec = tmp_path / "rc.yaml"
    spec.write_text(SPEC.format(model=tiny_llama, prompts=PROMPTS))
    out = tmp_path / "runs"
    proc = cli("regress", str(spec), "--baseline", str(tmp_path / "base"), "--output-dir", str(out), "--promote",
               "--quiet", "--recheck", "7")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = [p for p in out.iterdir() if not p.name.endswith("-recheck")]
    recheck = run.with_name(run.name + "-recheck")
    units = pq.read_table(recheck / "plan.parquet").to_pandas()
    assert len(units) == 7 and set(units["unit_id"]) <= set(pq.read_table(run / "plan.parquet")["unit_id"].to_pylist())
    assert "noise floor: 7 rows of 7 units rerun at batch size 1" in proc.stdout
    md = (recheck / "reports" / "noise-floor.md").read_text()
    # hf's decode loop is batch-invariant on CPU: every greedy and seeded sampled sequence is the same
    rows = pd.read_parquet(recheck / "results")
    greedy = int((~rows["do_sample"]).sum())
    assert f"{greedy}/{greedy} sequences identical" in md and "PASS" in md


def test_recheck_is_refused_with_a_submission_and_a_bad_count(tmp_path, tiny_llama):
    spec = tmp_path / "rc.yaml"
    spec.write_text(SPEC.format(model=tiny_llama, prompts=PROMPTS))
    proc = cli("regress", str(spec), "--baseline", str(tmp_path / "b"), "--promote", "--recheck", "0")
    assert proc.returncode == 2 and "--recheck" in proc.stderr
    proc = cli("regress", str(spec), "--baseline", str(tmp_path / "b"), "--promote", "--recheck", "3",
               "--system", "slurm-generic", "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2 and "--recheck reruns units on this machine" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
