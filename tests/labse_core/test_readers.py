"""Readers on real text: files built in tmp_path from Tatoeba sentences must come back whole, in order.

The expected values are computed from the Tatoeba files with plain ``open().read().split("\\n")``,
sharing no code with the readers; broken inputs check the reason codes and the error messages.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest

from labse_core.readers import (
    FORMATS,
    MonoSentence,
    RawPair,
    ReaderError,
    ReadReject,
    TsvFormat,
    detect_format,
    eval_sentences,
    list_languages,
    mono_language,
    moses_pair,
    orient_english_source,
    read_mono,
    read_moses,
    read_moses_prefix,
    read_tatoeba,
    read_tmx,
    read_tsv,
)
from tests.conftest import TATOEBA

pytestmark = pytest.mark.skipif(not TATOEBA.is_dir(), reason="no Tatoeba data beside the checkout")


def tatoeba(code: str, n: int = 300) -> list[tuple[str, str]]:
    """The first ``n`` (xxx, eng) line pairs of the real test set."""
    xs = (TATOEBA / f"tatoeba.{code}-eng.{code}").read_text("utf-8").split("\n")[:n]
    es = (TATOEBA / f"tatoeba.{code}-eng.eng").read_text("utf-8").split("\n")[:n]
    assert len(xs) == len(es) == n
    return list(zip(xs, es, strict=True))


def write_lines(path: Path, lines: list[str] | list[bytes], *, gz: bool = False, eol: bytes = b"\n") -> Path:
    data = b"".join((x if isinstance(x, bytes) else x.encode("utf-8")) + eol for x in lines)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def pairs_only(records) -> list[RawPair]:
    records = list(records)
    assert all(isinstance(r, RawPair) for r in records), [r for r in records if not isinstance(r, RawPair)]
    return records


# ------------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------------


def test_orient_english_source_swaps_only_when_english_is_the_target():
    p = RawPair("de", "Hallo", "en", "Hello", "x.de", 3, "en", "tsv")
    o = orient_english_source(p, src_locale="de_CH")
    assert (o.src_lang, o.src_text, o.tgt_lang, o.tgt_text, o.locale) == ("en", "Hello", "de", "Hallo", "de_CH")
    assert orient_english_source(p).locale == "de"
    assert orient_english_source(o) is o
    both = RawPair("de", "Hallo", "ru", "Привет", "x", 1, "ru", "tsv")
    assert orient_english_source(both) is both


# ------------------------------------------------------------------------------------------------
# Moses
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_moses_prefix_round_trip(tmp_path, gz):
    ref = tatoeba("deu")
    ext = ".gz" if gz else ""
    write_lines(tmp_path / f"corpus.de-en.en{ext}", [e for _, e in ref], gz=gz)
    de = write_lines(tmp_path / f"corpus.de-en.de{ext}", [d for d, _ in ref], gz=gz)
    stats = Counter()
    got = pairs_only(read_moses_prefix(tmp_path / "corpus.de-en", stats=stats))
    assert [(p.src_text, p.tgt_text) for p in got] == [(e, d) for d, e in ref]
    assert [p.line for p in got] == list(range(1, len(ref) + 1))
    assert {(p.src_lang, p.tgt_lang, p.locale, p.origin, p.source) for p in got} == {
        ("en", "de", "de", str(de), "moses")
    }
    assert stats == Counter(lines=len(ref), pairs=len(ref))


def test_moses_english_first_crlf_and_unicode_line_separators(tmp_path):
    """English given as the first file is still src; U+2028, \\x85, \\x0c inside a line do not split it."""
    ref = tatoeba("jpn", 50)
    ref[10] = (ref[10][0] + "\u2028" + ref[11][0], ref[10][1] + "\x85 and\x0c more")
    en = write_lines(tmp_path / "c.en", [e for _, e in ref], eol=b"\r\n")
    ja = write_lines(tmp_path / "c.ja", [j for j, _ in ref], eol=b"\r\n")
    got = pairs_only(read_moses(en, ja))
    assert [(p.src_text, p.tgt_text) for p in got] == [(e, j) for j, e in ref]
    assert got[0].origin == str(ja) and got[0].src_lang == "en" and got[0].tgt_lang == "ja"


def test_moses_keeps_file_order_without_english(tmp_path):
    ru = [r for r, _ in tatoeba("rus", 40)]
    ar = [a for a, _ in tatoeba("ara", 40)]
    got = pairs_only(read_moses(write_lines(tmp_path / "x.ru", ru), write_lines(tmp_path / "x.ar", ar)))
    assert [(p.src_lang, p.tgt_lang) for p in got[:1]] == [("ru", "ar")]
    assert [(p.src_text, p.tgt_text) for p in got] == list(zip(ru, ar, strict=True))
    assert got[0].origin == str(tmp_path / "x.ru")


def test_moses_unequal_line_counts_name_both_files_before_anything_is_yielded(tmp_path):
    ref = tatoeba("deu", 100)
    de = write_lines(tmp_path / "c.de", [d for d, _ in ref])
    en = write_lines(tmp_path / "c.en", [e for _, e in ref[:97]])
    it = read_moses(de, en)
    with pytest.raises(ReaderError) as err:
        next(it)
    msg = str(err.value)
    assert str(de) in msg and str(en) in msg and "100 lines" in msg and "97 lines" in msg

    # Without the pre-count the mismatch surfaces at the end, after the aligned-looking prefix.
    got = []
    with pytest.raises(ReaderError, match=r"100 lines.*97 lines"):
        for rec in read_moses(de, en, precount=False):
            got.append(rec)
    assert len(got) == 97


def test_moses_invalid_utf8_is_a_counted_reject_with_its_line(tmp_path):
    ref = tatoeba("rus", 60)
    ru = [r.encode() for r, _ in ref]
    ru[4] = ru[4][:3] + b"\xff\xfe" + ru[4][3:]  # line 5
    ru[41] = ref[41][0].encode("cp1251", errors="replace")  # line 42: a legacy Windows encoding
    ru_path = write_lines(tmp_path / "c.ru", ru)
    en = write_lines(tmp_path / "c.en", [e for _, e in ref])
    stats = Counter()
    recs = list(read_moses(ru_path, en, stats=stats))
    assert len(recs) == 60
    rejects = [r for r in recs if isinstance(r, ReadReject)]
    assert [(r.line, r.reason) for r in rejects] == [(5, "invalid_utf8"), (42, "invalid_utf8")]
    assert str(ru_path) in rejects[0].detail and "\\xff\\xfe" in rejects[0].raw and ref[4][1] in rejects[0].raw
    assert stats == Counter(lines=60, pairs=58, invalid_utf8=2)
    assert [p.line for p in recs if isinstance(p, RawPair)] == [i for i in range(1, 61) if i not in (5, 42)]


def test_moses_empty_and_corrupt_files(tmp_path):
    de = write_lines(tmp_path / "e.de", [])
    en = write_lines(tmp_path / "e.en", [])
    with pytest.raises(ReaderError, match="empty file") as err:
        list(read_moses(de, en))
    assert str(de) in str(err.value)
    full = write_lines(tmp_path / "f.en", ["Hello."])
    with pytest.raises(ReaderError, match=r"e\.de: empty file \(its other side .*f\.en has 1 lines\)"):
        list(read_moses(de, full))
    gz = tmp_path / "t.de"
    gz.write_bytes(gzip.compress("\n".join(d for d, _ in tatoeba("deu", 1000)).encode())[:-40])  # truncated
    with pytest.raises(ReaderError, match="gzip"):
        list(read_moses(gz, write_lines(tmp_path / "t.en", [e for _, e in tatoeba("deu", 1000)])))


def test_moses_prefix_needs_two_languages(tmp_path):
    write_lines(tmp_path / "c.de", ["a"])
    write_lines(tmp_path / "c.ids", ["1"])  # an OPUS side file; 'ids' is not read as Idoma
    with pytest.raises(ReaderError, match=r"found languages \['de'\]"):
        moses_pair(tmp_path / "c")
    write_lines(tmp_path / "c.en", ["b"])
    write_lines(tmp_path / "c.fr", ["c"])
    with pytest.raises(ReaderError, match="pass langs="):
        moses_pair(tmp_path / "c")
    assert moses_pair(tmp_path / "c", ("en", "fra")) == (tmp_path / "c.fr", tmp_path / "c.en")


# ------------------------------------------------------------------------------------------------
# TSV
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_tsv_round_trip_with_header_languages_and_quotes_as_text(tmp_path, gz):
    ref = tatoeba("ara", 1000)
    assert any(e.startswith('"') and a.startswith('"') for a, e in ref), "want fields that open with a quote"
    rows = ["eng\tara\tscore"] + [f"{e}\t{a}\t0.9" for a, e in ref]
    path = write_lines(tmp_path / ("ar-en.tsv" + (".gz" if gz else "")), rows, gz=gz)
    stats = Counter()
    got = pairs_only(read_tsv(path, TsvFormat(columns=("src", "tgt", "score"), header=True), stats=stats))
    assert [(p.src_text, p.tgt_text) for p in got] == [(e, a) for a, e in ref]
    assert [p.line for p in got] == list(range(2, len(ref) + 2))
    assert {(p.src_lang, p.tgt_lang, p.locale, p.source) for p in got} == {("en", "ar", "ara", "tsv")}
    assert stats == Counter(lines=len(ref), pairs=len(ref))


def test_tsv_per_row_language_columns_and_argument_languages(tmp_path):
    """Tatoeba-Challenge layout (lang1, lang2, text1, text2) with mixed pairs, and languages by argument."""
    de, ru = tatoeba("deu", 20), tatoeba("rus", 20)
    rows = [f"deu\teng\t{d}\t{e}" for d, e in de] + [f"eng\trus\t{e}\t{r}" for r, e in ru]
    path = write_lines(tmp_path / "mixed.tsv", [*rows, f"Klingon\teng\tQapla'\t{de[0][1]}"])
    fmt = TsvFormat(columns=("src_lang", "tgt_lang", "src", "tgt"))
    *got, bad = read_tsv(path, fmt)
    assert (bad.line, bad.reason) == (41, "unknown_language")
    got = pairs_only(got)
    assert [(p.tgt_lang, p.locale, p.src_text, p.tgt_text) for p in got] == (
        [("de", "deu", e, d) for d, e in de] + [("ru", "rus", e, r) for r, e in ru]
    )
    plain = write_lines(tmp_path / "plain.tsv", [f"{d}\t{e}" for d, e in de])
    got = pairs_only(read_tsv(plain, src_lang="de", tgt_lang="en"))
    assert [(p.src_lang, p.src_text, p.tgt_text) for p in got] == [("en", e, d) for d, e in de]
    with pytest.raises(ReaderError, match="no language for the src column"):
        next(read_tsv(plain))


def test_tsv_malformed_rows_and_invalid_utf8_are_rejects(tmp_path):
    ref = tatoeba("deu", 30)
    rows: list[bytes] = [f"{d}\t{e}".encode() for d, e in ref]
    rows[2] = rows[2] + b"\textra"  # line 3: three fields
    rows[6] = b""  # line 7: blank
    rows[9] = rows[9].replace(b"\t", b" ")  # line 10: one field
    rows[14] = b"Gr\xfc\xdfe\tGreetings"  # line 15: latin-1
    path = write_lines(tmp_path / "bad.tsv", rows)
    stats = Counter()
    recs = list(read_tsv(path, src_lang="de", tgt_lang="en", stats=stats))
    rejects = [(r.line, r.reason) for r in recs if isinstance(r, ReadReject)]
    assert rejects == [(3, "malformed_record"), (7, "malformed_record"), (10, "malformed_record"),
                       (15, "invalid_utf8")]
    assert stats == Counter(lines=30, pairs=26, malformed_record=3, invalid_utf8=1)
    assert "3 fields, expected 2" in recs[2].detail and recs[2].raw.endswith("\textra")


@pytest.mark.parametrize("header", [False, True])
def test_tsv_spans_read_exactly_what_the_whole_file_holds(tmp_path, header):
    """A large TSV input is read in byte spans by several workers: together the spans yield every record
    of the whole-file read once, in order, with the same line numbers and rejects (header, BOM, CRLF, a
    blank line, a malformed line, invalid UTF-8, a last line without a newline), whatever the span size."""
    from labse_core.readers._files import line_spans

    ref = tatoeba("deu", 300)
    rows: list[bytes] = [f"{d}\t{e}".encode() for d, e in ref]
    rows[5] = b""
    rows[40] = rows[40].replace(b"\t", b" ")
    rows[77] = b"Gr\xfc\xdfe\tGreetings"
    rows = [r + b"\r" if i % 7 == 0 else r for i, r in enumerate(rows)]  # some CRLF line ends
    body = (b"de\ten\n" if header else b"") + b"\n".join(rows)  # no newline after the last line
    path = tmp_path / "big.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + body)
    fmt = TsvFormat(header=header)
    langs = {} if header else {"src_lang": "de", "tgt_lang": "en"}

    def key(r):
        return (r.line, r.reason, r.raw) if isinstance(r, ReadReject) else (r.line, r.src_text, r.tgt_text)

    whole = [key(r) for r in read_tsv(path, fmt, **langs)]
    assert len(whole) == 300 and whole[0][0] == (2 if header else 1)
    assert line_spans(path, 10**9) is None  # fits in one span: read whole
    for span_bytes in (1, 100, 997, 4096):
        spans = line_spans(path, span_bytes)
        assert spans[0][:1] == (0,) and spans[-1][1] == path.stat().st_size
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # contiguous, no overlap
        got = [key(r) for span in spans for r in read_tsv(path, fmt, **langs, span=span)]
        assert got == whole, span_bytes
    gz = tmp_path / "big.tsv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert line_spans(gz, 100) is None  # a gzip stream cannot be entered mid-way: read whole


def test_tsv_quoting_mode(tmp_path):
    path = write_lines(tmp_path / "q.tsv", ['"Tab\there"\t"Er sagte ""hallo""."', '"unclosed\tx'])
    recs = list(read_tsv(path, TsvFormat(quoting=True), src_lang="en", tgt_lang="de"))
    assert (recs[0].src_text, recs[0].tgt_text) == ("Tab\there", 'Er sagte "hallo".')
    assert (recs[1].line, recs[1].reason, recs[1].detail) == (2, "malformed_record", "unbalanced quotes")
    recs = list(read_tsv(path, src_lang="en", tgt_lang="de"))  # default: quotes are text
    assert recs[0].reason == "malformed_record" and recs[1].src_text == '"unclosed'


def test_tsv_empty_files(tmp_path):
    with pytest.raises(ReaderError, match=r"empty\.tsv: empty file"):
        list(read_tsv(write_lines(tmp_path / "empty.tsv", []), src_lang="de", tgt_lang="en"))
    with pytest.raises(ReaderError, match="a header and no records"):
        list(read_tsv(write_lines(tmp_path / "h.tsv", ["de\ten"]), TsvFormat(header=True)))


# ------------------------------------------------------------------------------------------------
# TMX
# ------------------------------------------------------------------------------------------------


def tmx_document(tus: list[list[tuple[str, str | None]]], *, attr: str = "xml:lang") -> tuple[str, list[int]]:
    """An OPUS-style TMX and the line of each <tu> start tag; a tu is [(lang, seg xml or None: no <seg>)]."""
    lines = ['<?xml version="1.0" encoding="utf-8"?>', '<tmx version="1.4">',
             '<header srclang="ru" adminlang="en" segtype="sentence" datatype="PlainText" o-tmf="x"/>',
             "  <body>"]
    tu_lines = []
    for tu in tus:
        tu_lines.append(len(lines) + 1)
        lines.append("    <tu>")
        lines += [f"      <tuv {attr}={quoteattr(lang)}><seg>{seg}</seg></tuv>" if seg is not None
                  else f"      <tuv {attr}={quoteattr(lang)}/>" for lang, seg in tu]
        lines.append("    </tu>")
    lines += ["  </body>", "</tmx>"]
    return "\n".join(lines) + "\n", tu_lines


@pytest.mark.parametrize("gz", [False, True])
def test_tmx_round_trip(tmp_path, gz):
    ref = tatoeba("rus")
    doc, tu_lines = tmx_document([[("ru", escape(r)), ("en", escape(e))] for r, e in ref])
    path = tmp_path / ("ru-en.tmx" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(doc.encode()) if gz else doc.encode())
    stats = Counter()
    got = pairs_only(read_tmx(path, stats=stats))
    assert [(p.src_text, p.tgt_text) for p in got] == [(e, r) for r, e in ref]
    assert [p.line for p in got] == tu_lines
    assert {(p.src_lang, p.tgt_lang, p.locale, p.origin, p.source) for p in got} == {
        ("en", "ru", "ru", str(path), "tmx")
    }
    assert stats == Counter(tus=len(ref), pairs=len(ref))


def test_tmx_lang_attribute_and_inline_markup(tmp_path):
    (ja, en), = tatoeba("jpn", 1)
    tus = [
        [("ja-JP", escape(ja)), ("EN-GB", escape(en))],
        [("en", 'Click <bpt i="1">&lt;b&gt;</bpt>here<ept i="1">&lt;/b&gt;</ept> to <hi type="x">save</hi>'
                '<ph x="2">{0}</ph>.'),
         ("ja", 'ここ<bpt i="1">&lt;b&gt;</bpt>を<ept i="1">&lt;/b&gt;</ept>クリック<ph>'
                '<sub>alt text</sub></ph><it pos="begin">&lt;i&gt;</it>して保存'), ],
        [("ja", "\n        前後の空白\n      "), ("en", "  Whitespace around  ")],
    ]
    doc, lines = tmx_document(tus, attr="lang")  # TMX 1.1 style attribute
    path = tmp_path / "ja-en.tmx"
    path.write_text(doc, "utf-8")
    got = pairs_only(read_tmx(path, ("ja", "en")))
    assert [(p.src_text, p.tgt_text, p.locale, p.line) for p in got] == [
        (en, ja, "ja-JP", lines[0]),
        ("Click here to save.", "ここをクリックして保存", "ja", lines[1]),
        ("Whitespace around", "前後の空白", "ja", lines[2]),
    ]


def test_tmx_missing_side_extra_languages_and_bad_variants(tmp_path):
    (de, en), (de2, en2) = tatoeba("deu", 2)
    (ru, _), = tatoeba("rus", 1)
    tus = [
        [("de", de), ("en", en), ("ru", ru)],  # 1: requested pair picked out of three
        [("de", de2), ("en", None)],  # 2: a <tuv> without <seg>
        [("de-DE", de), ("de-AT", de2), ("en", en)],  # 3: duplicate language
        [("xx-bogus", de), ("en", en)],  # 4: unknown language that may have been the missing side
        [("en", en2), ("de", de2)],  # 5: sides in the other order
        [("de", de), ("ru", ru)],  # 6: missing side
    ]
    doc, lines = tmx_document([[(lang, s and escape(s)) for lang, s in tu] for tu in tus])
    path = tmp_path / "multi.tmx"
    path.write_text(doc, "utf-8")
    recs = list(read_tmx(path, ("de", "en")))
    assert [type(r).__name__ for r in recs] == ["RawPair"] + ["ReadReject"] * 3 + ["RawPair", "ReadReject"]
    assert (recs[0].src_text, recs[0].tgt_text, recs[0].line) == (en, de, lines[0])
    assert [(r.reason, r.line) for r in recs[1:4]] == [
        ("malformed_record", lines[1]), ("duplicate_language", lines[2]), ("unknown_language", lines[3])
    ]
    assert recs[1].detail.startswith("<tu> #2: ") and "has no <seg>" in recs[1].detail
    assert escape(de2) in recs[1].raw
    assert (recs[4].src_text, recs[4].tgt_text) == (en2, de2)
    assert (recs[5].reason, recs[5].line, recs[5].detail) == (
        "missing_side", lines[5], "<tu> #6: no ['en'] variant; languages ['de', 'ru']")

    # Without a requested pair: three languages cannot be resolved; the first two-language <tu> decides.
    recs = list(read_tmx(path))
    assert [getattr(r, "reason", "pair") for r in recs] == [
        "ambiguous_languages", "malformed_record", "duplicate_language", "unknown_language", "pair", "missing_side"]
    only_de = tmp_path / "one.tmx"
    only_de.write_text(tmx_document([[("de", escape(de))], [("de", escape(de)), ("en", escape(en))]])[0])
    assert [getattr(r, "reason", "pair") for r in read_tmx(only_de)] == ["missing_side", "pair"]


def test_tmx_malformed_xml_raises_with_line_after_earlier_pairs(tmp_path):
    ref = tatoeba("deu", 20)
    doc, lines = tmx_document([[("de", escape(d)), ("en", escape(e))] for d, e in ref])
    broken = doc.splitlines()
    bad_line = lines[12] + 1  # first <tuv> of the 13th <tu>
    broken[bad_line - 1] = broken[bad_line - 1].replace("</seg>", "</sag>")
    path = tmp_path / "broken.tmx"
    path.write_text("\n".join(broken) + "\n", "utf-8")
    got = []
    with pytest.raises(ReaderError, match=r"broken\.tmx:(\d+): malformed XML: mismatched tag") as err:
        for rec in read_tmx(path):
            got.append(rec)
    assert err.value.line == bad_line
    assert len(got) == 12

    invalid = tmp_path / "latin1.tmx"
    invalid.write_bytes(doc.encode().replace(escape(ref[3][0]).encode(), "Grüße".encode("latin-1")))
    with pytest.raises(ReaderError, match="not well-formed") as err:
        list(read_tmx(invalid))
    assert err.value.line == lines[3] + 1


def test_tmx_empty_and_not_tmx(tmp_path):
    for name, text, match in [("e.tmx", "", "empty file"), ("ws.tmx", "\n  \n", "empty file"),
                              ("nobody.tmx", '<tmx version="1.4"><header/><body>\n</body></tmx>', "no <tu>"),
                              ("html.tmx", "<html><body/></html>", "not a TMX file")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ReaderError, match=match):
            list(read_tmx(tmp_path / name))
    gz = tmp_path / "e.tmx.gz"
    gz.write_bytes(gzip.compress(b""))
    with pytest.raises(ReaderError, match=r"e\.tmx\.gz: empty file"):
        list(read_tmx(gz))
    doc, _ = tmx_document([[("de", escape(d)), ("en", escape(e))] for d, e in tatoeba("deu", 200)])
    gz.write_bytes(gzip.compress(doc.encode())[:-100])
    with pytest.raises(ReaderError, match="truncated gzip"):
        list(read_tmx(gz))


_TMX_PEAK = """
import sys, tracemalloc
from labse_core.readers import read_tmx
out = []
for path in sys.argv[1:]:
    tracemalloc.start()
    n = sum(1 for _ in read_tmx(path))
    out += [n, tracemalloc.get_traced_memory()[1]]
    tracemalloc.stop()
