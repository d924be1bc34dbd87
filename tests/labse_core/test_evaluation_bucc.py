"""BUCC-style F1 and xSIM against plain computations on the same embeddings."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from labse_core.evaluation import bucc
from labse_core.mining.margin import Pairs
from labse_core.mining.miner import MinedRow
from tests.labse_core.test_mining import brute_force, planted


def test_sets_hide_the_gold_among_distractors_without_their_translations():
    pairs = [(f"x{i}", f"y{i}") for i in range(100)] + [("x0", "other"), ("again", "y1")]  # not one-to-one
    sets = bucc.build_sets(pairs, gold_per_split=10, distractors_per_split=15, seed=3)
    texts = set()
    for s in sets.values():
        assert len(s.src) == len(s.tgt) == 25 and len(s.gold) == 10
        for i, j in s.gold:
            assert s.src[i][1:] == s.tgt[j][1:]  # x7 <-> y7
        gold_src = {s.src[i] for i, _ in s.gold}
        for x in s.src:  # a distractor's translation is nowhere on the other side
            if x not in gold_src:
                assert "y" + x[1:] not in s.tgt
        assert [i for i, _ in sorted(s.gold)] != list(range(10))  # shuffled, not on top
        texts |= set(s.src) | set(s.tgt)
    assert len(texts) == 100 and "other" not in texts and "again" not in texts
    with pytest.raises(ValueError, match="needs 80 one-to-one held-out pairs"):
        bucc.build_sets(pairs[:50], 10, 15)


def test_best_threshold_equals_trying_every_threshold():
    rng = np.random.default_rng(0)
    score = rng.choice(np.linspace(1.0, 1.3, 25), size=60).astype(np.float32)  # many ties
    src, tgt = np.arange(60), rng.permutation(60)
    pairs = Pairs(src, tgt, score, score)
    gold = frozenset((int(s), int(t)) for s, t in zip(src, tgt, strict=True) if rng.random() < 0.5) | {(999, 999)}
    best = None
    for t in sorted(set(score.tolist()), reverse=True):  # plain: every distinct score as ">= t"
        found = [(s, g) for s, g, sc in zip(src.tolist(), tgt.tolist(), score.tolist(), strict=True) if sc >= t]
        correct = sum(p in gold for p in found)
        p, r = correct / len(found), correct / len(gold)
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if best is None or f1 > best[0]:
            best = (f1, t, p, r)
    got = bucc.best_threshold(pairs, gold)
    assert (got.f1, got.threshold, got.precision, got.recall) == pytest.approx(best)
    again = bucc.prf(pairs, gold, got.threshold)
    assert (again.f1, again.found, again.correct) == (pytest.approx(got.f1), got.found, got.correct)


def test_mined_prf_scores_every_kept_row_as_a_set_would():
    """The mine stage's F1: every row the miner kept (at or above its threshold in float32, as the miner
    compares) is the answer, scored as the plain set computation does."""
    rng = np.random.default_rng(2)
    threshold = 1.06  # not a float32 value: a kept row's score may round to just below it
    margins = np.append(rng.uniform(threshold, 1.4, size=29), np.float32(threshold)).astype(np.float32)
    tgt = rng.permutation(30)
    rows = [MinedRow(i, int(tgt[i]), "x", "y", 0.9, float(margins[i]), str(i)) for i in range(30)]
    gold = frozenset((r.src_index, r.tgt_index) for r in rows[::3]) | {(100, 100), (101, 101)}
    found = {(r.src_index, r.tgt_index) for r in rows}
    p, r = len(found & gold) / len(found), len(found & gold) / len(gold)
    got = bucc.mined_prf(rows, gold, threshold)
    assert (got.found, got.precision, got.recall, got.f1) == (30, p, r, 2 * p * r / (p + r))
    assert bucc.mined_prf([], gold, threshold).f1 == 0.0


def test_xsim_equals_a_full_matrix_computation():
    x, y, gold = planted(300, 0, 0, d=16, noise=1.0, seed=4)  # noisy: many errors
    x_aligned, y_aligned = x, y[[j for _, j in sorted(gold)]]  # row i translates row i
    want_pairs = brute_force(x_aligned, y_aligned, k=4, mode="forward")
    want = 1 - sum(i == j for i, j in want_pairs) / len(x_aligned)
    got = bucc.xsim_error(x_aligned, y_aligned)
    assert got == pytest.approx(want) and 0.05 < got < 0.95
    with pytest.raises(ValueError, match="aligned"):
        bucc.xsim_error(x[:3], y[:4])


def plain_prf(scored: dict[tuple[int, int], float], gold, t: float) -> tuple[float, float, float]:
    """(P, R, F1) of the pairs scoring >= t, by counting."""
    found = [pair for pair, s in scored.items() if s >= t]
    correct = sum(pair in gold for pair in found)
    p = correct / len(found) if found else 0.0
    r = correct / len(gold)
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


def plain_best_threshold(scored: dict[tuple[int, int], float], gold) -> tuple[float, float]:
    """(F1, t): every distinct score tried as "score >= t"; on equal F1 the higher t."""
    best = None
    for t in sorted(set(scored.values()), reverse=True):
        f1 = plain_prf(scored, gold, t)[2]
        if best is None or f1 > best[0]:
            best = (f1, t)
    return best


def plain_bucc(sets, embed) -> dict[str, float]:
    """The BUCC protocol from scratch: brute-force max-mode margin mining of each split (float64, full
    similarity matrix), the threshold tuned on dev by trying every score, applied to test; xSIM by the
    forward margin pick of the test split's aligned gold pairs."""
    scored = {split: brute_force(embed(list(s.src)), embed(list(s.tgt)), k=4, mode="max") for split, s in sets.items()}
    _, t_dev = plain_best_threshold(scored["dev"], sets["dev"].gold)
    p, r, f1 = plain_prf(scored["test"], sets["test"].gold, t_dev)
    oracle_f1, t_test = plain_best_threshold(scored["test"], sets["test"].gold)
    gold = sorted(sets["test"].gold)
    x, y = embed([sets["test"].src[i] for i, _ in gold]), embed([sets["test"].tgt[j] for _, j in gold])
    xsim = 1 - sum(i == j for i, j in brute_force(x, y, k=4, mode="forward")) / len(gold)
    return {"dev_threshold": t_dev, "precision": p, "recall": r, "f1": f1, "test_threshold": t_test,
            "oracle_f1": oracle_f1, "xsim_xx_en": xsim}


