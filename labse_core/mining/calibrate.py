"""A mining threshold read off the run's own margin distribution: no gold, no tuning set.

**Why.** A margin threshold tuned on one kind of text does not transfer: tuned on gettext UI strings it
loses much recall on longer documents (docs/evaluation.md), and each model compresses margins
differently (e5's best pairs score ~1.12, a from-scratch encoder's far more). But every mining run
carries its own evidence: the best candidate of a sentence that has a translation on the other side
scores far above the best candidate of one that has none (a mere nearest neighbour, margin ~1). The
candidates' scores are two populations; the threshold is where they cross.

**The methods** (all on the scores of the candidate pairs the mining mode produced, before any
threshold; s_1 <= ... <= s_n sorted):

- ``otsu`` (the default): the cut that maximizes the between-class variance w_0 w_1 (mean_0 - mean_1)^2
  of "score < t" vs "score >= t" (Otsu 1979); the threshold is the lowest score of the upper class.
- ``mixture``: a two-component Gaussian mixture fitted by EM, started from the ``otsu`` split::

      p(s) = w_0 N(s; m_0, v_0) + w_1 N(s; m_1, v_1)          m_0 < m_1, w_0 + w_1 = 1

  and the threshold is the score between the means where both weighted densities are equal (posterior
  1/2: a pair is kept when it is more likely a translation than not). Accepted only when the two
  components are separated (Ashman's D = sqrt(2) |m_1 - m_0| / sqrt(v_0 + v_1) >= ``min_separation``) and
  the upper one holds at least ``min_weight`` of the candidates; else the fallback.
- ``valley``: the lowest point of a Gaussian kernel density estimate (Silverman's bandwidth) between its
  two highest modes.

**Why Otsu is the default** (measured, docs/evaluation.md "Mining thresholds across domains";
``bench/docs_eval.py``, results in bench/results/docs_mining.json): mean F1 over de/fr/ru/ja of the
zero-shot e5 import and a checkpoint fine-tuned on gettext pairs, on three kinds of set (gettext held-out
test, man pages with 1/3 gold, man pages with 1/21 gold):

- the gettext-tuned threshold (1.26-1.37 for the fine-tuned model) is best in its own domain but loses
  recall on man pages: fine-tuned 0.796 vs Otsu's 0.865 (recall 0.71 vs 0.83); on the sparse man-page
  set the import's gettext-tuned 1.01 keeps too much (F1 0.597 vs 0.729);
- Otsu is within 0.02-0.06 of the gettext-tuned value on gettext itself and within 0.02-0.06 of the oracle
  on man pages, for both models, with no tuning set;
- the mixture rejects 10 of the 24 sets (Ashman's D 1.1-1.9: the populations overlap) and its
  fallback (fixed 1.06) is far off for e5's compressed margins (F1 down to 0.21); the KDE valley picks
  a spurious mode on 5 sets (F1 0.02-0.37).

The cost of Otsu: it always cuts. Two inputs with almost no translations between them still give an
upper class (a mere best neighbour); the choice records that class's share (``upper_share``) and the run's
summary prints it. Mining unrelated corpora: give ``--threshold`` (``labse evaluate docs`` or
``labse evaluate bucc`` tell which), or ``--calibration mixture``, which refuses one population.

When a method finds no two populations (too few candidates, one population only: e.g. two inputs with
almost no translations between them), the threshold is ``fallback`` (``DEFAULT_THRESHOLDS`` of the
margin) and the choice says so. Every choice records its method and diagnostics so that the mined
dataset's run says which threshold was used and how it was chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Method = Literal["mixture", "otsu", "valley"]
METHODS: tuple[str, ...] = ("mixture", "otsu", "valley")

MIN_CANDIDATES = 20
"""Fewer candidate scores than this cannot show two populations: the fallback is used."""


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold of a mining run and how it was chosen."""

    value: float
    method: str
    """``mixture``, ``otsu``, ``valley`` (calibrated), ``fallback`` (calibration found no two populations),
    ``given`` (``--threshold``), or a note such as ``bucc-tuned``."""
    detail: dict = field(default_factory=dict)
    """Diagnostics: the candidates' count, the components' means/stds/weights, the separation, why a
    fallback was used."""

    def as_record(self) -> dict:
        """JSON-ready: ``{"threshold": ..., "threshold_method": ..., "threshold_detail": {...}}``."""
        return {"threshold": self.value, "threshold_method": self.method, "threshold_detail": self.detail}


