"""compare's statistical regression gates (`regression.gates`) on pairs with known effects: a known accuracy
drop fires McNemar, weight noise fires the next-token KL gate, a temperature change fires the sampled-text
gates, and same-software comparisons with fresh seeds fire none, at a false-positive rate measured here."""
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
from lmsweep.results.compare import SideInfo, compare_frames, to_markdown
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
