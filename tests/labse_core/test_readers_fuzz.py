"""Property-based bad input for every reader (hypothesis): truncated, binary, wrongly encoded, huge-line
and empty files, plain and gzip. Each reader either yields records (rejects carry a reason) or raises
``InputFileError`` naming the file; never any other exception, never a silent stop.

"Never a silent stop" is checked against a plain reference computed from the damaged bytes: every input
unit (a line after the header, a Moses line pair, a ``<tu>``) is exactly one record or one reject, in
order, and the reader raises only when the reference says the whole file is unreadable (a corrupt gzip
stream, no records, a bad header, unequal Moses sides, XML that does not parse).

The inputs start from real files (gettext catalogs of this machine, Tatoeba lines) and are damaged:
cut at a random byte, bytes overwritten with random ones, a Latin-1 re-encoding, a 2 MiB line, or
replaced by random bytes altogether.
"""

from __future__ import annotations

import gzip
import tempfile
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labse_core.errors import InputFileError
from labse_core.gettext_catalog import catalog_pairs, read_mo, read_po
from labse_core.langcodes import UnknownLanguage, normalize
from labse_core.readers.mono import read_mono
from labse_core.readers.moses import read_moses
from labse_core.readers.records import MonoSentence, RawPair, ReadReject
from labse_core.readers.tmx import read_tmx
from labse_core.readers.tsv import TsvFormat, read_tsv
from tests.conftest import LOCALE_ROOT, TATOEBA

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

MO = LOCALE_ROOT / "de/LC_MESSAGES/sed.mo"  # GNU sed's catalog (~15 KB): small, on every Debian system
PO_TEXT = (
    'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n"Plural-Forms: nplurals=2; plural=(n != 1);\\n"\n\n'
    '#: src/main.c:10\nmsgid "Open file"\nmsgstr "Datei öffnen"\n\n'
    'msgid "%d file"\nmsgid_plural "%d files"\nmsgstr[0] "%d Datei"\nmsgstr[1] "%d Dateien"\n'
).encode()
DE_LINES = (TATOEBA / "tatoeba.deu-eng.deu").read_bytes().splitlines(keepends=True)[:40]
EN_LINES = (TATOEBA / "tatoeba.deu-eng.eng").read_bytes().splitlines(keepends=True)[:40]
TSV = b"en\tde\n" + b"".join(e.rstrip(b"\n") + b"\t" + d for e, d in zip(EN_LINES, DE_LINES, strict=True))
TMX = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<tmx version="1.4"><header srclang="en" datatype="plaintext" '
    b'segtype="sentence" adminlang="en" creationtool="t" creationtoolversion="1" o-tmf="t"/><body>\n'
    + b"".join(b'<tu><tuv xml:lang="en"><seg>' + e.strip().replace(b"&", b"&amp;").replace(b"<", b"&lt;")
               + b'</seg></tuv><tuv xml:lang="de"><seg>' + d.strip().replace(b"&", b"&amp;").replace(b"<", b"&lt;")
               + b"</seg></tuv></tu>\n" for e, d in zip(EN_LINES, DE_LINES, strict=True))
    + b"</body></tmx>\n"
)


@st.composite
def damaged(draw, good: bytes) -> tuple[bytes, bool]:
    """(content, gzip it?) made from ``good``."""
    how = draw(st.sampled_from(["cut", "overwrite", "latin1", "huge_line", "random", "empty", "nul"]))
    data = good
    if how == "cut":
        data = good[: draw(st.integers(0, len(good)))]
    elif how == "overwrite":
        buf = bytearray(good)
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(buf) - 1))
            chunk = draw(st.binary(min_size=1, max_size=16))
            buf[pos : pos + len(chunk)] = chunk
        data = bytes(buf)
    elif how == "latin1":
        data = good.decode("utf-8", "replace").encode("latin-1", "replace")
    elif how == "huge_line":
        cut = draw(st.integers(0, len(good)))
        data = good[:cut] + b"x" * (2 << 20) + good[cut:]
    elif how == "random":
        data = draw(st.binary(min_size=1, max_size=2048))
    elif how == "empty":
        data = b""
    elif how == "nul":
        data = good.replace(b"e", b"\x00", draw(st.integers(1, 20)))
    compress = draw(st.booleans())
    if compress and draw(st.booleans()):  # a gzip stream cut short
        z = gzip.compress(data)
        return z[: draw(st.integers(0, max(0, len(z) - 1)))], False
    return data, compress