# ---------------------------------------------------------------------------------------------------
# Otsu


def otsu_cut(scores: np.ndarray) -> int:
    """Index c into the sorted scores s (ascending) of the best two-class split {s_<c} | {s_>=c} by
    between-class variance, 1 <= c <= n-1, a cut only between distinct values (the first of equal
    maxima). Requires two distinct values."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    csum = np.cumsum(s)  # csum[c-1] = sum of the lower class of cut c
    c = np.arange(1, n)  # (n-1,) candidate cuts
    w0 = c / n
    m0 = csum[c - 1] / c
    m1 = (csum[-1] - csum[c - 1]) / (n - c)
    between = w0 * (1 - w0) * (m0 - m1) ** 2
    between = np.where(s[c] > s[c - 1], between, -1.0)  # no cut inside a run of equal scores
    return int(c[int(np.argmax(between))])


# ---------------------------------------------------------------------------------------------------
# Two-component Gaussian mixture


@dataclass(frozen=True)
class Mixture:
    weights: tuple[float, float]
    means: tuple[float, float]
    variances: tuple[float, float]
    iterations: int
    log_likelihood: float

    @property
    def separation(self) -> float:
        """Ashman's D: > 2 means two clearly separated populations."""
        return math.sqrt(2) * abs(self.means[1] - self.means[0]) / math.sqrt(sum(self.variances))


def _log_normal(x: np.ndarray, mean: float, var: float) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


def fit_mixture(scores: np.ndarray, max_iter: int = 500, tol: float = 1e-10) -> Mixture:
    """EM for a two-component 1-D Gaussian mixture, started from the Otsu split (so the result is
    deterministic), components ordered by mean. A variance floor (1e-6 of the data's variance) keeps
    a component from collapsing onto one repeated score."""
    x = np.asarray(scores, dtype=np.float64)
    s = np.sort(x)
    c = otsu_cut(s)
    lo, hi = s[:c], s[c:]
    floor = max(1e-6 * float(x.var()), 1e-12)
    w = np.array([len(lo) / len(x), len(hi) / len(x)])
    m = np.array([lo.mean(), hi.mean()])
    v = np.maximum(np.array([lo.var(), hi.var()]), floor)
    prev = -np.inf
    iterations = 0
    ll = -np.inf
    while iterations < max_iter:
        iterations += 1
        logp = np.stack([np.log(w[k]) + _log_normal(x, m[k], v[k]) for k in range(2)])  # (2, n)
        top = logp.max(axis=0)
        norm = top + np.log(np.exp(logp - top).sum(axis=0))  # (n,) log p(x_i)
        ll = float(norm.sum())
        r = np.exp(logp - norm)  # (2, n) responsibilities
        nk = r.sum(axis=1)
        if np.any(nk < 1e-9):  # a component lost every point: stop where it is
            break
        w = nk / len(x)
        m = (r @ x) / nk
        v = np.maximum((r * (x[None, :] - m[:, None]) ** 2).sum(axis=1) / nk, floor)
        if ll - prev < tol * abs(ll):
            break
        prev = ll
    order = np.argsort(m, kind="stable")
    return Mixture((float(w[order[0]]), float(w[order[1]])), (float(m[order[0]]), float(m[order[1]])),
                   (float(v[order[0]]), float(v[order[1]])), iterations, ll)


