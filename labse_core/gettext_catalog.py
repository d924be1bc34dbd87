"""Read gettext catalogs (``.po`` text and ``.mo`` binary) and turn them into translation pairs.

Pure functions, no Beam: ``read_catalog`` parses a file into entries, ``catalog_pairs`` applies the
pairing policy below. Malformed input raises ``CatalogError`` naming the file and the line (``.po``)
or the entry/byte offset (``.mo``).

Pairing policy (what a gettext entry contributes to a parallel corpus):

- **header** (``msgid ""``): metadata, never a pair. Its ``Language``, ``Plural-Forms`` and charset
  are used to read the rest of the catalog.
- **fuzzy** (``#, fuzzy``): a translator marked the translation as unchecked; skipped by default
  (``include_fuzzy=True`` keeps them). ``.mo`` files never contain fuzzy entries.
- **untranslated** (empty ``msgstr``): skipped.
- **obsolete** (``#~`` entries of ``.po`` files): skipped; they no longer match the program's text.
- **message context** (``msgctxt``): kept in the ``context`` column; the same English string under
  two contexts is two entries and may have two translations. Context is never part of the text.
- **plural forms** (``msgid_plural`` + ``msgstr[i]``): two pairs at most. The English singular is
  paired with the form the catalog's ``Plural-Forms`` rule selects for n=1, the English plural with
  the form it selects for n=2 (the smallest count for which English uses the plural). Other forms
  (e.g. the Russian genitive plural for n=5) have no English text of their own and are not paired.
  A missing rule means gettext's default ``n != 1``. An invalid one (a syntax error, or a form index
  >= nplurals for some n, e.g. ``nplurals=1; plural=n>5 ? 3 : 0``) makes the catalog's plural
  entries unpairable: they are counted and skipped (the prepare stage rejects them with reason
  ``invalid_plural_forms``); its singular entries are unaffected.
"""

from __future__ import annotations

import functools
import gettext
import os
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from labse_core.errors import InputFileError

MO_MAGIC_LE = 0x950412DE
MO_MAGIC_BE = 0xDE120495


class CatalogError(InputFileError):
    """Malformed catalog; ``str()`` is ``path:line: message`` (``path: message`` if no line)."""


@dataclass(frozen=True, slots=True)
class Entry:
    msgid: str
    msgstr: tuple[str, ...]
    """One string, or one per plural form."""
    msgid_plural: str | None = None
    context: str | None = None
    line: int | None = None
    """``.po``: line of the ``msgid`` keyword; ``.mo``: entry index."""
    fuzzy: bool = False
    obsolete: bool = False

    @property
    def is_header(self) -> bool:
        return self.msgid == "" and self.context is None


@dataclass
class Catalog:
    path: str
    format: str  # "po" | "mo"
    entries: list[Entry]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def plural_forms(self) -> str | None:
        return self.headers.get("Plural-Forms")

    @property
    def plural_error(self) -> str | None:
        """Why the ``Plural-Forms`` header cannot be used (None if it is valid or absent)."""
        return plural_forms_error(self.plural_forms)

    @property
    def language(self) -> str | None:
        return self.headers.get("Language") or None


# ------------------------------------------------------------------------------------------------
# .mo
# ------------------------------------------------------------------------------------------------


