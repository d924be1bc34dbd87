"""Bitext sets from translated man pages, offline: two tiny groff pages written here (an English page and
its po4a-style German translation, with a translator's section the English page lacks), parsed, aligned
and turned into a BUCC-style set and a Tatoeba-like set; bad pages are counted rejects."""

from __future__ import annotations

import gzip
import os
from collections import Counter

import pytest

from labse_core.evaluation import docs_bitext as docs
from labse_core.text.groff import Block, ManPageError, decode_page, parse_man, unescape
from labse_core.text.sentences import split_sentences

EN_PAGE = r""".\" A comment line.
.de XX
this macro body is never printed
..
.TH FROB 1 "2024-01-01" "frob 1.0"
.ie n .ds Q \(aq
.el .ds Q '
.SH NAME
frob \- frobnicate files
.SH DESCRIPTION
.B frob
reads each
.I file
and writes it back frobnicated. It keeps the owner of
the file.
.PP
If the file is missing, \fBfrob\fR prints an error and exits with status 2.
.TP
.B \-\-force
Overwrite read\-only files. Use with care.
.IP \(bu 2
Files under /etc are never changed.
.nf
frob \-\-force a.txt
.fi
.SH "SEE ALSO"
.BR frobnicate (5)
.SH AUTHOR
Written by Jane Doe.
"""

DE_PAGE = r""".\"*******************************************************************
.\" This file was generated with po4a. Translate the source file.
.\"*******************************************************************
.TH FROB 1 "2024-01-01" "frob 1.0"
.SH BEZEICHNUNG
frob \- Dateien frobnizieren
.SH BESCHREIBUNG
.B frob
liest jede
.I Datei
und schreibt sie frobniziert zur\(:uck. Es beh\(:alt den Besitzer der Datei
bei.
.PP
Falls die Datei fehlt, gibt \fBfrob\fR einen Fehler aus und beendet sich mit dem Status 2.
.TP
.B \-\-force
\[u00DC]berschreibt schreibgesch\(:utzte Dateien. Mit Vorsicht verwenden.
.IP \(bu 2
Dateien unter /etc werden nie ver\(:andert.
.nf
frob \-\-force a.txt
.fi
.SH "SIEHE AUCH"
.BR frobnicate (5)
.SH \(:UBERSETZUNG
Die deutsche \(:Ubersetzung wurde 2024 von Max Muster <max@example.org> erstellt.
.SH AUTOR
Geschrieben von Jane Doe.
"""


