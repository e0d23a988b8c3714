"""`lmsweep compare` and `lmsweep regress` on real runs of a tiny model: what changed, exactly which units,
and the exit code a scheduled job acts on."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from helpers.cli import cli
from helpers.tiny_models import perturb
from lmsweep.jobs.spec import Tolerances
from lmsweep.results.compare import Check, SideInfo, choose_join, compare_frames
from lmsweep.runner.tasks.generate import first_diff as _first_diff
from lmsweep.runner.tasks.next_token import topk_delta as _topk_delta

PROMPTS = ["Shakespeare was a", "My dog really wanted to eat", "I skip across the", "Once upon a time",
           "The capital of France is", "No, I am your father"]

GENERATE = """
name: gen
models:
  - {{alias: tiny, source: {model}}}
prompts:
  - name: p
    items: {prompts}
task: generate
decoding:
  max_new_tokens: 8
  seeds: [0]
  include: [{{}}, {{temperature: 0.8}}, {{repetition_penalty: {rep}}}]
execution:
  batch_size: 4
"""

NEXT_TOKEN = """
name: nt
models:
  - {{alias: tiny, source: {model}}}
prompts:
  - name: p
    items: {prompts}
task: {{type: next_token, top_k: 5}}
"""


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def run(spec: Path, out: Path) -> Path:
    cli("run", str(spec), "--output-dir", str(out), "--quiet", check=True)
    return out / next(p.name for p in out.iterdir())


def flagged(exp: Path) -> pd.DataFrame:
    return pd.read_csv(exp / "reports" / "compare-units.csv")


def rows(exp: Path) -> pd.DataFrame:
    """Results read with pyarrow alone: the test's own view, independent of results.compare."""
    return pq.read_table(exp / "results").to_pandas()


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_llama) -> dict[str, Path]:
    # 0.2% noise: some greedy continuations change, so "exactly these units" is a real selection.
    noisy = perturb(tiny_llama, tmp_path_factory.mktemp("models") / "tiny-noisy", scale=0.002)
    return {"base": tiny_llama, "noisy": noisy}


@pytest.fixture(scope="module")
def gen(tmp_path_factory, models) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("gen")
    base = write(tmp, "base.yaml", GENERATE.format(model=models["base"], prompts=PROMPTS, rep=1.3))
    dec = write(tmp, "dec.yaml", GENERATE.format(model=models["base"], prompts=PROMPTS, rep=1.5))
    noisy = write(tmp, "noisy.yaml", GENERATE.format(model=models["noisy"], prompts=PROMPTS, rep=1.3))
    return {"tmp": tmp, "spec": base, "noisy_spec": noisy,
            "a": run(base, tmp / "a"), "b": run(base, tmp / "b"), "dec": run(dec, tmp / "dec"),
            "noisy": run(noisy, tmp / "noisy")}