def read_mo(path: str | os.PathLike[str], data: bytes | None = None) -> Catalog:
    """Parse a compiled catalog (GNU ``.mo``, either byte order)."""
    data = Path(path).read_bytes() if data is None else data
    if len(data) < 28:
        raise CatalogError(path, f"not a .mo file: {len(data)} bytes, shorter than the header")
    (magic,) = struct.unpack("<I", data[:4])
    if magic == MO_MAGIC_LE:
        order = "<"
    elif magic == MO_MAGIC_BE:
        order = ">"
    else:
        raise CatalogError(path, f"not a .mo file: bad magic number 0x{magic:08x}")
    revision, count, orig_off, trans_off = struct.unpack(order + "4I", data[4:20])
    if revision >> 16 not in (0, 1):
        raise CatalogError(path, f"unsupported .mo major revision {revision >> 16}")
    end = len(data)
    if orig_off + 8 * count > end or trans_off + 8 * count > end:
        raise CatalogError(path, f"truncated .mo file: string tables for {count} entries exceed {end} bytes")

    def raw(table: int, i: int) -> bytes:
        length, offset = struct.unpack(order + "2I", data[table + 8 * i : table + 8 * i + 8])
        if offset + length > end:
            raise CatalogError(path, f"entry {i}: string at byte {offset} (+{length}) runs past the end of file")
        return data[offset : offset + length]

    pairs = [(raw(orig_off, i), raw(trans_off, i)) for i in range(count)]
    # The header (empty msgid) names the charset of every other string.
    charset = "utf-8"
    for k, v in pairs:
        if k == b"":
            m = re.search(rb"charset=([A-Za-z0-9_.:-]+)", v)
            if m and m.group(1).lower() not in (b"charset", b"utf-8", b"utf8"):
                charset = m.group(1).decode("ascii")
            break

    entries = []
    headers: dict[str, str] = {}
    for i, (k, v) in enumerate(pairs):
        try:
            ks, vs = k.decode(charset), v.decode(charset)
        except (UnicodeDecodeError, LookupError) as e:
            raise CatalogError(path, f"entry {i}: cannot decode as {charset}: {e}") from None
        context = None
        if "\x04" in ks:
            context, ks = ks.split("\x04", 1)
        msgid, _, plural = ks.partition("\x00")
        entry = Entry(
            msgid=msgid,
            msgid_plural=plural if "\x00" in ks else None,
            msgstr=tuple(vs.split("\x00")),
            context=context,
            line=i,
        )
        if entry.is_header:
            headers = parse_headers(entry.msgstr[0])
        entries.append(entry)
    return Catalog(path=str(path), format="mo", entries=entries, headers=headers)


# ------------------------------------------------------------------------------------------------
# .po
# ------------------------------------------------------------------------------------------------

_KEYWORD_RE = re.compile(r"^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s*(\".*)$")
_STRING_RE = re.compile(r'^"((?:[^"\\]|\\.)*)"\s*$')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "'": "'", "?": "?"}
_ESCAPE_RE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)")


def _unescape(s: str, path, line: int) -> str:
    def repl(m: re.Match[str]) -> str:
        tok = m.group(1)
        if tok in _ESCAPES:
            return _ESCAPES[tok]
        if tok[0] == "x":
            return chr(int(tok[1:], 16))
        if tok[0] in "01234567":
            return chr(int(tok, 8))
        raise CatalogError(path, f"unknown escape sequence \\{tok}", line)

    return _ESCAPE_RE.sub(repl, s) if "\\" in s else s


def _string(text: str, path, line: int) -> str:
    m = _STRING_RE.match(text)
    if not m:
        raise CatalogError(path, f"malformed string literal: {text[:60]!r}", line)
    return _unescape(m.group(1), path, line)