def test_evaluate_language_tunes_on_dev_and_reports_test_at_that_threshold():
    """A toy encoder whose dev and test splits want different thresholds: dev translations are close
    (noise 0.3), test translations farther apart (noise 0.7), so test's own best threshold is lower than
    dev's. The reported test numbers are those at dev's threshold, as the plain protocol computes them;
    tuning on test (or reporting test's best) gives other numbers."""
    rng = np.random.default_rng(1)
    pairs = [(f"xx sentence {i}", f"en sentence {i}") for i in range(400)]
    centers = rng.normal(size=(400, 32))
    sets = bucc.build_sets(pairs, 60, 70)
    dev_texts = set(sets["dev"].src) | set(sets["dev"].tgt)

    def embed(texts):  # translations share a center (distractors have theirs on the other side, not in the set)
        out = []
        for t in texts:
            noise = np.random.default_rng(zlib.crc32(t.encode())).normal(size=32)
            out.append(centers[int(t.rsplit(" ", 1)[1])] + (0.3 if t in dev_texts else 0.7) * noise)
        return np.asarray(out, np.float32)

    res = bucc.evaluate_language("xx", sets, embed)
    want = plain_bucc(sets, embed)
    # The case separates the right protocol from tuning on test: by a wide margin, not by rounding.
    assert want["dev_threshold"] > want["test_threshold"] + 0.1 and want["f1"] < want["oracle_f1"] - 0.2, want
    assert res.dev.threshold == pytest.approx(want["dev_threshold"], rel=1e-5)
    assert res.test.threshold == res.dev.threshold
    assert (res.test.precision, res.test.recall, res.test.f1) == \
        pytest.approx((want["precision"], want["recall"], want["f1"]), abs=1e-9)
    assert res.test_oracle.f1 == pytest.approx(want["oracle_f1"], abs=1e-9)
    assert res.test_oracle.threshold == pytest.approx(want["test_threshold"], rel=1e-5)
    assert res.xsim_xx_en == pytest.approx(want["xsim_xx_en"])
    assert res.sizes == {"dev_src": 130, "dev_tgt": 130, "test_src": 130, "test_tgt": 130, "dev_gold": 60, "test_gold": 60}
    rows = bucc.result_rows([res])
    f1 = [r for r in rows if r["metric"] == "f1" and r["split"] == "test" and r["scope"] == "language"]
    assert f1 == [{"split": "test", "scope": "language", "language": "xx", "direction": "both", "metric": "f1",
                   "value": pytest.approx(want["f1"], abs=1e-9), "n": 60}]
    dev_threshold = [r["value"] for r in rows if r["metric"] == "threshold" and r["split"] == "dev"]
    assert dev_threshold == [pytest.approx(want["dev_threshold"], rel=1e-5)]