def write_page(path, text: str | bytes, gz: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def man_root(tmp_path):
    root = tmp_path / "man"
    write_page(root / "man1" / "frob.1.gz", EN_PAGE)
    write_page(root / "de" / "man1" / "frob.1.gz", DE_PAGE)
    # the bad ones: each a counted reject, none an exception
    write_page(root / "man1" / "empty.1.gz", "")
    write_page(root / "de" / "man1" / "empty.1.gz", "")
    write_page(root / "man1" / "bin.1.gz", b"\x7fELF\x00\x01\x02")
    write_page(root / "de" / "man1" / "bin.1.gz", b"\x7fELF\x00\x01\x02")
    write_page(root / "man1" / "latin.1.gz", EN_PAGE)
    # DE_PAGE spells its umlauts as groff escapes (ASCII): a comment with a Latin-1 byte makes it not UTF-8
    write_page(root / "de" / "man1" / "latin.1.gz", ('.\\" \u00dcbersetzung\n' + DE_PAGE).encode("latin-1"))
    write_page(root / "man1" / "link.1.gz", ".so man1/frob.1\n")
    write_page(root / "de" / "man1" / "link.1.gz", ".so man1/frob.1\n")
    write_page(root / "de" / "man1" / "orphan.1.gz", DE_PAGE)  # no English page
    os.symlink("frob.1.gz", root / "de" / "man1" / "alias.1.gz")
    return root


def test_parse_man_gives_the_blocks_po4a_translates():
    blocks = parse_man(EN_PAGE)
    assert blocks == [
        Block("SH", "NAME"), Block("P", "frob - frobnicate files"),
        Block("SH", "DESCRIPTION"),
        Block("P", "frob reads each file and writes it back frobnicated. It keeps the owner of the file."),
        Block("P", "If the file is missing, frob prints an error and exits with status 2."),
        Block("TP", "--force"), Block("P", "Overwrite read-only files. Use with care."),
        Block("P", "Files under /etc are never changed."),
        Block("nf", "frob --force a.txt"),
        Block("SH", "SEE ALSO"), Block("P", "frobnicate(5)"),
        Block("SH", "AUTHOR"), Block("P", "Written by Jane Doe."),
    ]


def test_escapes_and_conditionals_as_nroff_prints_them():
    assert unescape(r'zur\(:uck \[u00DC]ber \(em \*(L"x\*(R" \fBbold\fP \s-1SMALL\s0 a\&.b \e \(Bqok\(lq') == \
        "zurück Über \u2014 \u201cx\u201d bold SMALL a.b \\ \u201eok\u201c"
    src = '.ie n .ds Q nroff\n.el .ds Q troff\n.if t \\{\\\ntroff text\n.\\}\n.if n \\{\\\nnroff text \\*Q\n.\\}\n'
    assert parse_man(".TH X 1\n" + src.replace("\\*Q", "\\*[Q]")) == [Block("P", "nroff text nroff")]
    unknown: list[str] = []
    assert unescape(r"a\(zzb", unknown=unknown) == "ab" and unknown == [r"\(zz"]


def test_chinese_and_japanese_lines_join_without_a_space():
    assert parse_man(".TH X 1\n.PP\n这是第一行\n第二行。\nEnglish words\nhere\n") == [Block("P", "这是第一行第二行。 English words here")]


@pytest.mark.parametrize("data, why", [(b"", "empty"), (b"  \n", "empty"), (b"\x00\x01", "binary"),
                                       (b"\xff\xfe.TH", "not UTF-8"), (gzip.compress(b"x", mtime=0)[:-6], "gzip")])
def test_unreadable_pages_are_one_line_errors(data, why):
    with pytest.raises(ManPageError, match=why) as e:
        decode_page(data, "p.1.gz")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("src, why", [(".so man1/x.1\n", "link"), (".Dd $Mdocdate$\n.Dt X 1\n.Sh NAME\n", "mdoc"),
                                      (".TH X 1\n.\\\" only a comment\n", "no text")])
def test_pages_that_are_not_man7_text_are_one_line_errors(src, why):
    with pytest.raises(ManPageError, match=why):
        parse_man(src, "p.1")


def test_sentences_split_the_same_way_in_both_languages():
    assert split_sentences("It reads a file, e.g. a.txt. It keeps the owner. Version 1.2 is out! Done?") == [
        "It reads a file, e.g. a.txt.", "It keeps the owner.", "Version 1.2 is out!", "Done?"]
    assert split_sentences("Es liest z.B. die Datei /etc/x.conf. Es endet.") == ["Es liest z.B. die Datei /etc/x.conf.", "Es endet."]
    assert split_sentences("これは一文目です。これは二文目です。") == ["これは一文目です。", "これは二文目です。"]
    assert split_sentences("see section 2. the rest") == ["see section 2. the rest"]
    assert split_sentences("  ") == []


def test_anchors_are_the_tokens_a_translation_copies():
    assert docs.anchors("Use --force or -f on /etc/x.conf, see https://x.org/a; mail a.b@c.org; 2 or 1.20.3") == Counter(
        ["--force", "-f", "/etc/x.conf", "https://x.org/a", "a.b@c.org", "2", "1.20.3"])
    assert docs.anchors("Debian-Paketarchive and/or read-only") == Counter()  # compound hyphens, and/or


def test_sections_added_by_the_translator_shift_nothing():
    en, de = parse_man(EN_PAGE), parse_man(DE_PAGE)
    counts = Counter()
    pairs = [(a.text, b.text) for a, b in docs.align_blocks(en, de, counts)]
    # the translator's section is not aligned to anything; AUTHOR still meets AUTOR after it
    assert ("Written by Jane Doe.", "Geschrieben von Jane Doe.") in pairs
    assert not any("Übersetzung" in b for _, b in pairs)
    assert ("SEE ALSO", "SIEHE AUCH") in pairs and counts["sections_aligned"] == 4


def brute_force_alignment_score(en, xx) -> float:
    """Every monotone matching of sections with equal structure, tried one by one: the best total of
    1 + anchor similarity."""
    def shape(sec):
        return tuple((b.kind, b.indent) for b in sec)

    def anc(sec):
        return docs.anchors(" ".join(b.text for b in sec))

    def best(i, j):
        if i == len(en) or j == len(xx):
            return 0.0
        v = max(best(i + 1, j), best(i, j + 1))
        if shape(en[i]) == shape(xx[j]):
            a, b = anc(en[i]), anc(xx[j])
            union = sum((a | b).values())
            v = max(v, 1 + (1.0 if union == 0 else sum((a & b).values()) / union) + best(i + 1, j + 1))
        return v

    return best(0, 0)


@pytest.mark.parametrize("seed", range(12))
def test_section_alignment_is_the_best_monotone_matching(seed):
    import random

    rng = random.Random(seed)

    def section():
        kinds = rng.choice([("SH", "P"), ("SH", "P", "P"), ("SH", "TP", "P")])
        return [Block(k, rng.choice(["text", "see 2", "see 3 -f", "x@y.org 2024"])) for k in kinds]

    en = [section() for _ in range(rng.randint(1, 6))]
    xx = [list(s) for s in en]
    for _ in range(rng.randint(0, 2)):  # the translator inserts and drops sections
        xx.insert(rng.randint(0, len(xx)), section())
    if len(xx) > 1 and rng.random() < 0.5:
        xx.pop(rng.randrange(len(xx)))
    got = docs.align_sections(en, xx)
    assert all(i1 < i2 and j1 < j2 for (i1, j1), (i2, j2) in zip(got, got[1:], strict=False))  # monotone
    score = 0.0
    for i, j in got:
        assert [(b.kind, b.indent) for b in en[i]] == [(b.kind, b.indent) for b in xx[j]]
        a, b = docs.anchors(" ".join(x.text for x in en[i])), docs.anchors(" ".join(x.text for x in xx[j]))
        union = sum((a | b).values())
        score += 1 + (1.0 if union == 0 else sum((a & b).values()) / union)
    assert score == pytest.approx(brute_force_alignment_score(en, xx))


def test_extract_pairs_keeps_the_translations_and_counts_every_reject(man_root):
    ex = docs.extract_pairs(man_root, "de", min_words=3)
    got = [(p.en, p.xx, p.page) for p in ex.pairs]
    assert got == [
        ("frob reads each file and writes it back frobnicated.", "frob liest jede Datei und schreibt sie frobniziert zurück.", "man1/frob.1"),
        ("It keeps the owner of the file.", "Es behält den Besitzer der Datei bei.", "man1/frob.1"),
        ("If the file is missing, frob prints an error and exits with status 2.",
         "Falls die Datei fehlt, gibt frob einen Fehler aus und beendet sich mit dem Status 2.", "man1/frob.1"),
        ("Overwrite read-only files.", "Überschreibt schreibgeschützte Dateien.", "man1/frob.1"),
        ("Use with care.", "Mit Vorsicht verwenden.", "man1/frob.1"),
        ("Files under /etc are never changed.", "Dateien unter /etc werden nie verändert.", "man1/frob.1"),
        ("Written by Jane Doe.", "Geschrieben von Jane Doe.", "man1/frob.1"),
    ]
    c = ex.counts
    assert c["pages"] == 7 and c["pages_parsed"] == 1
    assert c["reject.page_is_a_link"] == 1 and c["reject.no_english_page"] == 1
    assert c["reject.page_empty"] == 1 and c["reject.page_binary"] == 1 and c["reject.page_not_utf8"] == 1
    assert c["reject.page_link"] == 1
    assert c["reject.too_short"] == 1  # "frobnicate(5)"
    assert c["reject.name_line"] == 1  # "frob - frobnicate files": the NAME section's whatis line, not prose
    assert c["pairs"] == len(got)


def test_a_language_without_man_pages_is_one_line(man_root):
    with pytest.raises(docs.DocsError, match=r"no man pages for language 'xx' .*translations there: de") as e:
        docs.extract_pairs(man_root, "xx")
    assert "\n" not in str(e.value)
    with pytest.raises(docs.DocsError, match="no such folder"):
        docs.man_languages(man_root / "nope")
    assert docs.man_languages(man_root) == ["de"]


def test_untranslated_code_like_and_misaligned_sentences_are_rejected():
    assert docs.keep_reason("Use with care here.", "Use with care here.", 3) == "untranslated"
    assert docs.keep_reason("frob [-f] [--x=y] Datei", "frob [-f] [--x=y] file more", 3) == "code_like"
    assert docs.keep_reason("Status 3 zurück geben.", "Return the status 2 now.", 3) == "anchors_differ"
    assert docs.keep_reason("Ja.", "Yes.", 3) == "too_short"
    assert docs.keep_reason("Gibt den Status 2 zurück.", "Return the status 2 now.", 3) is None


def sample_pairs(n: int) -> list[docs.SentencePair]:
    return [docs.SentencePair(f"Satz Nummer {i} auf Deutsch", f"Sentence number {i} in English", f"man1/p{i % 7}.1")
            for i in range(n)]


def test_build_set_hides_the_gold_among_real_distractors():
    pairs = sample_pairs(200)
    pairs += [docs.SentencePair("Satz Nummer 1 auf Deutsch", "a repeated translation", "man1/x.1")]  # not one-to-one
    split = docs.build_set(pairs, gold=30, distractors_per_gold=2.0, seed=3)
    assert len(split.gold) == 30 and len(split.src) == len(split.tgt) == 90
    truth = {p.xx: p.en for p in sample_pairs(200)}
    for i, j in split.gold:  # every gold row is a translation pair
        assert truth[split.src[i]] == split.tgt[j]
    gold_src = {i for i, _ in split.gold}
    en_in_set = set(split.tgt)
    for i, s in enumerate(split.src):  # no distractor has its translation in the set
        if i not in gold_src:
            assert truth[s] not in en_in_set
    assert len(set(split.src)) == len(split.src) and "a repeated translation" not in split.tgt
    assert docs.build_set(pairs, gold=30, seed=3) == split  # deterministic
    small = docs.build_set(pairs, gold=1000, distractors_per_gold=2.0)  # capped by the pool: 200 // 5
    assert len(small.gold) == 40
    with pytest.raises(ValueError, match="gold pairs"):
        docs.build_set(sample_pairs(50), gold=100, distractors_per_gold=10.0)


def test_retrieval_set_is_line_aligned():
    lang = docs.retrieval_set(sample_pairs(50), "de", max_pairs=20)
    assert lang.code == "de" and len(lang.sentences) == len(lang.english) == 20
    for x, e in zip(lang.sentences, lang.english, strict=True):
        assert x.split()[2] == e.split()[2]


def test_language_codes_of_man_directories():
    assert [docs.language_code(d) for d in ("de", "pt_BR", "zh_CN", "zh_TW")] == ["de", "pt", "zh", "zh-Hant"]
    assert docs.language_codes(["pt", "pt_BR", "zh_CN"]) == {"pt": "pt", "pt_BR": "pt-BR", "zh_CN": "zh"}
    assert docs.language_codes(["pt_BR"]) == {"pt_BR": "pt"}


def test_memo_embeds_each_distinct_sentence_once_and_keeps_the_order():
    import numpy as np

    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)

    memo = docs.MemoEmbed(embed)
    a = memo(["ab", "c", "ab"])
    b = memo(["c", "def", "ab"])
    assert calls == [["ab", "c"], ["def"]] and memo.embedded == 3
    assert a.tolist() == [[2, 97], [1, 99], [2, 97]] and b.tolist() == [[1, 99], [3, 100], [2, 97]]
    assert memo([]).shape[0] == 0


@pytest.mark.parametrize("seed", range(20))
def test_no_loss_equals_a_plain_check(seed):
    import random

    rng = random.Random(seed)
    langs = ["de", "fr", "ja", "ru", "pl"]
    ref = {lang: rng.random() for lang in langs if rng.random() < 0.9}
    cand = {lang: min(1.0, max(0.0, ref.get(lang, 0.5) + rng.choice([-0.03, -0.01, -0.005, 0.0, 0.02])))
            for lang in langs if rng.random() < 0.9}
    shared = [lang for lang in langs if lang in ref and lang in cand]
    if not shared:
        with pytest.raises(ValueError, match="no language"):
            docs.no_loss(cand, ref)
        return
    got = docs.no_loss(cand, ref, tolerance=0.01)
    losses = {}
    total = 0.0
    for lang in shared:
        d = cand[lang] - ref[lang]
        total += d
        if d < -0.01:
            losses[lang] = d
    assert got.losses == pytest.approx(losses)
    assert got.mean_delta == pytest.approx(total / len(shared))
    assert got.ok == (not losses and total / len(shared) >= 0)
