"""Tatoeba accuracy on the real Tatoeba v1 files, checked against a plain per-sentence computation."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from labse_core.evaluation import tatoeba as tat
from labse_core.readers.records import ReaderError
from labse_core.readers.tatoeba import list_languages
from tests.conftest import TATOEBA

GROUPS_MD = TATOEBA.parent / "GROUPS.md"
LANGS = ["deu", "fra", "nld", "rus", "ukr", "cmn", "ara", "heb"]


def ngram_embed(texts: list[str], dim: int = 512) -> np.ndarray:
    """A deterministic embedding with real structure: hashed character trigrams, L2-normalized."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        t = f"  {t.lower()}  "
        for j in range(len(t) - 2):
            out[i, zlib.crc32(t[j : j + 3].encode()) % dim] += 1.0
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def reference_accuracy(x: np.ndarray, e: np.ndarray) -> tuple[float, float]:
    """One query at a time in float64: the index of the best-scoring row is the gold index?"""
    x64, e64 = x.astype(np.float64), e.astype(np.float64)
    fwd = [int(np.argmax(e64 @ x64[i]) == i) for i in range(len(x64))]
    bwd = [int(np.argmax(x64 @ e64[i]) == i) for i in range(len(e64))]
    return sum(fwd) / len(fwd), sum(bwd) / len(bwd)


def test_groups_match_groups_md():
    text = GROUPS_MD.read_text()
    xtreme = re.search(r"\*\*36 languages \(XTREME\)\*\*.*?:\n(.*?)\n- ", text, re.S)[1].split()
    xnli = re.search(r"\*\*14 languages \(XNLI set\)\*\*: (.*)", text)[1].split()
    assert tuple(xtreme) == tat.XTREME_36 and len(xtreme) == 36
    assert tuple(xnli) == tat.XNLI_14
    assert set(tat.XTREME_36) <= set(list_languages(TATOEBA)) and len(list_languages(TATOEBA)) == 112


def test_accuracy_equals_a_plain_computation_on_real_tatoeba():
    data = tat.load_tatoeba(TATOEBA, LANGS)
    assert [d.code for d in data] == sorted(LANGS)
    scores = {s.code: s for s in tat.score_languages(ngram_embed, data)}
    for lang in data:
        x, e = ngram_embed(list(lang.sentences)), ngram_embed(list(lang.english))
        want = reference_accuracy(x, e)
        got = scores[lang.code]
        assert (got.acc_xx_en, got.acc_en_xx) == pytest.approx(want, abs=1e-12), lang.code
        assert got.n == len(lang.sentences) == 1000
    # The trigram model retrieves related Latin-script languages far better than other scripts.
    assert scores["nld"].acc > 0.15 and scores["cmn"].acc < 0.1


def test_groups_cover_only_evaluated_languages_and_trained_maps_codes():
    data = tat.load_tatoeba(TATOEBA, LANGS)
    result = tat.TatoebaResult(
        s := tat.score_languages(ngram_embed, data), tat.group_scores(s, list_languages(TATOEBA), ["de", "zh-Hant", "ru"])
    )
    by = {g.group: g for g in result.groups}
    xtreme = by["xtreme36"]
    assert set(xtreme.languages) == {"deu", "fra", "nld", "rus", "cmn", "ara", "heb"}  # ukr is not XTREME
    assert len(xtreme.missing) == 36 - 7
    per = {x.code: x for x in s}
    assert xtreme.acc == pytest.approx(np.mean([per[c].acc for c in xtreme.languages]))
    assert by["trained"].languages == ("cmn", "deu", "rus")  # zh-Hant -> its base zh -> cmn
    assert by["evaluated"].languages == tuple(sorted(LANGS)) and by[tat.ALL].missing
    rows = tat.result_rows(result)
    assert {(r["scope"], r["direction"]) for r in rows} == {
        (sc, d) for sc in ("language", "group") for d in tat.DIRECTIONS
    }
    assert len(rows) == 3 * (len(LANGS) + len(result.groups))


def test_language_selection_errors_name_the_problem(tmp_path: Path):
    with pytest.raises(ReaderError, match="no Tatoeba files for language 'xx'|language 'xx'"):
        tat.load_tatoeba(TATOEBA, ["xx"])
    with pytest.raises(ReaderError, match="not a Tatoeba v1 directory"):
        tat.load_tatoeba(tmp_path)


