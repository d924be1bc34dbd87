"""Byte-level file helpers shared by the readers: gzip by magic number, line splitting, counting.

Lines are split on ``\\n`` only, in binary. ``str.splitlines`` (and text-mode files with universal
newlines) also split on ``\\r``, ``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``, ``\\x85``, U+2028 and
U+2029, which do occur inside web-crawled sentences and would shift one side of an aligned corpus
against the other.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from labse_core.langcodes import UnknownLanguage, normalize
from labse_core.readers.records import ReaderError

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
_CHUNK = 1 << 20
_CODE_RE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,4})*(@[A-Za-z]+)?$")


def is_gzip(path: str | os.PathLike[str]) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


@contextmanager
def open_bytes(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open ``path`` for reading bytes, decompressing when it is gzip (by magic number, not by name)."""
    try:
        f: BinaryIO = gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise ReaderError(path, "no such file") from None
    except IsADirectoryError:
        raise ReaderError(path, "is a directory, expected a file") from None
    with f:
        yield f


def iter_lines(f: BinaryIO, path: str | os.PathLike[str]) -> Iterator[bytes]:
    """The lines of ``f`` with their ``\\n`` (and a ``\\r`` before it) removed; a BOM on line 1 dropped."""
    first = True
    lineno = 0
    it = iter(f)
    while True:
        try:
            raw = next(it)
        except StopIteration:
            return
        except GZIP_ERRORS as e:
            raise ReaderError(path, f"corrupt or truncated gzip stream after line {lineno}: {e}") from None
        lineno += 1
        if raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        if first:
            first = False
            if raw.startswith(UTF8_BOM):
                raw = raw[3:]
        yield raw


def read_span(f: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """The raw lines of an uncompressed file ``f`` that start at a byte offset in ``[start, end)``
    (``start`` at the start of a line)."""
    f.seek(start)
    pos = start
    while pos < end:
        raw = f.readline()
        if not raw:
            return
        pos += len(raw)
        yield raw


def line_spans(path: str | os.PathLike[str], span_bytes: int) -> list[tuple[int, int, int]] | None:
    """Split an uncompressed line-based file into ``(start, end, first line)`` spans of about
    ``span_bytes`` each, cut at line ends, for ``read_span``; None for a gzip file or one that fits
    in one span (read it whole). Reads the file once to number the lines."""
    size = os.path.getsize(path)
    if size <= span_bytes or is_gzip(path):
        return None
    spans = []
    start, line = 0, 1
    with open(path, "rb") as f:
        while start < size:
            end = min(start + span_bytes, size)
            if end < size:
                f.seek(end - 1)
                f.readline()  # to the end of the line that holds byte end - 1
                end = f.tell()
            f.seek(start)
            newlines, left = 0, end - start
            while left:
                block = f.read(min(left, 1 << 24))
                if not block:  # the file shrank meanwhile: the reader will see where it ends
                    break
                newlines += block.count(b"\n")
                left -= len(block)
            spans.append((start, end, line))
            line += newlines
            start = end
    return spans


def count_lines(path: str | os.PathLike[str]) -> int:
    """Lines as ``iter_lines`` will yield them: newlines, plus one for a last line without one.

    Counts ``\\n`` in 1 MiB binary chunks (memory-bound; a .gz file is decompressed once more).
    """
    n = 0
    last = b""
    with open_bytes(path) as f:
        while True:
            try:
                chunk = f.read(_CHUNK)
            except GZIP_ERRORS as e:
                raise ReaderError(path, f"corrupt or truncated gzip stream: {e}") from None
            if not chunk:
                break
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (1 if last and last != b"\n" else 0)


def decode(raw: bytes) -> str:
    """Strict UTF-8; raises ``UnicodeDecodeError`` (the caller turns it into a reject)."""
    return raw.decode("utf-8")


def recover(raw: bytes) -> str:
    """What a reject keeps of an undecodable line: valid text as is, bad bytes as ``\\xNN``."""
    return raw.decode("utf-8", errors="backslashreplace")


def utf8_error(e: UnicodeDecodeError) -> str:
    return f"invalid UTF-8 at byte {e.start}: {e.object[e.start:e.end]!r} ({e.reason})"


def strip_compression(name: str) -> str:
    """``corpus.de.gz`` -> ``corpus.de``."""
    return name[:-3] if name.lower().endswith(".gz") else name


# File-name parts that look like ISO 639-3 codes but, in a file name, are extensions or corpus
# vocabulary ("ids" is Idoma, "txt" is Tetun Dili, "src" is Logudorese Sardinian, "bak" -> Bashkir...).
NOT_LANGUAGE_PARTS = frozenset(
    "ids xml txt tsv csv tmx json jsonl yml yaml raw tok bpe spm log bak src tgt ref hyp dev all "
    "sgm out tmp gz xz bz2 zip lock md orig test train valid clean dedup norm lc".split()
)


def language_part(part: str) -> str | None:
    """``part`` if it is a language code written as a file name would (``de``, ``deu``, ``pt_BR``, ``sr@latin``)."""
    if part.lower() in NOT_LANGUAGE_PARTS or not _CODE_RE.match(part):
        return None
    try:
        normalize(part)
    except UnknownLanguage:
        return None
    return part