class _PoBuilder:
    """Collects the pieces of one entry; ``finish`` validates and emits it."""

    def __init__(self, path: str):
        self.path = path
        self.reset()

    def reset(self) -> None:
        self.context: str | None = None
        self.msgid: str | None = None
        self.msgid_line: int | None = None
        self.plural: str | None = None
        self.msgstr: dict[int, str] = {}
        self.indexed = False
        self.fuzzy = False
        self.obsolete = False
        self.current: tuple[str, int] | None = None  # (field, plural index) continued by "..." lines
        self.start_line: int | None = None

    @property
    def started(self) -> bool:
        return self.context is not None or self.msgid is not None

    @property
    def has_msgstr(self) -> bool:
        return bool(self.msgstr)

    def append(self, fld: str, idx: int, text: str) -> None:
        if fld == "msgctxt":
            self.context = (self.context or "") + text
        elif fld == "msgid":
            self.msgid = (self.msgid or "") + text
        elif fld == "msgid_plural":
            self.plural = (self.plural or "") + text
        else:
            self.msgstr[idx] = self.msgstr.get(idx, "") + text

    def finish(self, at_line: int) -> Entry | None:
        if not self.started:
            if self.msgstr:
                raise CatalogError(self.path, "msgstr without msgid", self.start_line or at_line)
            self.reset()
            return None
        if self.msgid is None:
            raise CatalogError(self.path, "msgctxt without msgid", self.start_line or at_line)
        if not self.msgstr:
            raise CatalogError(self.path, "msgid without msgstr", self.msgid_line)
        if self.plural is not None:
            if not self.indexed:
                raise CatalogError(self.path, "msgid_plural needs msgstr[0], msgstr[1], ...", self.msgid_line)
            if sorted(self.msgstr) != list(range(len(self.msgstr))):
                raise CatalogError(self.path, f"plural msgstr indices {sorted(self.msgstr)} are not 0..n-1",
                                   self.msgid_line)
        elif self.indexed:
            raise CatalogError(self.path, "msgstr[n] without msgid_plural", self.msgid_line)
        entry = Entry(
            msgid=self.msgid,
            msgid_plural=self.plural,
            msgstr=tuple(self.msgstr[i] for i in sorted(self.msgstr)),
            context=self.context,
            line=self.msgid_line,
            fuzzy=self.fuzzy,
            obsolete=self.obsolete,
        )
        self.reset()
        return entry


def _po_lines(path, data: bytes) -> Iterator[tuple[int, str]]:
    m = re.search(rb'charset=([A-Za-z0-9_.:-]+)', data[:4096])
    charset = "utf-8"
    if m and m.group(1).lower() not in (b"charset", b"utf-8", b"utf8"):
        charset = m.group(1).decode("ascii")
    for lineno, raw in enumerate(data.splitlines(), 1):
        try:
            yield lineno, raw.decode(charset)
        except UnicodeDecodeError as e:
            raise CatalogError(path, f"invalid {charset} at byte {e.start} of the line", lineno) from None
        except LookupError:
            raise CatalogError(path, f"unknown charset {charset!r} in the header", lineno) from None


def read_po(path: str | os.PathLike[str], data: bytes | None = None) -> Catalog:
    """Parse a ``.po`` file; raises ``CatalogError`` with the line of the first problem."""
    path = str(path)
    data = Path(path).read_bytes() if data is None else data
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    builder = _PoBuilder(path)
    entries: list[Entry] = []
    lineno = 0

    def emit(at: int) -> None:
        entry = builder.finish(at)
        if entry is not None:
            entries.append(entry)

    for lineno, line in _po_lines(path, data):
        text = line.strip()
        obsolete = False
        if text.startswith("#~"):
            obsolete = True
            text = text[2:].strip()
            if text.startswith("|"):  # previous-msgid of an obsolete entry
                continue
        elif text.startswith("#"):
            if builder.has_msgstr:  # a comment after msgstr opens the next entry
                emit(lineno)
            if text.startswith("#,"):
                flags = {f.strip() for f in text[2:].split(",")}
                builder.fuzzy = builder.fuzzy or "fuzzy" in flags
            if builder.start_line is None:
                builder.start_line = lineno
            continue
        if not text:
            if builder.has_msgstr:
                emit(lineno)
            continue
        m = _KEYWORD_RE.match(text)
        if m:
            keyword, index, rest = m.group(1), m.group(2), m.group(3)
            fld = "msgstr" if keyword.startswith("msgstr") else keyword
            if fld in ("msgctxt", "msgid") and builder.has_msgstr:
                emit(lineno)
            if builder.start_line is None:
                builder.start_line = lineno
            if fld == "msgctxt" and (builder.msgid is not None or builder.context is not None):
                raise CatalogError(path, "msgctxt must come before msgid, once", lineno)
            if fld == "msgid":
                if builder.msgid is not None:
                    raise CatalogError(path, "msgid without msgstr (a second msgid follows)", builder.msgid_line)
                builder.msgid_line = lineno
            if fld == "msgid_plural" and (builder.msgid is None or builder.plural is not None or builder.msgstr):
                raise CatalogError(path, "msgid_plural must follow msgid, once", lineno)
            if fld == "msgstr":
                if builder.msgid is None:
                    raise CatalogError(path, "msgstr without msgid", lineno)
                idx = int(index) if index is not None else 0
                if index is not None:
                    builder.indexed = True
                if idx in builder.msgstr:
                    raise CatalogError(path, f"duplicate msgstr[{idx}]", lineno)
                builder.msgstr[idx] = ""
            else:
                idx = 0
            builder.obsolete = builder.obsolete or obsolete
            builder.current = (fld, idx)
            builder.append(fld, idx, _string(rest, path, lineno))
        elif text.startswith('"'):
            if builder.current is None:
                raise CatalogError(path, "string continuation without a keyword before it", lineno)
            fld, idx = builder.current
            builder.append(fld, idx, _string(text, path, lineno))
        else:
            raise CatalogError(path, f"unexpected text: {text[:60]!r}", lineno)
    emit(lineno + 1)
    if not entries and not data.strip():
        raise CatalogError(path, "empty file")
    headers = next((parse_headers(e.msgstr[0]) for e in entries if e.is_header and not e.obsolete), {})
    return Catalog(path=path, format="po", entries=entries, headers=headers)


