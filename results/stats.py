"""Statistics behind compare's regression gates: is a difference between two runs drift or noise?

Pure: arrays in, numbers out; the tests and distributions are scipy.stats', the resampling is seeded, so
the same rows always give the same verdict. Four shapes of comparison, each a `Result`:

- **two samples** (`two_sample`): per-unit metrics of sampled generation (length, distinct-1/2,
  repetition, finish reason, mean log-probability of the tokens under the model; `generation_metrics`)
  on each side, not paired unit for unit (a sampled unit's text depends on its seed, and a nightly run
  may draw new seeds): Mann–Whitney U (the test that gates, with the rank-biserial correlation as effect
  size), Kolmogorov–Smirnov (shape; reported beside it) and a bootstrap CI of the difference of means;
- **paired** (`paired`): a score per unit on both sides (a log-likelihood, an entropy, a label
  log-likelihood): Wilcoxon signed-rank on the differences and a bootstrap CI of their mean;
  `one_sample` is the same against zero (e.g. per-unit KL divergences, `topk_kl`);
- **paired binary** (`mcnemar`): right/wrong per unit on both sides: exact McNemar on the flips and a
  bootstrap CI of the accuracy difference.

Every Result carries the minimum detectable effect (`mde`): the smallest true difference the test
would find at `alpha` with probability `power` at this sample size (normal approximation on the
observed spread), and infinity when the sample is too small for the test to reach `alpha` at all (its
smallest possible p-value is above it). `holm` and `benjamini_hochberg` adjust the p-values of many
comparisons (decoding points × metrics) together.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

POWER = 0.8
RESAMPLES = 2000
RESAMPLED_VALUES = 20_000_000   # values held at once while resampling (160 MB of floats), whatever the sample size
REP_N = 4          # repetition: seq-rep-4 (Welleck et al., 2019), the share of repeated 4-grams


@dataclass(frozen=True)
class Result:
    """One metric compared between baseline and current. `diff` is current − baseline (of means, or of
    shares), with its bootstrap confidence interval [ci_low, ci_high]; `p` is the test's two-sided
    p-value, not yet adjusted for multiple comparisons."""

    test: str
    n_baseline: int
    n_current: int
    baseline: float
    current: float
    diff: float
    ci_low: float
    ci_high: float
    p: float
    mde: float
    effect: float | None = None          # rank-biserial correlation (two samples), or None
    extra: dict = field(default_factory=dict)   # other statistics worth showing (e.g. KS D and p)


# ---- per-unit metrics of generated text ------------------------------------------------------------------

def ngrams(ids: Sequence[int], n: int) -> list[tuple]:
    ids = list(ids)
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def distinct(ids: Sequence[int], n: int) -> float:
    """Distinct n-grams over all n-grams of one sequence (Li et al., 2016); 1.0 when it has none."""
    grams = ngrams(ids, n)
    return len(set(grams)) / len(grams) if grams else 1.0


def repetition(ids: Sequence[int], n: int = REP_N) -> float:
    """1 − unique/total n-grams of one sequence: 0 for no repeats, near 1 for a loop."""
    grams = ngrams(ids, n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def generation_metrics(token_ids: Sequence[Sequence[int]], finish_reasons: Sequence[str | None],
                       budget_reason: str = "length",
                       logprobs: Sequence[float | None] | None = None) -> dict[str, np.ndarray]:
    """Per sequence: length (tokens), distinct_1, distinct_2, repetition, hit_budget (1 when the
    sequence stopped at max_new_tokens, i.e. its finish reason is `budget_reason`, else 0) and mean_logprob
    (the sequence's summed token log-probability ÷ its tokens; NaN where it is unknown or has no tokens)."""
    seqs = [list(s) for s in token_ids]
    lengths = np.array([len(s) for s in seqs], dtype=float)
    total = np.array([np.nan if v is None else v for v in (logprobs if logprobs is not None else [None] * len(seqs))],
                     dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_logprob = np.where(lengths > 0, total / np.maximum(lengths, 1), np.nan)
    return {"length": lengths,
            "distinct_1": np.array([distinct(s, 1) for s in seqs]),
            "distinct_2": np.array([distinct(s, 2) for s in seqs]),
            "repetition": np.array([repetition(s) for s in seqs]),
            "hit_budget": np.array([1.0 if r == budget_reason else 0.0 for r in finish_reasons]),
            "mean_logprob": mean_logprob}


def topk_kl(ids_a: Sequence[int], probs_a: Sequence[float], ids_b: Sequence[int],
            probs_b: Sequence[float]) -> float:
    """KL(a ‖ b) in nats over the union of two top-k lists plus one bucket for the rest of the vocabulary.

    A token listed on one side only gets, on the other, the mass that side left unlisted shared equally
    among its missing tokens, capped at that side's smallest listed probability (it was not in the
    top-k, so it is no more likely than the k-th); what remains is the rest bucket. Equal lists give 0."""
    a, b = dict(zip(ids_a, map(float, probs_a))), dict(zip(ids_b, map(float, probs_b)))
    union = sorted(set(a) | set(b))

    def dist(side: dict[int, float]) -> np.ndarray:
        listed = sum(side.values())
        rest = max(0.0, 1.0 - listed)
        missing = [t for t in union if t not in side]
        fill = min(rest / len(missing), min(side.values(), default=0.0)) if missing else 0.0
        p = np.array([side.get(t, fill) for t in union] + [max(0.0, rest - fill * len(missing))])
        return p / p.sum()

    pa, pb = dist(a), dist(b)
    tiny = np.finfo(float).tiny          # a bucket empty on b but not on a: large, finite
    return float(stats.entropy(pa, np.maximum(pb, tiny)))


# ---- multiple comparisons ------------------------------------------------------------------------------

def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error): the i-th smallest times (m − i), made
    monotone, capped at 1. NaN p-values stay NaN and do not count."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = len(q)
    if m:
        order = np.argsort(q, kind="stable")
        adj = np.maximum.accumulate((m - np.arange(m)) * q[order])
        res = np.empty(m)
        res[order] = np.minimum(adj, 1.0)
        out[ok] = res
    return out


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (false discovery rate; scipy.stats.false_discovery_control)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg, "none": lambda p: np.asarray(p, dtype=float)}


