"""compare's statistical regression gates (`regression.gates`) on pairs with known effects: a known accuracy
drop fires McNemar, weight noise fires the next-token KL gate, a temperature change fires the sampled text's
mean log-probability gate, and same-software comparisons with fresh seeds fire none, at a false-positive rate
measured here."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from helpers.cli import cli
from helpers.tiny_models import make_tiny_llama, perturb
from lmsweep.jobs.gates import Gates
from lmsweep.jobs.spec import Tolerances
from lmsweep.results.compare import SideInfo, compare_frames, to_html, to_markdown
from lmsweep.results.load import load

NO_UNMATCHED = Tolerances(max_unmatched=None)      # fresh seeds are new units: judged by the gates instead


def side(task: str) -> SideInfo:
    return SideInfo(path="x", experiment="e", spec_hash="h", task=task, backend="hf", planned=1, done=1, failed=0,
                    models={"m": {"source": "s", "fingerprint": "f", "dtype": "float32", "revision": None}})


def classify_rows(correct: list[bool]) -> pd.DataFrame:
    n = len(correct)
    return pd.DataFrame({"unit_id": [f"u{i}" for i in range(n)], "unit_key": [f"k{i}" for i in range(n)],
                         "model": "m", "prompt_set": "p", "prompt_id": [f"q{i}" for i in range(n)], "decoding": None,
                         "batch_size": 8, "batch_latency_s": 1.0, "method": "label_likelihood",
                         "label": "pos", "predicted_label": ["pos" if c else "neg" for c in correct],
                         "correct": correct, "label_scores": [[-1.0, -2.0]] * n})


def gate_rows(c, metric: str) -> pd.DataFrame:
    return c.statistics[c.statistics["metric"] == metric]


# ---- classification: a known accuracy drop ---------------------------------------------------------------

def test_a_known_accuracy_drop_fires_mcnemar_and_fails_only_when_gating():
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.8
    cur = base.copy()
    cur[np.flatnonzero(base)[:24]] = False            # 24 right → wrong: accuracy −6 points, no flips back
    tol = Tolerances(max_accuracy_drop=None, min_exact_match=None)
    c = compare_frames(classify_rows(list(base)), classify_rows(list(cur)), side("classify"), side("classify"),
                       tolerances=tol, gates=Gates())
    (row,) = gate_rows(c, "accuracy").itertuples()
    assert row.test == "McNemar (exact)" and row.verdict == "REGRESSION"
    assert row.difference == pytest.approx(-24 / 400) and row.ci_high < 0
    assert row.p == pytest.approx(2 * 0.5 ** 24)      # exact McNemar: all 24 flips one way
    assert not c.passed and [k.name for k in c.failed_checks] == ["significant shifts beyond threshold"]
    md = to_markdown(c)
    assert "## Statistics" in md and "McNemar (exact)" in md and "REGRESSION" in md
    assert "m: baseline and current distributions" in to_html(c)     # the overlay figure beside the table
    # the same comparison without regression.gates reports the row and passes
    reported = compare_frames(classify_rows(list(base)), classify_rows(list(cur)), side("classify"),
                              side("classify"), tolerances=tol)
    assert reported.passed and gate_rows(reported, "accuracy")["verdict"].item() == "REGRESSION"
    assert "reported only" in to_markdown(reported)


def test_too_few_units_to_gate_anything_show_as_underpowered_with_an_infinite_mde():
    base, cur = [True] * 8, [True] * 5 + [False] * 3
    c = compare_frames(classify_rows(base), classify_rows(cur), side("classify"), side("classify"),
                       tolerances=Tolerances(max_accuracy_drop=None, min_exact_match=None), gates=Gates())
    row = gate_rows(c, "accuracy").iloc[0]
    # two tests share alpha 0.01: exact McNemar needs 9 one-way flips (2·0.5^9 ≤ 0.005); 8 units have fewer
    assert row["mde"] == math.inf and row["verdict"] == "underpowered" and c.passed


def test_an_improvement_in_accuracy_is_a_shift_not_a_regression():
    base = [False] * 30 + [True] * 70
    c = compare_frames(classify_rows(base), classify_rows([True] * 100), side("classify"), side("classify"),
                       tolerances=Tolerances(max_accuracy_drop=None, min_exact_match=None), gates=Gates())
    assert gate_rows(c, "accuracy")["verdict"].item() == "shift" and c.passed



def scored_rows(ids: list[str], logprob: list[float]) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame({"unit_id": ids, "unit_key": ids, "model": "m", "prompt_set": "p", "prompt_id": ids,
                         "decoding": None, "batch_size": 8, "batch_latency_s": 1.0, "logprob": logprob,
                         "num_scored_tokens": [10] * n})


def test_log_likelihood_is_paired_on_the_same_texts_and_two_samples_on_different_ones():
    rng = np.random.default_rng(1)
    lp = list(rng.normal(-30, 5, 50))
    ids = [f"u{i}" for i in range(50)]
    same = compare_frames(scored_rows(ids, lp), scored_rows(ids, [x - 1 for x in lp]), side("loglikelihood"),
                          side("loglikelihood"), gates=Gates())
    row = gate_rows(same, "logprob_per_token").iloc[0]
    # every text 1 nat less likely over 10 tokens: −0.1 per token, beyond the 0.01 threshold
    assert row["test"] == "Wilcoxon signed-rank" and row["difference"] == pytest.approx(-0.1)
    assert row["verdict"] == "REGRESSION" and not same.passed
    other = compare_frames(scored_rows(ids, lp), scored_rows([f"v{i}" for i in range(50)], lp),
                           side("loglikelihood"), side("loglikelihood"), tolerances=NO_UNMATCHED, gates=Gates())
    row = gate_rows(other, "logprob_per_token").iloc[0]
    # 50 texts a side with a spread of 0.5 nats per token cannot show a 0.01 shift: said, not passed off as ok
    assert row["test"] == "Mann-Whitney U" and row["difference"] == 0 and row["mde"] > 0.01
    assert row["verdict"] == "underpowered" and other.passed


def test_an_unknown_gate_metric_is_exit_2_at_its_line(tmp_path, tiny_llama):
    text = (f"name: s\nmodels: [{{alias: tiny, source: {tiny_llama}}}]\nprompts: [a]\ntask: generate\n"
            "regression:\n  gates:\n    thresholds:\n      lenght: 0.1\n")
    (tmp_path / "s.yaml").write_text(text)
    proc = cli("validate", str(tmp_path / "s.yaml"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "regression.gates.thresholds" in proc.stderr and "unknown metric 'lenght'" in proc.stderr
    assert "distinct_1" in proc.stderr                   # the metrics the tasks offer are listed


# ---- runs of a tiny model: sampled text, its log-likelihood, next-token distributions ---------------------

PROMPTS = ["Shakespeare was a", "My dog really wanted to eat", "I skip across the", "Once upon a time",
           "The capital of France is", "No, I am your father"]
SEEDS = 30
TRIALS = 30                    # same-software comparisons for the false-positive rate

SAMPLED = """
name: sampled
models: [{{alias: tiny, source: {model}}}]
prompts: [{{name: p, items: {prompts}}}]
task: generate
decoding:
  max_new_tokens: 12
  seeds: {seeds}
  include: [{{temperature: 0.7}}, {{temperature: 0.9}}]