@pytest.mark.slow
def test_identical_rerun_compares_as_zero_diffs_and_exit_0(gen):
    proc = cli("compare", str(gen["a"]), str(gen["b"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout and "joined on unit_id" in proc.stdout
    md = (gen["b"] / "reports" / "compare.md").read_text()
    assert "18 rows matched" in md and "12/12 sequences identical" in md and "6/6 seeded sampled" in md
    assert flagged(gen["b"]).empty
    assert "<table>" in (gen["b"] / "reports" / "compare.html").read_text()


@pytest.mark.slow
def test_one_changed_decoding_value_flags_exactly_its_units_and_exit_1(gen):
    proc = cli("compare", str(gen["a"]), str(gen["dec"]))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL: units on one side only 12" in proc.stdout + proc.stderr
    # the units of the changed point, read from each side's own plan
    expected = set()
    for exp, rep in ((gen["a"], 1.3), (gen["dec"], 1.5)):
        points = json.loads((exp / "plan.json").read_text())["points"]
        index = next(i for i, p in enumerate(points) if p["repetition_penalty"] == rep)
        plan = pq.read_table(exp / "plan.parquet").to_pandas()
        expected |= set(plan.loc[plan["point"] == index, "unit_id"])
    got = flagged(gen["dec"])
    assert set(got["unit_id"]) == expected and len(expected) == 12
    assert set(got["decoding"]) == {"greedy rep=1.3", "greedy rep=1.5"}
    assert set(got["kind"]) == {"baseline only", "current only"}
    assert "not in the current plan" in (gen["dec"] / "reports" / "compare.md").read_text()


@pytest.mark.slow
def test_perturbed_model_flags_exactly_the_changed_greedy_units_and_exit_1(gen):
    proc = cli("compare", str(gen["a"]), str(gen["noisy"]))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "fingerprint" in proc.stdout and "joined on unit_key" in proc.stdout
    a, b = rows(gen["a"]), rows(gen["noisy"])
    both = a.merge(b, on=["unit_key", "sequence_index"], suffixes=("_a", "_b"))
    assert len(both) == 18                                           # every unit paired across the two models
    det = both[~both["do_sample_a"]]
    changed = det[[list(x) != list(y) for x, y in zip(det["token_ids_a"], det["token_ids_b"])]]
    assert len(changed) > 0
    got = flagged(gen["noisy"])
    assert set(got["unit_id"]) == set(changed["unit_id_b"])
    md = (gen["noisy"] / "reports" / "compare.md").read_text()
    assert f"{len(det) - len(changed)}/{len(det)} sequences identical" in md
    # the first differing token is where the token ids first disagree
    first = {r.unit_id_b: next(i for i, (x, y) in enumerate(zip(list(r.token_ids_a), list(r.token_ids_b)))
                               if x != y) for r in changed.itertuples()}
    assert dict(zip(got["unit_id"], got["first_diff_token"])) == first


@pytest.mark.slow
def test_next_token_perturbed_model_flags_units_beyond_max_prob_delta(tmp_path, models):
    base = run(write(tmp_path, "a.yaml", NEXT_TOKEN.format(model=models["base"], prompts=PROMPTS)), tmp_path / "a")
    noisy = run(write(tmp_path, "b.yaml", NEXT_TOKEN.format(model=models["noisy"], prompts=PROMPTS)),
                tmp_path / "b")
    assert cli("compare", str(base), str(base)).returncode == 0
    proc = cli("compare", str(base), str(noisy), "--max-prob-delta", "0.001", "--min-topk-overlap", "off")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    a, b = rows(base), rows(noisy)
    both = a.merge(b, on="unit_key", suffixes=("_a", "_b"))
    # with the same top-k ids on both sides, |Δp| is exact; otherwise compare checks a lower bound
    dp = {r.unit_id_b: max(abs(x - y) for x, y in zip(r.topk_probs_a, r.topk_probs_b))
          for r in both.itertuples() if list(r.topk_ids_a) == list(r.topk_ids_b)}
    got = flagged(noisy).set_index("unit_id")
    assert {u for u, d in dp.items() if d > 0.001} <= set(got.index)
    for u in set(got.index) & set(dp):
        assert got.loc[u, "max_abs_dp"] == pytest.approx(dp[u], abs=1e-6)
    # the same data passes with a looser tolerance
    loose = cli("compare", str(base), str(noisy), "--max-prob-delta", "1", "--min-topk-overlap", "0")
    assert loose.returncode == 0, loose.stdout + loose.stderr


@pytest.mark.slow
def test_regress_creates_promotes_and_then_catches_a_regression(gen):
    tmp = gen["tmp"]
    baseline, out = tmp / "baseline", tmp / "regress-runs"
    first = cli("regress", str(gen["spec"]), "--baseline", str(baseline), "--output-dir", str(out),
                    "--promote", "--quiet")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (baseline / "plan.json").is_file() and json.loads((baseline / "PROMOTED.json").read_text())["verdict"] \
        == "first baseline"

    again = cli("regress", str(gen["spec"]), "--baseline", str(baseline), "--output-dir", str(out),
                    "--promote", "--quiet")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((baseline / "PROMOTED.json").read_text())["verdict"] == "pass"
    promoted = (baseline / "PROMOTED.json").read_text()

    bad = cli("regress", str(gen["noisy_spec"]), "--baseline", str(baseline), "--output-dir", str(out),
                  "--promote", "--quiet")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "not promoting" in bad.stderr
    assert (baseline / "PROMOTED.json").read_text() == promoted          # the baseline is kept
    runs = sorted(out.iterdir())
    assert len(runs) == 3 and (runs[-1] / "reports" / "compare.html").is_file()


# ---- bad input: exit 2, one line, nothing written ------------------------------------------------------

def test_compare_missing_directory_is_exit_2(tmp_path):
    proc = cli("compare", str(tmp_path / "nope"), str(tmp_path / "nope2"))
    assert proc.returncode == 2
    assert "no plan here" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_regress_without_baseline_or_promote_is_exit_2_and_writes_nothing(tmp_path, tiny_llama):
    spec = write(tmp_path, "s.yaml", GENERATE.format(model=tiny_llama, prompts=PROMPTS[:1], rep=1.3))
    out = tmp_path / "out"
    proc = cli("regress", str(spec), "--baseline", str(tmp_path / "nobase"), "--output-dir", str(out))
    assert proc.returncode == 2 and "--promote" in proc.stderr
    assert not out.exists()
    proc = cli("regress", str(spec), "--output-dir", str(out))
    assert proc.returncode == 2 and "regression.baseline" in proc.stderr
    proc = cli("regress", str(spec), "--baseline", str(tmp_path / "nobase"), "--promote",
                   "--min-exact-match", "2", "--output-dir", str(out))
    assert proc.returncode == 2 and "--min-exact-match" in proc.stderr
    assert not out.exists()


def test_regression_block_is_validated_with_its_line(tmp_path, tiny_llama):
    text = GENERATE.format(model=tiny_llama, prompts=PROMPTS[:1], rep=1.3) + \
        "regression:\n  baseline: runs/base\n  tolerances:\n    max_prob_delta: -1\n"
    spec = write(tmp_path, "s.yaml", text)
    proc = cli("validate", str(spec))
    assert proc.returncode == 2
    line = text.splitlines().index("    max_prob_delta: -1") + 1
    assert f"s.yaml:{line}: regression.tolerances.max_prob_delta:" in proc.stderr


# ---- the pure core -----------------------------------------------------------------------------------

def side(fingerprint: str = "sha256:a", backend: str = "hf", task: str = "generate") -> SideInfo:
    return SideInfo(path="x", experiment="e", spec_hash="h", task=task, backend=backend, planned=1, done=1,
                    failed=0, models={"m": {"source": "s", "fingerprint": fingerprint, "dtype": "float32",
                                            "revision": None}})


def test_first_differing_token_position():
    assert _first_diff([1, 2, 3], [1, 2, 3]) is None
    assert _first_diff([1, 2, 3], [1, 5, 3]) == 1
    assert _first_diff([1, 2], [1, 2, 3]) == 2                # one is a prefix of the other


def test_topk_delta_uses_the_other_sides_smallest_listed_probability_as_a_bound():
    dp, overlap, same_top = _topk_delta([1, 2], [0.6, 0.3], [1, 3], [0.5, 0.2])
    # token 1: |0.6 − 0.5| = 0.1; token 2 only in A: at least 0.3 − 0.2; token 3 only in B: 0.2 − 0.3 < 0
    assert dp == pytest.approx(0.1) and overlap == 0.5 and same_top


def test_join_is_by_unit_id_unless_a_model_changed():
    assert choose_join(side(), side(), "auto")[0] == "id"
    by, reason = choose_join(side(), side(backend="deepspeed"), "auto")
    assert by == "id" and "backend hf → deepspeed" in reason
    by, reason = choose_join(side(), side("sha256:b"), "auto")
    assert by == "key" and "fingerprint sha256:a → sha256:b" in reason


def test_a_disabled_tolerance_never_fails():
    assert Check("x", 0.0, None, ">=").passed and not Check("x", 0.5, 0.9, ">=").passed
    assert Check("x", 2.0, 1.5, "<=").passed is False and Check("x", None, 1.0, "<=").passed


def test_sampled_differences_are_informational_unless_a_tolerance_is_set():
    def frame(text: str) -> pd.DataFrame:
        return pd.DataFrame({"unit_id": ["u"], "unit_key": ["k"], "model": ["m"], "prompt_set": ["p"],
                             "prompt_id": ["q"], "decoding": ["sample t=1"], "do_sample": [True], "batch_size": [1],
                             "batch_latency_s": [1.0], "sequence_index": [0], "text": [text],
                             "token_ids": [[1, 2] if text == "a" else [1, 3]], "tokens_per_s": [2.0]})
    c = compare_frames(frame("a"), frame("b"), side(), side())
    assert c.passed and c.diffs.empty and len(c.info_diffs) == 1
    c = compare_frames(frame("a"), frame("b"), side(), side(), tolerances=Tolerances(min_sampled_exact_match=1))
    assert not c.passed and list(c.diffs["first_diff_token"]) == [1]


def rows_for(task: str, **cols) -> pd.DataFrame:
    base = {"unit_id": ["u1", "u2"], "unit_key": ["k1", "k2"], "model": ["m", "m"], "prompt_set": ["p", "p"],
            "prompt_id": ["q1", "q2"], "decoding": [None, None], "batch_size": [2, 2], "batch_latency_s": [1.0, 1.0]}
    return pd.DataFrame({**base, **cols})


def test_attention_weights_are_judged_by_max_prob_delta():
    def frame(w: float) -> pd.DataFrame:
        return rows_for("attention", layer=[0, 0], head=[0, 0], seq_len=[2, 2], tokens=[["a", "b"]] * 2,
                        attention=[np.array([1, 0, 0.5, 0.5], dtype=np.float16),
                                   np.array([1, 0, w, 1 - w], dtype=np.float16)], attention_f32=[None, None])
    same = compare_frames(frame(0.5), frame(0.5), side(task="attention"), side(task="attention"))
    assert same.passed and same.diffs.empty
    moved = compare_frames(frame(0.5), frame(0.25), side(task="attention"), side(task="attention"))
    assert not moved.passed and list(moved.diffs["unit_id"]) == ["u2"]
    assert moved.diffs["max_abs_dp"].iloc[0] == pytest.approx(0.25)


def test_classify_flips_count_against_accuracy_and_without_gold_labels_any_change_is_flagged():
    def frame(pred: list[str], correct: list | None) -> pd.DataFrame:
        return rows_for("classify", method=["label_likelihood"] * 2, predicted_label=pred,
                        correct=correct if correct is not None else [None, None],
                        label=["pos", "neg"] if correct is not None else [None, None],
                        label_scores=[[-1.0, -2.0], [-2.0, -1.0]])
    worse = compare_frames(frame(["pos", "neg"], [True, True]), frame(["pos", "pos"], [True, False]),
                           side(task="classify"), side(task="classify"))
    assert not worse.passed and [c.name for c in worse.failed_checks] == ["accuracy drop (baseline − current)"]
    assert list(worse.diffs["flip"]) == ["right → wrong"] and list(worse.diffs["unit_id"]) == ["u2"]
    unlabelled = compare_frames(frame(["pos", "neg"], None), frame(["pos", "pos"], None),
                                side(task="classify"), side(task="classify"))
    assert not unlabelled.passed and list(unlabelled.diffs["differs_in"]) == ["predicted_label"]


@pytest.mark.slow
@pytest.mark.slurm
def test_regress_submits_to_slurm_waits_and_compares(tmp_path, tiny_llama):
    """`regress --system` goes through the real scheduler: submit, wait for the array to end, compare."""

    from helpers.slurm import slurm_conf

    conf = slurm_conf()
    spec = write(tmp_path, "sl.yaml", f"""
name: sl
models:
  - {{alias: tiny, source: {tiny_llama}}}
prompts: {PROMPTS[:3]}
task: generate
decoding: {{max_new_tokens: 4}}
execution:
  batch_size: 4
  threads_per_rank: 1
  slurm: {{partition: debug}}
""")
    baseline = run(spec, tmp_path / "local")                         # the same spec, run here
    env = {"SLURM_CONF": conf.strip()}
    proc = cli("regress", str(spec), "--system", "slurm-generic", "--baseline", str(baseline),
                   "--output-dir", str(tmp_path / "regress"), "--quiet", "--wait-timeout", "600", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = (tmp_path / "regress").iterdir()
    exp = run_dir / "sl"
    assert (exp / "jobs").is_dir(), "not submitted through the scheduler"
    assert "joined on unit_id" in proc.stdout
    assert "3/3 sequences identical" in (exp / "reports" / "compare.md").read_text()
