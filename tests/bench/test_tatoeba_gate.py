"""bench/tatoeba_gate.py's statistics against scipy's, and its comparisons on hand-made figures."""

import numpy as np
import pytest
from scipy import stats

from bench.tatoeba_gate import agreement, gains, ranks, spearman


def test_ranks_and_spearman_equal_scipys_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.integers(0, 6, size=40).astype(float)  # many ties, as accuracies in steps of 1/2n have
        y = x + rng.normal(0, 2, size=40).round()
        assert ranks(x) == pytest.approx(stats.rankdata(x))
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_agreement_and_gains_on_hand_made_figures():
    full = {"aaa": 50.0, "bbb": 70.0, "ccc": 90.0}
    sample = {"aaa": 56.0, "bbb": 74.0, "ccc": 92.0}  # same order, 4 points higher on average
    a = agreement(full, sample)
    assert (a["languages"], a["spearman"], a["mean_offset"], a["max_abs_offset"]) == (3, pytest.approx(1.0), 4.0, 6.0)
    first = {"full": {"languages": full, "groups": {"all112": 70.0}},
             "sample": {"languages": sample, "groups": {"all112": 74.0}}}
    other = {"full": {"languages": {"aaa": 55.0, "bbb": 69.0, "ccc": 90.0}, "groups": {"all112": 71.3}},
             "sample": {"languages": {"aaa": 60.0, "bbb": 75.0, "ccc": 93.0}, "groups": {"all112": 76.0}}}
    g = gains(first, other)
    # differences: whole set +5, -1, 0; sample +4, +1, +1: one sign agrees (aaa), bbb and ccc do not
    assert g["same_sign"] == pytest.approx(1 / 3)
    assert g["all112_full"] == pytest.approx(1.3) and g["all112_sample"] == pytest.approx(2.0)
    assert g["spearman"] == pytest.approx(stats.spearmanr([5, -1, 0], [4, 1, 1]).statistic)
