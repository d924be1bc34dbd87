"""split_document_sentences: each language goes to the splitter bench/splitter_bench.py measured best
(pysbd for zh/ja, the rules for the rest), checked on hand-read cases where the two splitters disagree,
so that a wrong dispatch fails here. The rules themselves: tests/labse_core/test_docs_bitext.py."""

from __future__ import annotations

import pytest

from labse_core.text.sentences import (
    DOCUMENT_SPLITTERS,
    document_splitter,
    split_document_sentences,
    split_sentences,
)

# (lang, text, the sentences a reader finds)
CASES = [
    # zh: "?" with no space after it ends a sentence; the rules need a space there.
    ("zh", "你好吗?我很好。", ["你好吗?", "我很好。"]),
    ("zh", "我們試試看！我该去睡觉了。", ["我們試試看！", "我该去睡觉了。"]),
    # ja: an ASCII quote after 。 opens the next sentence; the rules take it as closing this one.
    ("ja", 'ヘルプを表示して終了します。"-h" と同じです。', ["ヘルプを表示して終了します。", '"-h" と同じです。']),
    ("ja", "彼は手紙を書く。言う価値のあることがなければ、しゃべるな。",
     ["彼は手紙を書く。", "言う価値のあることがなければ、しゃべるな。"]),
    # de: "z. B." and "Dr." do not end a sentence; pysbd cuts before the file name ".buildinfo".
    ("de", "Es liest die Datei .buildinfo, z. B. beim Bauen. Dr. Müller kam um 3 Uhr.",
     ["Es liest die Datei .buildinfo, z. B. beim Bauen.", "Dr. Müller kam um 3 Uhr."]),
    # fr: "M. Dupont", "p. ex." and "c.-à-d." are inside sentences (pysbd and sentencex cut them).
    ("fr", "M. Dupont est là. Il dort, p. ex. le soir, c.-à-d. tard. Oui.",
     ["M. Dupont est là.", "Il dort, p. ex. le soir, c.-à-d. tard.", "Oui."]),
    ("en", "It reads a file, e.g. a.txt. It keeps the owner.", ["It reads a file, e.g. a.txt.", "It keeps the owner."]),
]


@pytest.mark.parametrize(("lang", "text", "want"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_hand_checked_sentences(lang, text, want):
    assert split_document_sentences(text, lang) == want


def test_the_cases_tell_the_splitters_apart():
    """Each language has a case the other splitter gets wrong: a dispatch to the wrong one fails above."""
    import pysbd

    for lang in ("zh", "ja"):
        assert any(split_sentences(t) != w for la, t, w in CASES if la == lang), lang
    for lang in ("de", "fr"):
        other = pysbd.Segmenter(language=lang, clean=False)
        assert any([s.strip() for s in other.segment(t)] != w for la, t, w in CASES if la == lang), lang


def test_dispatch_table_and_language_codes():
    assert DOCUMENT_SPLITTERS == {"zh": "pysbd", "ja": "pysbd"}
    assert [document_splitter(x) for x in ("zh", "zh_TW", "zh-Hant", "cmn", "ja", "jpn")] == ["pysbd"] * 6
    assert [document_splitter(x) for x in ("de", "deu", "fr", "es", "ru", "en", "en_US")] == ["rules"] * 7
    assert split_document_sentences("你好吗?我很好。", "zh_TW") == ["你好吗?", "我很好。"]


def test_languages_without_library_support_get_the_rules():
    """pysbd has no Korean, Thai or Portuguese (it raises for them): the rules cut them, as they cut any
    unknown code."""
    for lang in ("ko", "th", "pt", "sw", "not a language"):
        assert document_splitter(lang) == "rules"
    assert split_document_sentences("안녕하세요. 반갑습니다.", "ko") == ["안녕하세요.", "반갑습니다."]
    text = "O Sr. Silva chegou. Tudo bem."
    assert split_document_sentences(text, "pt") == split_sentences(text)
    assert split_document_sentences("One. Two.", "not a language") == ["One.", "Two."]


def test_whitespace_blank_lines_and_empty_pieces():
    assert split_document_sentences("", "zh") == []
    assert split_document_sentences("  \n\t ", "de") == []
    # a blank line ends a sentence even without a stop; a single newline is a space
    assert split_document_sentences("NAME\n\n  ls lists\n files.  It sorts. ", "en") == [
        "NAME", "ls lists files.", "It sorts."]
    assert split_document_sentences("第一段没有句号\n \n第二段。第三句。", "zh") == ["第一段没有句号", "第二段。", "第三句。"]


def test_one_segmenter_per_language_shared_by_threads():
    from concurrent.futures import ThreadPoolExecutor

    from labse_core.text.sentences import _document_segmenter

    assert _document_segmenter("zh") is _document_segmenter("zh")
    texts = [f"第{i}句话?第二句话。" * (1 + i % 5) for i in range(200)]
    serial = [split_document_sentences(t, "zh") for t in texts]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda t: split_document_sentences(t, "zh"), texts)) == serial