# ------------------------------------------------------------------------------------------------
# both
# ------------------------------------------------------------------------------------------------


def parse_headers(text: str) -> dict[str, str]:
    headers = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip()] = value.strip()
    return headers


def read_catalog(path: str | os.PathLike[str]) -> Catalog:
    suffix = Path(path).suffix.lower()
    if suffix == ".mo" or suffix == ".gmo":
        return read_mo(path)
    if suffix in (".po", ".pot"):
        return read_po(path)
    raise CatalogError(path, f"not a gettext catalog (expected .po or .mo, got {suffix or 'no suffix'!r})")


INVALID_PLURAL_FORMS = "invalid_plural_forms"
"""Reject reason (and ingest counter) for the plural pairs of a catalog whose rule is unusable."""

# Counts at which a rule is evaluated to check it: every rule in use is periodic in n % 10 / n % 100
# past a small n, so 0..199 plus a few large counts covers them.
_PLURAL_PROBES = (*range(200), 1000, 1001, 10**6, 10**9)


@functools.lru_cache(maxsize=256)
def _parse_plural_forms(plural_forms: str) -> tuple[Callable[[int], int] | None, int, str | None]:
    """``(rule, nplurals, error)``; catalogs share a handful of headers, so this is cached."""
    m_n = re.search(r"nplurals\s*=\s*(\d+)", plural_forms)
    m_p = re.search(r"plural\s*=\s*([^;]+)", plural_forms)
    if not m_n or not m_p:
        return None, 2, f"Plural-Forms {plural_forms!r} lacks nplurals=N or plural=EXPR"
    nplurals = int(m_n.group(1))
    try:
        raw = gettext.c2py(m_p.group(1).strip())
    except (ValueError, SyntaxError, RecursionError) as e:
        return None, nplurals, f"Plural-Forms {plural_forms!r}: syntax error in the plural expression ({e})"
    if nplurals < 1:
        return None, nplurals, f"Plural-Forms {plural_forms!r}: nplurals must be at least 1"
    for n in _PLURAL_PROBES:
        try:
            form = int(raw(n))
        except (ArithmeticError, ValueError, RecursionError) as e:
            return None, nplurals, f"Plural-Forms {plural_forms!r}: plural({n}) fails ({e})"
        if not 0 <= form < nplurals:
            return None, nplurals, f"Plural-Forms {plural_forms!r}: plural({n}) = {form} is not below nplurals={nplurals}"
    return (lambda k: int(raw(k))), nplurals, None


