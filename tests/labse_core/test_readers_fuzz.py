"""Property-based bad input for every reader (hypothesis): truncated, binary, wrongly encoded, huge-line
and empty files, plain and gzip. Each reader either yields records (rejects carry a reason) or raises
``InputFileError`` naming the file; never any other exception, never a silent stop.

The inputs start from real files (gettext catalogs of this machine, Tatoeba lines) and are damaged:
cut at a random byte, bytes overwritten with random ones, a Latin-1 re-encoding, a 2 MiB line, or
replaced by random bytes altogether.
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labse_core.errors import InputFileError
from labse_core.gettext_catalog import catalog_pairs, read_mo, read_po
from labse_core.readers.mono import read_mono
from labse_core.readers.moses import read_moses
from labse_core.readers.records import MonoSentence, RawPair, ReadReject
from labse_core.readers.tmx import read_tmx
from labse_core.readers.tsv import read_tsv
from tests.conftest import TATOEBA

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

MO = next(p for p in sorted(Path("/usr/share/locale/de/LC_MESSAGES").glob("*.mo")) if p.stat().st_size < 60_000)
PO_TEXT = (
    'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n"Plural-Forms: nplurals=2; plural=(n != 1);\\n"\n\n'
    '#: src/main.c:10\nmsgid "Open file"\nmsgstr "Datei öffnen"\n\n'
    'msgid "%d file"\nmsgid_plural "%d files"\nmsgstr[0] "%d Datei"\nmsgstr[1] "%d Dateien"\n'
).encode()
DE_LINES = (TATOEBA / "tatoeba.deu-eng.deu").read_bytes().splitlines(keepends=True)[:40]
EN_LINES = (TATOEBA / "tatoeba.deu-eng.eng").read_bytes().splitlines(keepends=True)[:40]
TSV = b"src\ttgt\n" + b"".join(e.rstrip(b"\n") + b"\t" + d for e, d in zip(EN_LINES, DE_LINES, strict=True))
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


def _consume(records, path: Path | str, kinds: tuple[type, ...]) -> None:
    """Read everything: either records of the reader's kinds (rejects with a reason) or an
    InputFileError naming ``path``."""
    try:
        for r in records:
            assert isinstance(r, kinds + (ReadReject,)), type(r)
            if isinstance(r, ReadReject):
                assert r.reason and str(r.origin)
    except InputFileError as e:
        assert str(path) in str(e) and "\n" not in str(e).strip(), str(e)


@FUZZ
@given(content=damaged(TSV))
def test_tsv_reader(content):
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d), "corpus.en-de.tsv", content)
        _consume(read_tsv(path), path, (RawPair,))


@FUZZ
@given(a=damaged(b"".join(DE_LINES)), b=damaged(b"".join(EN_LINES)))
def test_moses_reader(a, b):
    with tempfile.TemporaryDirectory() as d:
        pa, pb = _write(Path(d), "corpus.de", a), _write(Path(d), "corpus.en", b)
        try:
            for r in read_moses(pa, pb):
                assert isinstance(r, RawPair | ReadReject)
        except InputFileError as e:
            assert str(pa) in str(e) or str(pb) in str(e), str(e)


@FUZZ
@given(content=damaged(TMX))
def test_tmx_reader(content):
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d), "memory.tmx", content)
        _consume(read_tmx(path, ("en", "de")), path, (RawPair,))


@FUZZ
@given(content=damaged(b"".join(DE_LINES)))
def test_mono_reader(content):
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d), "news.de", content)
        _consume(read_mono(path), path, (MonoSentence,))


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