print(*out)
"""


def test_tmx_streams_in_constant_memory(tmp_path):
    """Peak traced memory while reading does not grow with the file: 0.4 MB and 3.5 MB files alike."""
    ref = [(escape(d), escape(e)) for d, e in tatoeba("deu", 1000)]

    def write(path: Path, n_tus: int) -> Path:
        with open(path, "w", encoding="utf-8") as f:
            head, _ = tmx_document([])
            f.write(head.rsplit("  </body>", 1)[0])
            for i in range(n_tus):
                d, e = ref[i % len(ref)]
                f.write(f'    <tu tuid="{i}">\n      <tuv xml:lang="de"><seg>{d}</seg></tuv>\n'
                        f'      <tuv xml:lang="en"><seg>{e}</seg></tuv>\n    </tu>\n')
            f.write("  </body>\n</tmx>\n")
        return path

    small, big = write(tmp_path / "small.tmx", 2_000), write(tmp_path / "big.tmx", 16_000)
    assert big.stat().st_size > 3_000_000
    # Measured in a child process: in the full suite, state left by other tests (logging handlers, caches)
    # adds allocations that have nothing to do with the reader.
    child = subprocess.run([sys.executable, "-c", _TMX_PEAK, str(small), str(big)], capture_output=True, text=True,
                           check=True, cwd=Path(__file__).resolve().parents[2])
    n_small, peak_small, n_big, peak_big = map(int, child.stdout.split())
    assert (n_small, n_big) == (2_000, 16_000)
    assert peak_big < 250_000, peak_big  # one <tu> at a time (~30 kB measured); a retained tree is > 20 MB
    assert peak_big < 1.5 * peak_small + 50_000, (peak_small, peak_big)


# ------------------------------------------------------------------------------------------------
# Tatoeba
# ------------------------------------------------------------------------------------------------


def test_tatoeba_real_directory():
    langs = list_languages(TATOEBA)
    assert len(langs) == 112 and {"deu", "cmn", "kzj", "dtp", "pes"} <= set(langs)
    stats = Counter()
    deu = pairs_only(read_tatoeba(TATOEBA, ["deu"], stats=stats))
    assert len(deu) == 1000 and stats == Counter(lines=1000, pairs=1000)
    first = deu[0]
    assert (first.src_lang, first.src_text) == ("en", "Mary said she didn't know where Tom was.")
    assert (first.tgt_lang, first.tgt_text, first.locale) == ("de", "Maria sagte, sie wisse nicht, wo Tom sei.", "deu")
    assert (first.line, first.source, first.origin) == (1, "tatoeba", str(TATOEBA / "tatoeba.deu-eng.deu"))
    assert [p.line for p in deu] == list(range(1, 1001))
    assert [(p.tgt_text, p.src_text) for p in deu[:300]] == tatoeba("deu")

    zh = pairs_only(read_tatoeba(TATOEBA, ["zh"]))  # canonical code selects the cmn file
    assert {(p.tgt_lang, p.locale) for p in zh} == {("zh", "cmn")}
    assert {p.locale for p in read_tatoeba(TATOEBA, ["dtp"])} == {"dtp"}  # a file code selects its file only
    with pytest.raises(ReaderError, match="no Tatoeba files"):
        list(read_tatoeba(TATOEBA, ["haw"]))


def test_tatoeba_eval_sentences_cover_both_sides_once():
    sents = list(eval_sentences(TATOEBA, ["deu", "fra"]))
    assert len(sents) == len(set(sents))
    assert ("de", "Maria sagte, sie wisse nicht, wo Tom sei.") in sents
    assert ("en", "Mary said she didn't know where Tom was.") in sents
    assert {lang for lang, _ in sents} == {"de", "fr", "en"}
    expected = {("de", d) for d, _ in tatoeba("deu", 1000)} | {("fr", f) for f, _ in tatoeba("fra", 1000)}
    expected |= {("en", e) for code in ("deu", "fra") for _, e in tatoeba(code, 1000)}
    assert set(sents) == expected


# ------------------------------------------------------------------------------------------------
# monolingual
# ------------------------------------------------------------------------------------------------


def test_mono_round_trip_blank_lines_and_invalid_utf8(tmp_path):
    ja = [j for j, _ in tatoeba("jpn", 100)]
    lines: list[bytes] = []
    expected = []
    for i, s in enumerate(ja):
        lines.append(s.encode())
        expected.append((s, len(lines)))
        if i % 10 == 0:
            lines.append(b"  " if i % 20 else b"")
    lines.append(ja[0].encode("shift_jis"))
    path = write_lines(tmp_path / "ja.txt", lines)
    stats = Counter()
    recs = list(read_mono(path, stats=stats))
    sents = [r for r in recs if isinstance(r, MonoSentence)]
    assert [(s.text, s.line) for s in sents] == expected
    assert {s.lang for s in sents} == {"ja"}
    assert [(r.line, r.reason) for r in recs if isinstance(r, ReadReject)] == [(len(lines), "invalid_utf8")]
    assert stats == Counter(lines=len(lines), sentences=100, blank_lines=10, invalid_utf8=1)


def test_mono_language_from_name_gz_and_empty(tmp_path):
    ru = [r for r, _ in tatoeba("rus", 50)]
    gz = write_lines(tmp_path / "news.2019.ru.shuffled.gz", ru, gz=True)
    assert [(s.lang, s.text) for s in read_mono(gz)] == [("ru", r) for r in ru]
    (tmp_path / "ar").mkdir()
    assert mono_language(tmp_path / "ar" / "part-0001.txt") == "ar"
    assert mono_language("cc100/zh_TW.txt") == "zh-Hant"
    with pytest.raises(ReaderError, match="cannot tell the language"):
        mono_language(tmp_path / "corpus.txt")
    stats = Counter()
    assert list(read_mono(write_lines(tmp_path / "de.txt", []), stats=stats)) == []
    assert stats["lines"] == 0


# ------------------------------------------------------------------------------------------------
# detect
# ------------------------------------------------------------------------------------------------


def test_detect_format(tmp_path):
    write_lines(tmp_path / "c.de", ["a"])
    write_lines(tmp_path / "c.en.gz", ["b"], gz=True)
    for name in ["x.tmx", "x.tmx.gz", "x.tsv", "x.tsv.gz", "de.po", "de.mo", "de.txt", "news.de.txt.gz"]:
        (tmp_path / name).write_bytes(b"")
    cases = {"x.tmx": "tmx", "x.tmx.gz": "tmx", "x.tsv": "tsv", "x.tsv.gz": "tsv", "de.po": "gettext",
             "de.mo": "gettext", "de.txt": "mono", "news.de.txt.gz": "mono", "c": "moses", "c.de": "moses"}
    assert {name: detect_format(tmp_path / name) for name in cases} == cases
    assert detect_format(TATOEBA) == "tatoeba"
    assert set(cases.values()) | {"tatoeba"} == set(FORMATS)
    (tmp_path / "notes.docx").write_bytes(b"")
    with pytest.raises(ReaderError, match="unknown input format"):
        detect_format(tmp_path / "notes.docx")
    with pytest.raises(ReaderError, match="not a Tatoeba"):
        detect_format(tmp_path)
    with pytest.raises(ReaderError, match="unknown input format"):
        detect_format(tmp_path / "missing")