def test_tuned_threshold_is_the_models_latest_dev_value(tmp_path):
    import datetime as dt

    from labse_core.evaluation.results import publish_rows, tuned_threshold
    from storage.layout import Layout

    layout = Layout.from_env(tmp_path / "home").ensure()

    def rows(values: dict[str, float]) -> list[dict]:
        out = [{"split": "dev", "scope": "language", "language": lang, "direction": "both", "metric": "threshold",
                "value": v, "n": 10} for lang, v in values.items()]
        return out + [{"split": "test", "scope": "language", "language": "de", "direction": "both",
                       "metric": "threshold", "value": 9.0, "n": 10}]  # a test-split value is never used

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    folder = str(tmp_path / "model")
    assert tuned_threshold(layout, model_uri=folder, model_name=None, model_version=None) is None
    publish_rows(layout, "bucc-gettext", rows({"de": 1.10, "fr": 1.20}), run_id="old", model_uri="models:/labse@champion",
                 model_version="3", created_at=t0)
    publish_rows(layout, "bucc-gettext", rows({"de": 1.02, "fr": 1.04, "ja": 1.09}), run_id="new",
                 model_uri="models:/labse/3", model_version="3", created_at=t0 + dt.timedelta(days=1))
    publish_rows(layout, "bucc-gettext", rows({"de": 1.50}), run_id="v4", model_uri="models:/labse@champion",
                 model_version="4", created_at=t0 + dt.timedelta(days=2))
    publish_rows(layout, "bucc-gettext", rows({"de": 1.30}), run_id="dir", model_uri=folder, model_version=None,
                 created_at=t0)
    publish_rows(layout, "tatoeba-v1", rows({"de": 7.0}), run_id="tat", model_uri="models:/labse/3", model_version="3",
                 created_at=t0 + dt.timedelta(days=3))  # another eval set: ignored

    # Version 3, whichever URI named it: its latest run ("new"); the pair's language, else the median.
    v3 = dict(model_uri="models:/labse@champion", model_name="labse", model_version="3")
    assert tuned_threshold(layout, **v3, langs=["fr"])[0] == pytest.approx(1.04)
    value, note = tuned_threshold(layout, **v3, langs=["ko"])
    assert value == pytest.approx(1.04) and "median" in note and "new" in note
    assert tuned_threshold(layout, model_uri="models:/other/3", model_name="other", model_version="3") is None
    assert tuned_threshold(layout, model_uri=folder, model_name=None, model_version=None, langs=["de"])[0] == 1.30
