"""results.stats on small arrays: each statistic recomputed by hand (or by scipy.stats called directly)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from lmsweep.results import stats


def test_per_sequence_generation_metrics_by_hand():
    m = stats.generation_metrics([[1, 2, 1, 2, 1, 2], [5], []], ["length", "eos", "eos"])
    assert list(m["length"]) == [6, 1, 0]
    assert m["distinct_1"][0] == pytest.approx(2 / 6) and m["distinct_2"][0] == pytest.approx(2 / 5)
    # 4-grams of 1 2 1 2 1 2: (1212), (2121), (1212): one repeat among three
    assert m["repetition"][0] == pytest.approx(1 - 2 / 3)
    assert list(m["distinct_1"][1:]) == [1.0, 1.0] and list(m["repetition"][1:]) == [0.0, 0.0]
    assert list(m["hit_budget"]) == [1.0, 0.0, 0.0]


def test_holm_by_hand():
    # sorted: .005×4 = .02, .01×3 = .03, .03×2 = .06, .04×1 = .04 → running max .06
    got = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.6, 0.9])[1] == 1.0                # capped at 1
    assert np.isnan(stats.holm([np.nan, 0.01])[0]) and stats.holm([np.nan, 0.01])[1] == 0.01


def test_benjamini_hochberg_by_hand():
    # sorted p × m / rank: .02, .02, .04, .04; then the running minimum from the largest down
    assert stats.benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert stats.adjust([0.2, 0.01], "none") == pytest.approx([0.2, 0.01])


def test_two_sample_mann_whitney_exact_p_and_rank_biserial_by_hand():
    r = stats.two_sample([1, 2, 3], [4, 5, 6], alpha=0.05, resamples=200)
    # complete separation: U = 9 of n_a·n_b = 9; exact two-sided p = 2 / C(6, 3)
    assert r.p == pytest.approx(2 / math.comb(6, 3)) and r.effect == pytest.approx(1.0)
    assert r.diff == pytest.approx(3.0) and r.baseline == 2.0 and r.current == 5.0
    assert r.extra["ks_d"] == pytest.approx(1.0)
    assert r.extra["ks_p"] == pytest.approx(sps.ks_2samp([1, 2, 3], [4, 5, 6]).pvalue)
    # 2/20 = 0.1 > alpha: no shift of any size could be found with three per side
    assert r.mde == math.inf


def test_two_sample_ks_statistic_by_hand_and_equal_constants_are_p_1():
    r = stats.two_sample([1, 2, 3], [2, 3, 4], resamples=200)
    assert r.extra["ks_d"] == pytest.approx(1 / 3)         # the ECDFs differ by 1/3 at 1, 2 and 3
    same = stats.two_sample([8.0] * 5, [8.0] * 5, resamples=200)
    assert same.p == 1.0 and same.diff == 0.0 and (same.ci_low, same.ci_high) == (0.0, 0.0)


def test_bootstrap_interval_is_scipys_seeded_percentile_interval():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 40), rng.normal(0.5, 1, 50)
    r = stats.two_sample(a, b, seed=7, resamples=500)
    ref = sps.bootstrap((a, b), lambda x, y, axis: y.mean(axis) - x.mean(axis), n_resamples=500,
                        vectorized=True, method="percentile", rng=np.random.default_rng(7)).confidence_interval
    assert (r.ci_low, r.ci_high) == pytest.approx((ref.low, ref.high))
    assert r.ci_low < r.diff < r.ci_high
    assert stats.two_sample(a, b, seed=7, resamples=500) == r            # seeded: the same verdict every time


def test_paired_wilcoxon_exact_p_by_hand():
    base = np.zeros(5)
    cur = np.array([1, 2, 3, -0.5, 4])
    r = stats.paired(base, cur, resamples=200)
    # |d| ranks: 0.5→1 (negative), 1→2, 2→3, 3→4, 4→5; W− = 1; P(W ≤ 1) = #{∅, {1}} / 2^5; two-sided ×2
    assert r.p == pytest.approx(2 * 2 / 32)
    assert r.diff == pytest.approx(cur.mean())
    assert stats.paired(cur, cur, resamples=200).p == 1.0          # no difference at all
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired([1, 2], [1])


def test_mde_formulas_by_hand():
    z = sps.norm.ppf(1 - 0.01 / 2) + sps.norm.ppf(0.8)
    a, b = np.arange(10.0), np.arange(12.0)
    assert stats.mde_two_sample(a, b, 0.01) == pytest.approx(z * math.sqrt(a.var(ddof=1) / 10 + b.var(ddof=1) / 12))
    d = np.array([0.1, -0.2, 0.3, 0.0, 0.1, 0.2, -0.1, 0.4])
    assert stats.mde_paired(d, 0.01) == pytest.approx(z * d.std(ddof=1) / math.sqrt(8))
    assert stats.mde_paired(d[:7], 0.01) == math.inf               # 2·0.5^7 = 0.0156 > 0.01
    # exact McNemar needs k one-way flips with 2·0.5^k ≤ alpha: 8 at 0.01 (2^-7 = 0.0078), 6 at 0.05
    assert stats.min_flips(0.01) == 8 and stats.min_flips(0.05) == 6
    assert stats.mde_mcnemar(np.zeros(7), 0.01) == math.inf and stats.mde_mcnemar(np.zeros(100), 0.01) == 0.08


def test_mcnemar_exact_p_and_accuracy_difference_by_hand():
    base = [True] * 20
    cur = [False] * 3 + [True] * 17
    r = stats.mcnemar(base, cur, resamples=200)
    assert r.p == pytest.approx(2 * 0.5 ** 3) and r.extra == {"right_to_wrong": 3, "wrong_to_right": 0}
    assert (r.baseline, r.current, r.diff) == pytest.approx((1.0, 0.85, -0.15))
    assert r.ci_high <= 0 and r.ci_low >= -0.5
    mixed = stats.mcnemar([True, False, True, False] * 5, [False, True, True, False] * 5, resamples=200)
    assert mixed.p == pytest.approx(1.0) and mixed.diff == 0.0      # 5 flips each way


def test_topk_kl_by_hand():
    assert stats.topk_kl([1, 2], [0.5, 0.3], [1, 2], [0.5, 0.3]) == 0.0
    # same lists: (0.5, 0.3, rest 0.2) against (0.4, 0.4, rest 0.2)
    want = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4)
    assert stats.topk_kl([1, 2], [0.5, 0.3], [1, 2], [0.4, 0.4]) == pytest.approx(want)
    # token 3 only in b: a's unlisted 0.1 (≤ a's smallest 0.3) goes to it, a's rest bucket is 0;
    # token 2 only in a: b's unlisted 0.3 is capped at b's smallest 0.2, leaving 0.1 in b's rest
    want = 0.6 * math.log(0.6 / 0.5) + 0.3 * math.log(0.3 / 0.2) + 0.1 * math.log(0.1 / 0.2)
    assert stats.topk_kl([1, 2], [0.6, 0.3], [1, 3], [0.5, 0.2]) == pytest.approx(want)
    assert stats.one_sample([0.0, 0.0, 0.0], resamples=50).p == 1.0