def plural_forms_error(plural_forms: str | None) -> str | None:
    """Why a ``Plural-Forms`` header is unusable (syntax error, or a form index >= nplurals for some n);
    None if it is valid or absent (no header: gettext's default ``n != 1`` applies)."""
    return _parse_plural_forms(plural_forms)[2] if plural_forms else None


def plural_rule(plural_forms: str | None) -> tuple[Callable[[int], int], int, bool]:
    """``(n -> form index, nplurals, ok)`` from a ``Plural-Forms`` header; ``ok`` False if it fell back
    to gettext's default ``n != 1`` (no header, or an invalid one: ``plural_forms_error`` says why)."""
    if plural_forms:
        rule, nplurals, error = _parse_plural_forms(plural_forms)
        if rule is not None:
            return rule, nplurals, True
    return (lambda k: int(k != 1)), 2, False


def locale_from_path(path: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """``(locale, domain)`` from ``<locale>/LC_MESSAGES/<domain>.mo``, or ``(<stem>, None)`` for ``de.po``."""
    p = Path(path)
    if p.parent.name == "LC_MESSAGES":
        return p.parent.parent.name, p.stem
    return (p.stem if re.match(r"^[A-Za-z]{2,3}([_@.-][A-Za-z0-9@._-]+)?$", p.stem) else None), None


@dataclass(frozen=True, slots=True)
class PairRow:
    src_text: str
    tgt_text: str
    context: str | None
    line: int | None
    plural_form: int | None


def catalog_pairs(
    catalog: Catalog, *, include_fuzzy: bool = False, stats: Counter | None = None, keep_invalid_plurals: bool = False
) -> Iterator[PairRow]:
    """Apply the pairing policy of this module's docstring; count every decision in ``stats``.

    A catalog whose ``Plural-Forms`` is invalid (``Catalog.plural_error``) cannot say which form is
    the singular: its plural entries are counted (``catalogs_invalid_plural_forms``,
    ``skipped_invalid_plural_forms``) and not paired, or, with ``keep_invalid_plurals``, paired by
    gettext's default rule for the caller to reject with reason ``invalid_plural_forms``.
    """
    stats = stats if stats is not None else Counter()
    rule, nplurals, ok = plural_rule(catalog.plural_forms)
    invalid = catalog.plural_error is not None
    has_plurals = any(e.msgid_plural is not None for e in catalog.entries)
    if not ok and has_plurals:
        stats["plural_rule_fallback"] += 1
    if invalid and has_plurals:
        stats["catalogs_invalid_plural_forms"] += 1
    for e in catalog.entries:
        stats["entries"] += 1
        if e.is_header:
            stats["skipped_header"] += 1
            continue
        if e.obsolete:
            stats["skipped_obsolete"] += 1
            continue
        if e.fuzzy and not include_fuzzy:
            stats["skipped_fuzzy"] += 1
            continue
        if e.msgid_plural is None:
            if not e.msgstr[0]:
                stats["skipped_untranslated"] += 1
                continue
            stats["pairs"] += 1
            yield PairRow(e.msgid, e.msgstr[0], e.context, e.line, None)
            continue
        if invalid and not keep_invalid_plurals:
            stats["skipped_invalid_plural_forms"] += 1
            continue
        emitted = 0
        for english, n in ((e.msgid, 1), (e.msgid_plural, 2)):
            form = rule(n)
            if not 0 <= form < len(e.msgstr):
                stats["skipped_plural_form_missing"] += 1
                continue
            if not e.msgstr[form]:
                continue
            emitted += 1
            stats["pairs"] += 1
            stats["plural_pairs"] += 1
            yield PairRow(english, e.msgstr[form], e.context, e.line, form)
        if not emitted:
            stats["skipped_untranslated"] += 1