def mixture_crossing(mix: Mixture) -> float | None:
    """The score between the two means where w_0 N(s; m_0, v_0) = w_1 N(s; m_1, v_1); None if the
    weighted densities do not cross there (one component dominates everywhere between the means)."""
    (w0, w1), (m0, m1), (v0, v1) = mix.weights, mix.means, mix.variances
    # log w0 - (s-m0)^2/(2 v0) - log(v0)/2 = log w1 - (s-m1)^2/(2 v1) - log(v1)/2  ->  a s^2 + b s + c = 0
    a = 1 / (2 * v1) - 1 / (2 * v0)
    b = m0 / v0 - m1 / v1
    c = m1**2 / (2 * v1) - m0**2 / (2 * v0) + math.log(w0 / w1) + 0.5 * math.log(v1 / v0)
    if abs(a) < 1e-15 * max(1 / v0, 1 / v1):
        roots = [-c / b] if b != 0 else []
    else:
        disc = b * b - 4 * a * c
        if disc < 0:
            return None
        q = math.sqrt(disc)
        roots = [(-b - q) / (2 * a), (-b + q) / (2 * a)]
    inside = [t for t in roots if m0 <= t <= m1]
    return min(inside, key=lambda t: abs(t - (m0 + m1) / 2)) if inside else None


# ---------------------------------------------------------------------------------------------------
# Valley of a kernel density estimate


def kde_valley(scores: np.ndarray, grid: int = 512) -> float | None:
    """The minimum of a Gaussian KDE (Silverman's bandwidth) between its two highest local maxima on a
    regular grid over the scores' range; None with fewer than two modes."""
    x = np.asarray(scores, dtype=np.float64)
    n = len(x)
    sd = float(x.std())
    iqr = float(np.subtract(*np.percentile(x, [75, 25])))
    h = 0.9 * min(sd, iqr / 1.34 if iqr > 0 else sd) * n ** (-0.2)
    if not h > 0:
        return None
    g = np.linspace(x.min(), x.max(), grid)
    dens = np.zeros(grid)
    for start in range(0, n, 4096):  # (grid, chunk) at a time
        d = (g[:, None] - x[None, start : start + 4096]) / h
        dens += np.exp(-0.5 * d * d).sum(axis=1)
    peaks = [i for i in range(1, grid - 1) if dens[i] > dens[i - 1] and dens[i] >= dens[i + 1]]
    if dens[0] > dens[1]:
        peaks.insert(0, 0)
    if dens[-1] > dens[-2]:
        peaks.append(grid - 1)
    if len(peaks) < 2:
        return None
    a, b = sorted(sorted(peaks, key=lambda i: -dens[i])[:2])
    return float(g[a + int(np.argmin(dens[a : b + 1]))])


# ---------------------------------------------------------------------------------------------------


def calibrate(scores: np.ndarray, method: Method = "otsu", fallback: float = 1.06, *,
              min_separation: float = 2.0, min_weight: float = 0.01) -> ThresholdChoice:
    """The threshold for these candidate scores (module docstring); ``fallback`` when they do not show
    two populations. Non-finite scores (rows without a candidate) are ignored."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration {method!r}; use one of {', '.join(METHODS)}")
    x = np.asarray(scores, dtype=np.float64)
    x = x[np.isfinite(x)]
    detail: dict = {"candidates": int(len(x))}

    def fall(why: str) -> ThresholdChoice:
        return ThresholdChoice(float(fallback), "fallback", detail | {"calibration": method, "why": why})

    if len(x) < MIN_CANDIDATES:
        return fall(f"{len(x)} candidate scores (< {MIN_CANDIDATES})")
    if float(x.max()) == float(x.min()):
        return fall("every candidate has the same score")
    if method == "otsu":
        s = np.sort(x)
        c = otsu_cut(s)
        detail |= {"upper_share": round(1 - c / len(s), 6)}
        return ThresholdChoice(float(s[c]), "otsu", detail)
    if method == "valley":
        t = kde_valley(x)
        if t is None:
            return fall("the density has one mode")
        return ThresholdChoice(t, "valley", detail)
    mix = fit_mixture(x)
    detail |= {"weights": [round(w, 6) for w in mix.weights], "means": [round(m, 6) for m in mix.means],
               "stds": [round(math.sqrt(v), 6) for v in mix.variances], "separation": round(mix.separation, 4),
               "iterations": mix.iterations}
    if mix.separation < min_separation:
        return fall(f"components not separated (Ashman's D {mix.separation:.2f} < {min_separation})")
    if mix.weights[1] < min_weight:
        return fall(f"the upper component holds {mix.weights[1]:.2%} of the candidates (< {min_weight:.0%})")
    t = mixture_crossing(mix)
    if t is None:
        return fall("the weighted densities do not cross between the means")
    return ThresholdChoice(t, "mixture", detail)