def _write(folder: Path, name: str, content: tuple[bytes, bool]) -> Path:
    data, compress = content
    path = folder / (name + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _plain(path: Path) -> bytes | None:
    """The bytes a reader sees in ``path``: gunzipped when they start with gzip's magic number (the
    readers decide by content, not by name); None when that gzip stream is corrupt or cut short."""
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error):
        return None


def _lines(data: bytes) -> list[bytes]:
    """Lines split on ``\\n`` only; ``\\r\\n`` ends a line too; a UTF-8 BOM dropped from the first."""
    parts = data.split(b"\n")
    last = parts.pop()  # after the last newline: b"" when the data ends with one
    lines = [x[:-1] if x.endswith(b"\r") else x for x in parts] + ([last] if last else [])
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]
    return lines


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _language(code: str) -> bool:
    try:
        normalize(code)
        return True
    except UnknownLanguage:
        return False


Expected = list[tuple[str, int | None]] | None
"""Per input unit in order: ("record", line) or ("reject", line); None: the reader must raise."""


def _outcome(records, path, kinds: tuple[type, ...], *paths: Path | str) -> list[tuple[str, int | None]] | None:
    """Read everything: each item a record of the reader's kinds or a reject with a reason, or an
    InputFileError naming ``path`` (or one of ``paths``) on one line. None when it raised."""
    out = []
    try:
        for r in records:
            assert isinstance(r, kinds + (ReadReject,)), type(r)
            if isinstance(r, ReadReject):
                assert r.reason and str(r.origin)
            out.append(("reject" if isinstance(r, ReadReject) else "record", r.line))
    except InputFileError as e:
        assert any(str(p) in str(e) for p in (path, *paths)) and "\n" not in str(e).strip(), str(e)
        return None
    return out


def _expected_tsv(data: bytes | None) -> Expected:
    """A header line ``en<TAB>de``, then per line: a pair when it is UTF-8 with two fields, else a reject."""
    if data is None:
        return None
    lines = _lines(data)
    head = _utf8(lines[0]).split("\t") if lines and _utf8(lines[0]) is not None else None
    if head is None or len(head) != 2 or not all(_language(c.strip()) for c in head) or len(lines) < 2:
        return None  # empty, a bad header, or a header and nothing else
    return [("record" if (t := _utf8(raw)) is not None and len(t.split("\t")) == 2 else "reject", n)
            for n, raw in enumerate(lines[1:], 2)]


def _expected_mono(data: bytes | None) -> Expected:
    """Per line: a sentence when it is UTF-8 and not blank, a reject when it is not UTF-8; blank lines are
    counted, not yielded. An empty file yields nothing."""
    if data is None:
        return None
    out = []
    for n, raw in enumerate(_lines(data), 1):
        text = _utf8(raw)
        if text is None:
            out.append(("reject", n))
        elif text.strip():
            out.append(("record", n))
    return out


def _expected_moses(a: bytes | None, b: bytes | None) -> Expected:
    """Both sides readable, non-empty and of equal line counts, then per line pair: a pair when both sides
    are UTF-8, else a reject."""
    if a is None or b is None:
        return None
    la, lb = _lines(a), _lines(b)
    if not la or not lb or len(la) != len(lb):
        return None
    return [("record" if _utf8(x) is not None and _utf8(y) is not None else "reject", n)
            for n, (x, y) in enumerate(zip(la, lb, strict=True), 1)]