execution: {{batch_size: 64}}
"""

def run(spec, out):
    cli("run", str(spec), "--output-dir", str(out), "--quiet", check=True)
    return out / next(p.name for p in out.iterdir())


@pytest.fixture(scope="module")
def sampled(tmp_path_factory) -> pd.DataFrame:
    """One generate run (t=0.7 and t=0.9, 30 seeds × 6 prompts each) of a tiny model with a broad next-token
    distribution (init range 0.3: 2 to 3.5 nats)."""
    tmp = tmp_path_factory.mktemp("sampled")
    model = make_tiny_llama(tmp / "tiny", init_range=0.3)
    spec = tmp / "gen.yaml"
    spec.write_text(SAMPLED.format(model=model, prompts=PROMPTS, seeds=list(range(SEEDS))))
    return load(run(spec, tmp / "gen"))


def split(df: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two runs of the same software with different seeds: the rows of two disjoint halves of the seeds."""
    half = set(rng.permutation(SEEDS)[:SEEDS // 2].tolist())
    pick = df["seed"].isin(half)
    return df[pick], df[~pick]


@pytest.mark.slow
def test_same_software_with_fresh_seeds_fires_no_gate_at_the_measured_false_positive_rate(sampled):
    """30 comparisons of disjoint seed halves of one run (the same software, fresh seeds), each gating 2
    temperatures × 6 text metrics: Holm keeps the chance of any false alarm per comparison at most alpha, so
    more fires than the binomial's 99.9% quantile of 30 trials at alpha is a bug, not bad luck."""
    rng = np.random.default_rng(0)
    gates = Gates()
    fired, rows = 0, 0
    for _ in range(TRIALS):
        b, c = split(sampled, rng)
        comp = compare_frames(b, c, side("generate"), side("generate"), tolerances=NO_UNMATCHED, gates=gates)
        rows += len(comp.statistics)
        fired += not comp.passed
    assert rows == TRIALS * 2 * 6
    allowed = sps.binom.ppf(0.999, TRIALS, gates.alpha)
    print(f"false positives: {fired} of {TRIALS} comparisons ({rows} gated rows); allowed {allowed:g}")
    assert fired <= allowed


def as_if_asked_for(df: pd.DataFrame, decoding: str) -> pd.DataFrame:
    """Rows of another decoding point relabelled as `decoding`: what an engine that applies a parameter wrongly
    (samples at 0.9 when asked for 0.7) would write under the asked point's name."""
    return df.assign(decoding=decoding)


def test_a_temperature_change_fires_the_mean_logprob_gate_and_agrees_with_scipy(sampled):
    """Sampling at 0.9 where 0.7 was asked for: the model's own log-probability of the sampled tokens drops
    (a hotter sampler picks less likely tokens), by far more than its 0.1-nat threshold; the text metrics of
    this tiny model barely move (distinct-1 by under 0.02), so without the log-probability no gate fires."""
    base = sampled[sampled["decoding"] == "sample t=0.7"]
    hot = as_if_asked_for(sampled[sampled["decoding"] == "sample t=0.9"], "sample t=0.7")
    c = compare_frames(base, hot, side("generate"), side("generate"), tolerances=NO_UNMATCHED, gates=Gates())
    row = gate_rows(c, "mean_logprob").iloc[0]
    per_token = [(g["logprob"] / g["num_new_tokens"])[g["num_new_tokens"] > 0] for g in (base, hot)]
    want = sps.mannwhitneyu(per_token[1], per_token[0], alternative="two-sided")
    assert row["p"] == pytest.approx(want.pvalue, rel=1e-12)
    assert row["difference"] == pytest.approx(per_token[1].mean() - per_token[0].mean())
    assert row["difference"] < -0.1 and row["verdict"] == "REGRESSION" and not c.passed
    others = c.statistics[c.statistics["metric"] != "mean_logprob"]
    assert (others["verdict"] != "REGRESSION").all(), others
    # the same comparison with the log-probabilities missing (a baseline from before the column) offers no
    # mean_logprob row rather than one of NaNs
    old = compare_frames(base.drop(columns=["logprob", "token_logprobs"]), hot, side("generate"), side("generate"),
                         tolerances=NO_UNMATCHED, gates=Gates())
    assert "mean_logprob" not in set(old.statistics["metric"]) and old.passed


PENALTY = """
name: penalty
models: [{{alias: tiny, source: {model}}}]
prompts: [{{name: p, items: {prompts}}}]
task: generate
decoding:
  max_new_tokens: 48
  seeds: {seeds}
  include: [{{temperature: 0.7}}, {{temperature: 0.7, repetition_penalty: 1.2}}]
execution: {{batch_size: 64}}
"""


def test_a_repetition_penalty_slipped_into_sampling_fires_the_distinct_1_gate(tmp_path, tiny_llama):
    """A repetition penalty of 1.2 where none was asked for: each 48-token text of the tiny model repeats fewer
    of its tokens (distinct-1 up by about 0.08, beyond its 0.05 threshold); Mann–Whitney's p is scipy's."""
    spec = tmp_path / "penalty.yaml"
    spec.write_text(PENALTY.format(model=tiny_llama, prompts=PROMPTS, seeds=list(range(15))))
    df = load(run(spec, tmp_path / "runs"))
    base = df[df["decoding"] == "sample t=0.7"]
    penalised = as_if_asked_for(df[df["decoding"] == "sample t=0.7 rep=1.2"], "sample t=0.7")
    c = compare_frames(base, penalised, side("generate"), side("generate"), tolerances=NO_UNMATCHED, gates=Gates())
    row = gate_rows(c, "distinct_1").iloc[0]
    d1 = [[len(set(ids)) / len(ids) if len(ids) else 1.0 for ids in g["token_ids"]] for g in (base, penalised)]
    assert row["p"] == pytest.approx(sps.mannwhitneyu(d1[1], d1[0], alternative="two-sided").pvalue, rel=1e-12)
    assert row["difference"] > 0.05 and row["verdict"] == "REGRESSION" and not c.passed


NEXT = """
name: nt
models: [{{alias: tiny, source: {model}}}]
prompts: [{{name: p, items: {prompts}}}]
task: {{type: next_token, top_k: 10}}
regression:
  gates: {{alpha: 0.01, correction: bh}}
"""


@pytest.mark.slow
def test_weight_noise_fires_the_next_token_kl_gate_and_a_rerun_passes(tmp_path, tiny_llama):
    prompts = [f"{a} {b}" for a in ("The", "My dog", "Once", "No, I")
               for b in ("was", "is", "ate", "saw", "ran", "had")]
    noisy = perturb(tiny_llama, tmp_path / "models" / "noisy", scale=0.05)
    exps = {}
    for name, model in (("a", tiny_llama), ("noisy", noisy)):
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(NEXT.format(model=model, prompts=prompts))
        exps[name] = run(spec, tmp_path / name)
    same = cli("compare", str(exps["a"]), str(exps["a"]))
    assert same.returncode == 0, same.stdout + same.stderr
    bad = cli("compare", str(exps["a"]), str(exps["noisy"]), "--max-prob-delta", "off", "--min-topk-overlap", "off")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL: significant shifts beyond threshold" in bad.stdout + bad.stderr
    md = (exps["noisy"] / "reports" / "compare.md").read_text()
    kl = next(line for line in md.splitlines() if "| kl_topk |" in line)
    assert "REGRESSION" in kl and "Wilcoxon signed-rank" in kl and "| 24 |" in kl