def test_nearest_is_gold_ties_and_shapes():
    q = np.eye(3, dtype=np.float32)
    k = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)  # row 1 ties with row 0 -> lowest index
    assert tat.nearest_is_gold(q, k).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="same shape"):
        tat.nearest_is_gold(q, k[:2])


def test_a_partial_group_is_labelled_with_its_count_never_as_the_full_figure():
    data = tat.load_tatoeba(TATOEBA, LANGS)
    s = tat.score_languages(ngram_embed, data)
    result = tat.TatoebaResult(s, tat.group_scores(s, list_languages(TATOEBA)))
    by = {g.group: g for g in result.groups}
    assert by[tat.ALL].label == "all112 (8/112)" and by[tat.ALL].metric_key == "all112-partial-8of112"
    assert by["xtreme36"].label == "xtreme36 (7/36)" and by["evaluated"].label == "evaluated"
    assert result.complete_group(tat.ALL) is None and result.complete_group("evaluated") is by["evaluated"]
    names = {r["language"] for r in tat.result_rows(result) if r["scope"] == "group"}
    assert names == {"all112 (8/112)", "xtreme36 (7/36)", "xnli14 (5/14)", "major14 (6/14)", "evaluated"}
    assert set(result.summary()["groups"]) == names
    whole = tat.TatoebaResult(s, tat.group_scores(s, [d.code for d in data]))  # a set of these 8 only
    assert whole.complete_group(tat.ALL).label == tat.ALL


def test_gate_metrics_decide_on_all112_only_when_complete_and_name_the_sample():
    data = tat.load_tatoeba(TATOEBA, tat.MAJOR_14)
    s = tat.score_languages(ngram_embed, data)
    mean = float(np.mean([x.acc for x in s]))
    partial = tat.TatoebaResult(s, tat.group_scores(s, list_languages(TATOEBA)))
    # 14 of 112: the deciding number is the mean over them, never "all112"; major14 is complete: a column.
    assert tat.gate_metrics(partial) == ("tatoeba_mean", {"tatoeba_mean": pytest.approx(mean),
                                                          "tatoeba_major14": pytest.approx(mean)})
    # A set made of these 14 only: all112 (every language of the set) decides; a sample names itself.
    whole = tat.TatoebaResult(s, tat.group_scores(s, tat.MAJOR_14), sample=300)
    name, values = tat.gate_metrics(whole)
    assert name == "tatoeba_all112_sample300"
    assert values == {name: pytest.approx(mean), "tatoeba_major14_sample300": pytest.approx(mean)}
    with pytest.raises(ValueError, match="no Tatoeba language"):
        tat.gate_metrics(tat.TatoebaResult([], []))


def test_the_gate_sample_is_the_same_fixed_subset_whatever_the_model():
    data = tat.load_tatoeba(TATOEBA, ["deu", "swg", "cmn"])  # swg has 112 pairs: all of them kept
    a, b = tat.sample_languages(data, 300), tat.sample_languages(list(reversed(data)), 300)
    assert {x.code: x for x in a} == {x.code: x for x in b}  # depends on the pairs, not on the order given
    for full, part in zip(data, a, strict=True):
        n = min(300, len(full.sentences))
        assert len(part.sentences) == len(part.english) == n
        pairs = list(zip(full.sentences, full.english, strict=True))
        kept = list(zip(part.sentences, part.english, strict=True))
        assert set(kept) <= set(pairs)
        assert kept == [p for p in pairs if p in set(kept)]  # file order, alignment kept
    assert len(a[0].sentences) == 300 and a[0].sentences != data[0].sentences[:300]  # not simply the first 300
    assert a[0].code == "cmn" and a[1].code == "deu"
    result = tat.evaluate_tatoeba(ngram_embed, TATOEBA, ["deu", "swg"], sample=300)
    assert result.split == "sample300" and {s.code: s.n for s in result.languages} == {"deu": 300, "swg": 112}
    assert {r["split"] for r in tat.result_rows(result)} == {"sample300"}
    deu = next(x for x in a if x.code == "deu")
    want = reference_accuracy(ngram_embed(list(deu.sentences)), ngram_embed(list(deu.english)))
    assert (result.languages[0].acc_xx_en, result.languages[0].acc_en_xx) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        tat.sample_languages(data, 1)