def _expected_tmx_units(data: bytes | None) -> int | None:
    """The number of ``<tu>`` elements when the document parses (ElementTree over the whole text at once,
    not the reader's line-fed pull parser) with a ``<tmx>`` root; None: the reader must raise."""
    if data is None or not data.strip():
        return None
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return None
    local = lambda tag: tag.rpartition("}")[2]  # noqa: E731
    n = sum(1 for el in root.iter() if local(el.tag) == "tu")
    return n if local(root.tag) == "tmx" and n else None


@FUZZ
@given(content=damaged(TSV))
def test_tsv_reader(content):
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d), "corpus.en-de.tsv", content)
        got = _outcome(read_tsv(path, TsvFormat(header=True)), path, (RawPair,))
        assert got == _expected_tsv(_plain(path))


@FUZZ
@given(a=damaged(b"".join(DE_LINES)), b=damaged(b"".join(EN_LINES)))
def test_moses_reader(a, b):
    with tempfile.TemporaryDirectory() as d:
        pa, pb = _write(Path(d), "corpus.de", a), _write(Path(d), "corpus.en", b)
        got = _outcome(read_moses(pa, pb), pa, (RawPair,), pb)
        assert got == _expected_moses(_plain(pa), _plain(pb))


def test_moses_reader_on_equal_sides_accounts_for_every_line(tmp_path):
    """Damaged independently, the two sides mostly differ in length (a raise); here both keep 40 lines,
    some of them not UTF-8, so the per-line path is always taken."""
    de, en = list(DE_LINES), list(EN_LINES)
    de[3], en[7] = b"\xff\xfe broken\n", b"caf\xe9\n"
    pa, pb = tmp_path / "corpus.de", tmp_path / "corpus.en.gz"
    pa.write_bytes(b"".join(de))
    pb.write_bytes(gzip.compress(b"".join(en)))
    got = _outcome(read_moses(pa, pb), pa, (RawPair,), pb)
    assert got == _expected_moses(_plain(pa), _plain(pb)) and len(got) == 40
    assert [n for kind, n in got if kind == "reject"] == [4, 8]


@FUZZ
@given(content=damaged(TMX))
def test_tmx_reader(content):
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d), "memory.tmx", content)
        got = _outcome(read_tmx(path, ("en", "de")), path, (RawPair,))
        units = _expected_tmx_units(_plain(path))
        assert (got is None) == (units is None), (got, units)
        assert got is None or len(got) == units


@FUZZ
@given(content=damaged(b"".join(DE_LINES)))
def test_mono_reader(content):
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d), "news.de", content)
        got = _outcome(read_mono(path), path, (MonoSentence,))
        assert got == _expected_mono(_plain(path))


def test_the_undamaged_inputs_read_completely(tmp_path):
    """The references on the good inputs: every line / <tu> a record (so a reader that stops early fails
    here even if hypothesis drew only damaged files)."""
    (tmp_path / "c.tsv").write_bytes(TSV)
    (tmp_path / "m.tmx").write_bytes(TMX)
    (tmp_path / "news.de").write_bytes(b"".join(DE_LINES))
    assert _outcome(read_tsv(tmp_path / "c.tsv", TsvFormat(header=True)), "", (RawPair,)) == \
        [("record", n) for n in range(2, 42)]
    assert _outcome(read_mono(tmp_path / "news.de"), "", (MonoSentence,)) == [("record", n) for n in range(1, 41)]
    assert _outcome(read_tmx(tmp_path / "m.tmx", ("en", "de")), "", (RawPair,)) == [("record", n) for n in range(3, 43)]
    assert _expected_tmx_units(TMX) == 40


@pytest.mark.parametrize("reader,good,name", [(read_mo, MO.read_bytes(), "x.mo"), (read_po, PO_TEXT, "x.po")])
def test_gettext_readers(reader, good, name):
    @FUZZ
    @given(content=damaged(good))
    def check(content):
        data, _ = content
        path = f"/fuzz/de/LC_MESSAGES/{name}"
        try:
            list(catalog_pairs(reader(path, data)))
        except InputFileError as e:
            assert path in str(e), str(e)

    check()