def adjust(p: Sequence[float], method: str) -> np.ndarray:
    """p-values adjusted by `method` (holm | bh | none)."""
    return CORRECTIONS[method](p)


# ---- minimum detectable effect -------------------------------------------------------------------------

def z_sum(alpha: float, power: float = POWER) -> float:
    """z_{1−α/2} + z_{power}: how many standard errors a true difference must span to be found."""
    return float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))


def mde_two_sample(a: np.ndarray, b: np.ndarray, alpha: float, power: float = POWER) -> float:
    """Smallest |difference of means| detectable at `alpha` with `power` (normal approximation on the
    observed variances); inf when Mann–Whitney's smallest possible p-value, 2 / C(n_a + n_b, n_a), is
    above `alpha`."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2 or 2 / math.comb(na + nb, na) > alpha:
        return math.inf
    return z_sum(alpha, power) * math.sqrt(np.var(a, ddof=1) / na + np.var(b, ddof=1) / nb)


def mde_paired(d: np.ndarray, alpha: float, power: float = POWER) -> float:
    """Smallest |mean paired difference| detectable; inf when the signed-rank test's smallest p-value at
    this many pairs, 2 / 2^n, is above `alpha`."""
    n = len(d)
    if n < 2 or 2 * 0.5 ** n > alpha:
        return math.inf
    return z_sum(alpha, power) * float(np.std(d, ddof=1)) / math.sqrt(n)


def min_flips(alpha: float) -> int:
    """The fewest one-way flips that make exact McNemar significant at `alpha` (2 · 0.5^k ≤ alpha)."""
    return max(1, math.ceil(math.log2(2 / alpha)))


def mde_mcnemar(flips: np.ndarray, alpha: float, power: float = POWER) -> float:
    """Smallest |accuracy difference| detectable over n paired units: at least min_flips(alpha)/n (flips
    all one way, no background), and at least the normal approximation on the observed flip rate."""
    n = len(flips)
    need = min_flips(alpha)
    if n < need:
        return math.inf
    approx = z_sum(alpha, power) * float(np.std(flips, ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return max(need / n, approx)


# ---- tests ---------------------------------------------------------------------------------------------

def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _interval(data: tuple[np.ndarray, ...], statistic, seed: int, resamples: int, paired: bool = False,
              level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI (scipy.stats.bootstrap, seeded); constant data give a zero-width interval."""
    if any(len(x) < 2 for x in data):
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # degenerate (constant) data: a zero-width interval is right
        res = stats.bootstrap(data, statistic, n_resamples=resamples, paired=paired, vectorized=True,
                              confidence_level=level, method="percentile", rng=_rng(seed),
                              batch=max(1, RESAMPLED_VALUES // sum(len(x) for x in data)))
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


def _mean_diff(x, y, axis=-1):
    return np.mean(y, axis=axis) - np.mean(x, axis=axis)


def two_sample(baseline: Sequence[float], current: Sequence[float], *, alpha: float = 0.01, power: float = POWER,
               seed: int = 0, resamples: int = RESAMPLES) -> Result:
    """Unpaired: Mann–Whitney U (gates; effect: rank-biserial r = 2U/(n_a n_b) − 1, positive when current is
    larger), Kolmogorov–Smirnov (extra: ks_d, ks_p) and a bootstrap CI of mean(current) − mean(baseline)."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(current, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return Result("Mann-Whitney U", len(a), len(b), _mean(a), _mean(b), math.nan, math.nan, math.nan,
                      math.nan, math.inf)
    if np.array_equal(np.unique(a), np.unique(b)) and len(np.unique(a)) == 1:
        p, r, ks_d, ks_p = 1.0, 0.0, 0.0, 1.0               # both sides one and the same value
    else:
        mw = stats.mannwhitneyu(b, a, alternative="two-sided")
        p, r = float(mw.pvalue), float(2 * mw.statistic / (len(a) * len(b)) - 1)
        ks = stats.ks_2samp(a, b)
        ks_d, ks_p = float(ks.statistic), float(ks.pvalue)
    lo, hi = _interval((a, b), _mean_diff, seed, resamples)
    return Result("Mann-Whitney U", len(a), len(b), _mean(a), _mean(b), _mean(b) - _mean(a), lo, hi, p,
                  mde_two_sample(a, b, alpha, power), effect=r, extra={"ks_d": ks_d, "ks_p": ks_p})


def paired(baseline: Sequence[float], current: Sequence[float], *, alpha: float = 0.01, power: float = POWER,
           seed: int = 0, resamples: int = RESAMPLES) -> Result:
    """Paired (unit i on both sides): Wilcoxon signed-rank on current − baseline (zero differences dropped;
    all zero: p = 1) and a bootstrap CI of the mean difference."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(current, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    d = b - a
    if len(d) == 0:
        return Result("Wilcoxon signed-rank", 0, 0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan,
                      math.inf)
    p = 1.0 if not np.any(d) else float(stats.wilcoxon(d).pvalue)
    lo, hi = _interval((d,), np.mean, seed, resamples)
    return Result("Wilcoxon signed-rank", len(a), len(b), _mean(a), _mean(b), _mean(d), lo, hi, p,
                  mde_paired(d, alpha, power))


def one_sample(values: Sequence[float], **kw) -> Result:
    """Values against zero (e.g. per-unit divergences): `paired` with a baseline of zeros."""
    v = np.asarray(values, dtype=float)
    return paired(np.zeros_like(v), v, **kw)


def mcnemar(baseline: Sequence[bool], current: Sequence[bool], *, alpha: float = 0.01, power: float = POWER,
            seed: int = 0, resamples: int = RESAMPLES) -> Result:
    """Paired right/wrong: exact McNemar (a binomial test of wrong→right among all flips; no flips: p = 1)
    and a bootstrap CI of accuracy(current) − accuracy(baseline). extra: the flip counts."""
    a, b = np.asarray(baseline, dtype=bool), np.asarray(current, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    worse, better = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = 1.0 if worse + better == 0 else float(stats.binomtest(better, worse + better, 0.5).pvalue)
    flips = b.astype(float) - a.astype(float)
    lo, hi = _interval((flips,), np.mean, seed, resamples) if len(flips) else (math.nan, math.nan)
    return Result("McNemar (exact)", len(a), len(b), _mean(a), _mean(b), _mean(flips), lo, hi, p,
                  mde_mcnemar(flips, alpha, power), extra={"right_to_wrong": worse, "wrong_to_right": better})


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else math.nan
