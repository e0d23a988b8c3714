"""configs/nightly.yaml gates its seeded samples (`regression.gates`): the block says how to judge a run, so it
moves no unit id, and the sweep is large enough for a gate to fire at all (a sample too small for its test to
reach alpha would report every night as underpowered). The end-to-end run on SmolLM2 (a temperature or a
repetition penalty applied wrongly fails `regress`, an identical rerun passes) takes minutes on a CPU: its
figures are in docs/results.md, "Regression sweeps"; `test_regress_against_a_perturbed_engine_fails_and_a_rerun_passes`
runs the same path on a tiny model."""
from __future__ import annotations

import math

import yaml

import lmsweep
from helpers.cli import REPO, cli
from helpers.task_runs import run_spec
from lmsweep.core.task_registry import get_task

NIGHTLY = REPO / "configs" / "nightly.yaml"


def test_the_gates_block_moves_no_unit_id_and_the_sampled_point_can_reach_alpha(tmp_path):
    spec = yaml.safe_load(NIGHTLY.read_text())
    gates = spec["regression"]["gates"]
    assert set(gates["thresholds"]) == {m.name for m in get_task("generate").metrics}    # all of them, written out
    without = dict(spec, regression={k: v for k, v in spec["regression"].items() if k != "gates"})
    (tmp_path / "nightly.yaml").write_text(yaml.safe_dump(without))
    a, b = (lmsweep.plan(lmsweep.load_spec(p)) for p in (NIGHTLY, tmp_path / "nightly.yaml"))
    assert a.spec_hash == b.spec_hash
    assert a.units.column("unit_id").to_pylist() == b.units.column("unit_id").to_pylist()
    # every metric the generate task offers is gated, one row per metric for the one sampled point: Holm's
    # first step tests at alpha / rows, and Mann–Whitney's smallest p at n sequences a side is 2 / C(2n, n)
    units = a.units.to_pandas()
    sampled = units[units["seed"].notna()]
    n = len(sampled)
    rows = len(gates["thresholds"])
    assert rows == 6 and n == 64
    assert 2 / math.comb(2 * n, n) < gates["alpha"] / rows


TINY_NIGHTLY = """name: tinynightly
models: [{{alias: tiny, source: {model}}}]
prompts: ["Shakespeare was a", "My dog really wanted to eat", "I skip across the", "Once upon a time",
          "The capital of France is", "No, I am your father"]
task: generate
decoding:
  max_new_tokens: 16
  seeds: {seeds}
  include: [{{}}, {{temperature: 0.7}}]
execution: {{batch_size: 64{backend}}}
regression:
  tolerances: {{min_exact_match: 1.0, max_unmatched: 0}}
  gates: {{alpha: 0.01}}
"""




def test_regress_against_a_perturbed_engine_fails_and_a_rerun_passes(tmp_path, tiny_llama, perturbed):
    """The nightly's shape on a tiny model: a baseline written by an engine that samples at 0.9 when asked for 0.7
    (same unit ids: the backend is not part of them) fails `regress` on the sampled text's mean log-probability
    alone (greedy rows stay identical); a baseline of the same software passes."""
    spec = tmp_path / "tiny.yaml"
    def text(backend: str) -> str:
        return TINY_NIGHTLY.format(model=tiny_llama, seeds=list(range(15)), backend=backend)

    spec.write_text(text(""))
    hot = run_spec(tmp_path / "hot", text(", backend: hf-hot"))
    out = tmp_path / "runs"
    bad = cli("regress", str(spec), "--baseline", str(hot), "--output-dir", str(out / "1"), "--quiet")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    (run,) = (out / "1").iterdir()
    md = (run / "reports" / "compare.md").read_text()
    assert "FAIL: significant shifts beyond threshold 1" in md and "6/6 sequences identical" in md
    regressed = [line for line in md.splitlines() if "| REGRESSION |" in line]
    assert len(regressed) == 1 and "| mean_logprob |" in regressed[0], md
    good = cli("regress", str(spec), "--baseline", str(run), "--output-dir", str(out / "2"), "--quiet")
    assert good.returncode == 0, good.stdout + good.stderr
