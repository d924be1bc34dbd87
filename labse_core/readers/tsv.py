"""Tab-separated parallel text: one pair per line, columns named by a ``TsvFormat``.

OPUS TSV files (``opus-*.tsv``, Tatoeba-Challenge ``test.txt``) are *unquoted*: a field is exactly
what lies between two tabs, and ``"`` is an ordinary character (``He said "hi".`` stays intact).
That is the default. ``TsvFormat(quoting=True)`` reads CSV-style quoted fields (``"a<TAB>b"`` is one
field, ``""`` inside quotes is ``"``) for files written by spreadsheet tools; a quoted field may not
span lines, so a line is always one record and line numbers stay exact.

Languages, for each side, from the first of: a per-row language column (``src_lang`` / ``tgt_lang``
in ``columns``, as in Tatoeba-Challenge files), the ``src_lang`` / ``tgt_lang`` arguments, the header
row (``header=True``: the header's fields in the ``src`` / ``tgt`` positions are language codes).

Per line: not UTF-8 -> ``invalid_utf8``; a number of fields other than ``len(columns)`` (blank lines
included) or broken quoting -> ``malformed_record``; a per-row language ``langcodes`` cannot map ->
``unknown_language``. Text is kept as is apart from the line terminator.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from labse_core.langcodes import UnknownLanguage, normalize
from labse_core.readers._files import decode, iter_lines, open_bytes, read_span, recover, utf8_error
from labse_core.readers.records import (
    INVALID_UTF8,
    MALFORMED_RECORD,
    UNKNOWN_LANGUAGE,
    LanguagePair,
    RawPair,
    ReaderError,
    ReadReject,
)

PathLike = str | os.PathLike[str]
SPECIAL_COLUMNS = ("src", "tgt", "src_lang", "tgt_lang")


@dataclass(frozen=True, slots=True)
class TsvFormat:
    columns: tuple[str, ...] = ("src", "tgt")
    """Name of every field in order. ``src`` and ``tgt`` are required; ``src_lang`` / ``tgt_lang`` hold
    per-row language codes; any other name (``score``, ``id``) is a field that is counted and ignored."""
    header: bool = False
    """The first line names the languages (in the ``src`` / ``tgt`` positions) and is not a record."""
    quoting: bool = False
    """CSV-style quoted fields; off for OPUS files, where ``"`` is text."""

    def __post_init__(self) -> None:
        missing = [c for c in ("src", "tgt") if c not in self.columns]
        dupes = {c for c in self.columns if c in SPECIAL_COLUMNS and self.columns.count(c) > 1}
        if missing or dupes:
            raise ValueError(f"TsvFormat.columns {self.columns}: missing {missing}, repeated {sorted(dupes)}")


def read_tsv(
    path: PathLike,
    fmt: TsvFormat | None = None,
    *,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    stats: Counter | None = None,
    span: tuple[int, int, int] | None = None,
) -> Iterator[RawPair | ReadReject]:
    """Pairs from the ``src`` / ``tgt`` columns of each line (English oriented to ``src``).

    ``line`` is the 1-based line in the file (the header is line 1). ``stats`` counts ``lines``
    (records, header excluded), ``pairs`` and each reject reason. Raises ``ReaderError`` for an empty
    file, a bad header, no way to tell a side's language, or a corrupt .gz.

    ``span``: ``(start, end, first line)`` of an uncompressed file: only the lines that start at a byte
    offset in ``[start, end)`` (``line_spans`` plans them; ``first line`` is the number of the line at
    ``start``); the header, if any, is read first whatever the span.
    """
    fmt = fmt or TsvFormat()
    stats = stats if stats is not None else Counter()
    path = str(path)
    col = {name: fmt.columns.index(name) for name in SPECIAL_COLUMNS if name in fmt.columns}
    i_src, i_tgt = col["src"], col["tgt"]
    i_src_lang, i_tgt_lang = col.get("src_lang"), col.get("tgt_lang")
    width = len(fmt.columns)
    split = _quoted_split if fmt.quoting else _plain_split

    cache: dict[tuple[str, str], LanguagePair] = {}

    def languages(a: str, b: str) -> LanguagePair:
        lp = cache.get((a, b))
        if lp is None:
            lp = cache[(a, b)] = LanguagePair.of(a, b)  # raises UnknownLanguage
        return lp

    lineno = 0
    with open_bytes(path) as f:
        lines = iter_lines(f, path)
        if fmt.header:
            first = next(lines, None)
            if first is None:
                raise ReaderError(path, "empty file")
            lineno = 1
            head = _header(path, first, split, width)
            src_lang = src_lang if src_lang is not None or i_src_lang is not None else head[i_src].strip()
            tgt_lang = tgt_lang if tgt_lang is not None or i_tgt_lang is not None else head[i_tgt].strip()
        for side, given, per_row in (("src", src_lang, i_src_lang), ("tgt", tgt_lang, i_tgt_lang)):
            if given is None and per_row is None:
                raise ReaderError(path, f"no language for the {side} column: pass {side}_lang=, add a "
                                        f"{side}_lang column or read the header (TsvFormat(header=True))")
            if given is not None and per_row is None:
                try:
                    normalize(given)
                except UnknownLanguage as e:
                    raise ReaderError(path, f"{side} language: {e}", 1 if fmt.header else None) from None
        if span is not None:
            start, end, first_line = span
            if start > 0:
                lineno = first_line - 1
            lines = iter_lines(read_span(f, max(start, f.tell()), end), path)

        for raw in lines:
            lineno += 1
            stats["lines"] += 1
            try:
                text = decode(raw)
            except UnicodeDecodeError as e:
                stats[INVALID_UTF8] += 1
                yield ReadReject(path, lineno, INVALID_UTF8, utf8_error(e), recover(raw))
                continue
            fields = split(text)
            if fields is None or len(fields) != width:
                stats[MALFORMED_RECORD] += 1
                what = "unbalanced quotes" if fields is None else f"{len(fields)} fields, expected {width} {fmt.columns}"
                yield ReadReject(path, lineno, MALFORMED_RECORD, what, text)
                continue
            a = fields[i_src_lang] if i_src_lang is not None else src_lang
            b = fields[i_tgt_lang] if i_tgt_lang is not None else tgt_lang
            try:
                lp = languages(a, b)
            except UnknownLanguage as e:
                stats[UNKNOWN_LANGUAGE] += 1
                yield ReadReject(path, lineno, UNKNOWN_LANGUAGE, str(e), text)
                continue
            stats["pairs"] += 1
            yield lp.pair(fields[i_src], fields[i_tgt], origin=path, line=lineno, source="tsv")
    if span is not None:
        return  # a part of a file larger than one span (line_spans): not empty, and may hold the header only
    if lineno == 0:
        raise ReaderError(path, "empty file")
    if lineno == 1 and fmt.header:
        raise ReaderError(path, "empty file: a header and no records")


def _plain_split(text: str) -> list[str]:
    return text.split("\t")


def _quoted_split(text: str) -> list[str] | None:
    try:
        return next(csv.reader([text], delimiter="\t", quotechar='"', strict=True), [""])
    except csv.Error:
        return None


def _header(path: str, raw: bytes, split, width: int) -> list[str]:
    try:
        fields = split(decode(raw))
    except UnicodeDecodeError as e:
        raise ReaderError(path, f"header: {utf8_error(e)}", 1) from None
    if fields is None or len(fields) != width:
        raise ReaderError(path, f"header has {len(fields or [])} fields, expected {width}", 1)
    return fields
