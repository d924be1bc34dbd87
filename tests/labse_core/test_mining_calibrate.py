"""labse_core.mining.calibrate: each fast path against a plain reference (loops, brute force), the
mixture against the parameters it was sampled from, the fallbacks, and the miner using it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labse_core.mining import calibrate as cal
from labse_core.mining.miner import (
    DEFAULT_THRESHOLDS,
    MineConfig,
    choose_threshold,
    mine_embeddings,
    mine_scored,
)


def two_populations(n_lo: int, n_hi: int, seed: int = 0, lo=(1.00, 0.015), hi=(1.10, 0.02)) -> np.ndarray:
    """Margins as a mining run sees them: many best candidates at ~1 (no translation on the other side),
    fewer translations well above."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(*lo, n_lo), rng.normal(*hi, n_hi)]).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Plain references


def otsu_plain(scores) -> float:
    """Every cut between two distinct sorted values; between-class variance in Python floats; the first
    best. Returns the lowest score of the upper class."""
    s = sorted(float(v) for v in scores)
    n = len(s)
    best, best_c = -1.0, None
    for c in range(1, n):
        if s[c] == s[c - 1]:
            continue
        lo, hi = s[:c], s[c:]
        m0, m1 = sum(lo) / len(lo), sum(hi) / len(hi)
        v = (c / n) * (1 - c / n) * (m0 - m1) ** 2
        if v > best + 1e-15 * max(1.0, abs(best)):
            best, best_c = v, c
    return s[best_c]


def em_plain(x, w, m, v, iters: int, floor: float):
    """Textbook EM for two 1-D Gaussians, one point at a time, Python floats."""
    x = [float(t) for t in x]
    w, m, v = list(w), list(m), list(v)
    for _ in range(iters):
        r0 = []
        for t in x:
            p = [w[k] * math.exp(-0.5 * (t - m[k]) ** 2 / v[k]) / math.sqrt(2 * math.pi * v[k]) for k in range(2)]
            r0.append(p[0] / (p[0] + p[1]))
        n0 = sum(r0)
        n1 = len(x) - n0
        w = [n0 / len(x), n1 / len(x)]
        m = [sum(r * t for r, t in zip(r0, x, strict=True)) / n0, sum((1 - r) * t for r, t in zip(r0, x, strict=True)) / n1]
        v = [max(sum(r * (t - m[0]) ** 2 for r, t in zip(r0, x, strict=True)) / n0, floor),
             max(sum((1 - r) * (t - m[1]) ** 2 for r, t in zip(r0, x, strict=True)) / n1, floor)]
    return w, m, v


def crossing_plain(w, m, v) -> float:
    """Bisection on the difference of the weighted log densities between the means."""
    def f(t):
        return (math.log(w[0]) - 0.5 * math.log(v[0]) - (t - m[0]) ** 2 / (2 * v[0])
                - math.log(w[1]) + 0.5 * math.log(v[1]) + (t - m[1]) ** 2 / (2 * v[1]))
    lo, hi = m[0], m[1]
    assert f(lo) > 0 > f(hi)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def kde_valley_plain(scores, grid: int = 512) -> float:
    x = [float(t) for t in scores]
    n = len(x)
    mean = sum(x) / n
    sd = math.sqrt(sum((t - mean) ** 2 for t in x) / n)
    q75, q25 = np.percentile(x, [75, 25])
    h = 0.9 * min(sd, (q75 - q25) / 1.34) * n ** (-0.2)
    lo, hi = min(x), max(x)
    g = [lo + (hi - lo) * i / (grid - 1) for i in range(grid)]
    dens = [sum(math.exp(-0.5 * ((gi - t) / h) ** 2) for t in x) for gi in g]
    peaks = [i for i in range(1, grid - 1) if dens[i] > dens[i - 1] and dens[i] >= dens[i + 1]]
    if dens[0] > dens[1]:
        peaks.insert(0, 0)
    if dens[-1] > dens[-2]:
        peaks.append(grid - 1)
    a, b = sorted(sorted(peaks, key=lambda i: -dens[i])[:2])
    j = min(range(a, b + 1), key=lambda i: (dens[i], i))
    return g[j]


# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_equals_the_brute_force_over_every_cut(seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([two_populations(150, 40, seed), rng.choice([1.0, 1.05], 20).astype(np.float32)])  # ties too
    c = cal.otsu_cut(x)
    assert float(np.sort(x.astype(np.float64))[c]) == pytest.approx(otsu_plain(x), abs=0)


def test_otsu_never_cuts_inside_a_run_of_equal_scores():
    x = np.array([1.0] * 10 + [1.2] * 3 + [1.21] * 4)
    s = np.sort(x)
    c = cal.otsu_cut(x)
    assert s[c] != s[c - 1]


def test_em_equals_the_textbook_loop_from_the_same_start():
    x = two_populations(120, 40, seed=3).astype(np.float64)
    mix = cal.fit_mixture(x, max_iter=25, tol=0.0)
    s = np.sort(x)
    c = cal.otsu_cut(s)
    floor = max(1e-6 * float(x.var()), 1e-12)
    w, m, v = em_plain(x, [c / len(x), 1 - c / len(x)], [s[:c].mean(), s[c:].mean()],
                       [max(s[:c].var(), floor), max(s[c:].var(), floor)], mix.iterations - 1, floor)
    # the loop stops after computing the log-likelihood of its last update: iterations - 1 updates
    assert mix.weights == pytest.approx(tuple(w), rel=1e-9)
    assert mix.means == pytest.approx(tuple(m), rel=1e-9)
    assert mix.variances == pytest.approx(tuple(v), rel=1e-7)


def test_mixture_recovers_the_populations_it_was_sampled_from():
    x = two_populations(4000, 1000, seed=4)
    mix = cal.fit_mixture(x)
    assert mix.weights == pytest.approx((0.8, 0.2), abs=0.02)
    assert mix.means == pytest.approx((1.00, 1.10), abs=0.003)
    assert [math.sqrt(v) for v in mix.variances] == pytest.approx([0.015, 0.02], abs=0.002)
    truth = crossing_plain([0.8, 0.2], [1.0, 1.1], [0.015**2, 0.02**2])
    choice = cal.calibrate(x, "mixture")
    assert choice.method == "mixture"
    assert choice.value == pytest.approx(truth, abs=0.004)


def test_crossing_equals_bisection_on_the_densities():
    for w, m, v in [((0.8, 0.2), (1.0, 1.1), (2e-4, 5e-4)), ((0.5, 0.5), (0.0, 1.0), (0.1, 0.1)),
                    ((0.95, 0.05), (1.0, 1.08), (1e-4, 1e-4))]:
        mix = cal.Mixture(w, m, v, 1, 0.0)
        assert cal.mixture_crossing(mix) == pytest.approx(crossing_plain(w, m, v), abs=1e-9)


def test_kde_valley_equals_the_plain_density():
    x = two_populations(300, 100, seed=5)
    assert cal.kde_valley(x) == pytest.approx(kde_valley_plain(x), abs=1e-12)


@pytest.mark.parametrize("method", cal.METHODS)
def test_each_method_separates_two_clear_populations(method):
    x = two_populations(900, 300, seed=6)
    t = cal.calibrate(x, method).value
    lo, hi = x[:900], x[900:]
    # few errors on either side of the threshold
    assert (lo >= t).mean() < 0.02 and (hi < t).mean() < 0.05


def test_one_population_falls_back_and_says_why():
    x = np.random.default_rng(7).normal(1.0, 0.02, 2000)
    choice = cal.calibrate(x, "mixture", fallback=1.06)
    assert choice.method == "fallback" and choice.value == 1.06
    assert "separated" in choice.detail["why"] or "holds" in choice.detail["why"]


@pytest.mark.parametrize("x, why", [(np.array([1.0, 1.1] * 5), "candidate scores"), (np.full(50, 1.03), "same score"),
                                    (np.array([np.nan] * 30 + [1.0, 1.2]), "candidate scores")])
def test_too_little_to_calibrate_falls_back(x, why):
    for method in cal.METHODS:
        choice = cal.calibrate(x, method, fallback=0.5)
        assert choice.method == "fallback" and choice.value == 0.5 and why in choice.detail["why"]


def test_unknown_method_is_one_line():
    with pytest.raises(ValueError, match="unknown calibration 'gmm'"):
        cal.calibrate(np.ones(30), "gmm")


# ---------------------------------------------------------------------------------------------------
# The miner's rule


def toy_embeddings(n_gold: int, n_other: int, d: int = 32, noise: float = 0.35, seed: int = 0):
    """x and y with n_gold translation pairs (a shared random direction + noise) hidden among unrelated
    rows on each side: (x, y, gold set)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_gold, d))
    x = np.concatenate([base + noise * rng.normal(size=(n_gold, d)), rng.normal(size=(n_other, d))])
    y = np.concatenate([base + noise * rng.normal(size=(n_gold, d)), rng.normal(size=(n_other, d))])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x.astype(np.float32), y.astype(np.float32), {(i, i) for i in range(n_gold)}


def test_mine_scored_is_every_candidate_at_or_above_the_calibrated_threshold():
    x, y, gold = toy_embeddings(60, 140)
    cfg = MineConfig(index="flat")
    pairs, choice = mine_scored(x, y, cfg)
    every = mine_embeddings(x, y, cfg, threshold=-np.inf)
    assert choice.method == cfg.calibration  # two clear populations: no fallback
    assert choice.value == pytest.approx(cal.calibrate(every.score, cfg.calibration).value)
    want = {(s, t) for s, t, sc in zip(every.src.tolist(), every.tgt.tolist(), every.score.tolist(), strict=True)
            if sc >= choice.value}
    assert pairs.as_set() == want
    assert mine_embeddings(x, y, cfg).as_set() == want  # the default rule of mine_embeddings is the same
    # and it finds the hidden translations, not the unrelated rows
    assert len(want & gold) >= 0.9 * len(gold) and len(want - gold) <= 0.1 * len(want)


def test_a_given_threshold_wins_and_none_is_the_fixed_fallback():
    x, y, _ = toy_embeddings(30, 60)
    scores = mine_embeddings(x, y, MineConfig(index="flat"), threshold=-np.inf).score
    assert choose_threshold(scores, MineConfig(threshold=1.2)) == cal.ThresholdChoice(1.2, "given")
    c = choose_threshold(scores, MineConfig(calibration="none", margin="distance"))
    assert (c.value, c.method) == (DEFAULT_THRESHOLDS["distance"], "fallback")
    rec = choose_threshold(scores, MineConfig()).as_record()
    assert set(rec) == {"threshold", "threshold_method", "threshold_detail"} and rec["threshold_method"] == "otsu"
