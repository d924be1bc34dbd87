"""TMX translation memories (OPUS style, TMX 1.4), streamed in constant memory.

    <tmx version="1.4"><header srclang="de" .../>
      <body><tu><tuv xml:lang="de"><seg>Hallo</seg></tuv><tuv xml:lang="en"><seg>Hello</seg></tuv></tu>...

Streaming: an ``ElementTree.XMLPullParser`` (the parser under ``iterparse``) is fed one line at a
time and every ``<tu>`` is cleared and detached from ``<body>`` once read, so memory holds one
``<tu>`` whatever the file size. Feeding by line (lines over 64 KiB in pieces) is what gives each
record its line number: ``RawPair.line`` is the line of the ``<tu>`` start tag; the ``<tu>``'s index
in the file (1-based) is in every reject's ``detail``.

Languages: ``xml:lang`` (TMX 1.4) or ``lang`` (TMX 1.1) on each ``<tuv>``, normalized with
``langcodes``; the header's ``srclang`` is not needed. The pair read is ``langs`` if given, else the
two languages of the first ``<tu>`` that has exactly two (in their order there). A ``<tu>`` with the
pair plus other languages yields the pair; one without both sides is ``missing_side``; one with a
requested language twice (``de-DE`` and ``de-AT``) is ``duplicate_language``; before a pair is known,
a ``<tu>`` with three or more languages is ``ambiguous_languages``. A ``<tuv>`` without a language
or a ``<seg>`` is ``malformed_record`` and one with an unmappable code ``unknown_language``, when it
could have been one of the two sides.

Inline markup inside ``<seg>`` is flattened deliberately:
- kept: the text of ``<seg>`` and of ``<hi>`` (highlighted text is sentence text), and the text
  after every inline element (its tail);
- dropped: the content of ``<bpt>``, ``<ept>``, ``<it>``, ``<ph>`` and ``<ut>``, which is native code
  of the source document (``<b>``, ``{1}``, ``%s``), and of ``<sub>``, a separate flow of text
  (a footnote, an alt text) that is not part of the sentence.
Leading and trailing whitespace of a segment is stripped (pretty-printing); inner whitespace is kept.

Errors: malformed XML (and invalid UTF-8, which XML does not allow) raises ``ReaderError`` with the
parser's line. Pairs before the error have already been yielded: a caller that wants all-or-nothing
per file must hold them back until the generator finishes.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator

from labse_core.langcodes import UnknownLanguage, normalize
from labse_core.readers._files import GZIP_ERRORS, open_bytes
from labse_core.readers.records import (
    AMBIGUOUS_LANGUAGES,
    DUPLICATE_LANGUAGE,
    MALFORMED_RECORD,
    MISSING_SIDE,
    UNKNOWN_LANGUAGE,
    LanguagePair,
    RawPair,
    ReaderError,
    ReadReject,
)

PathLike = str | os.PathLike[str]
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
DROPPED_INLINE = frozenset({"bpt", "ept", "it", "ph", "ut", "sub"})
"""Inline elements whose content is not sentence text (their tail is)."""
_MAX_FEED = 1 << 16
_POSITION_RE = re.compile(r": line \d+, column (\d+)$")


def read_tmx(
    path: PathLike, langs: tuple[str, str] | None = None, *, stats: Counter | None = None
) -> Iterator[RawPair | ReadReject]:
    """Pairs from the ``<tu>`` elements of ``path`` (plain or gzip), English oriented to ``src``.

    ``langs``: the two languages to read (any spelling ``langcodes`` understands); see the module
    docstring for the default. ``stats`` counts ``tus``, ``pairs`` and each reject reason.
    """
    stats = stats if stats is not None else Counter()
    path = str(path)
    want: tuple[str, str] | None = None
    if langs is not None:
        try:
            want = (normalize(langs[0]), normalize(langs[1]))
        except UnknownLanguage as e:
            raise ReaderError(path, f"requested languages {langs}: {e}") from None

    parser = ET.XMLPullParser(events=("start", "end"))
    cache: dict[tuple[str, str], LanguagePair] = {}
    root = body = None
    lineno, tu_index, tu_line = 1, 0, 0
    seen_bytes = False

    def handle(events) -> Iterator[RawPair | ReadReject]:
        nonlocal root, body, tu_index, tu_line, want
        for event, el in events:
            tag = _local(el.tag)
            if event == "start":
                if root is None:
                    root = el
                    if tag != "tmx":
                        raise ReaderError(path, f"not a TMX file: the root element is <{tag}>", lineno)
                elif tag == "body":
                    body = el
                elif tag == "tu":
                    tu_index += 1
                    tu_line = lineno
                continue
            if tag != "tu":
                continue
            stats["tus"] += 1
            record, want = _tu_record(el, want, cache, path, tu_line, tu_index)
            stats["pairs" if isinstance(record, RawPair) else record.reason] += 1
            yield record
            el.clear()
            (body if body is not None else root).clear()  # drop the finished <tu> from its parent

    try:
        with open_bytes(path) as f:
            while True:
                try:
                    chunk = f.readline(_MAX_FEED)
                except GZIP_ERRORS as e:
                    raise ReaderError(path, f"corrupt or truncated gzip stream: {e}", lineno) from None
                if not chunk:
                    break
                seen_bytes = seen_bytes or bool(chunk.strip())
                parser.feed(chunk)
                yield from handle(parser.read_events())  # a parse error is raised here, after earlier events
                if chunk.endswith(b"\n"):
                    lineno += 1
            if not seen_bytes:
                raise ReaderError(path, "empty file")
            parser.close()
            yield from handle(parser.read_events())
    except ET.ParseError as e:
        line, _ = e.position
        message = _POSITION_RE.sub(r" at column \1", str(e))
        raise ReaderError(path, f"malformed XML: {message}", line) from None
    if tu_index == 0:
        raise ReaderError(path, "empty file: no <tu> elements")


def _local(tag: str) -> str:
    return tag.rpartition("}")[2] if tag[:1] == "{" else tag


def flatten_seg(seg: ET.Element) -> str:
    """The sentence text of a ``<seg>``: see the module docstring for what inline markup keeps."""
    parts = [seg.text or ""]
    for child in seg:
        if _local(child.tag) not in DROPPED_INLINE:
            parts.append(flatten_seg(child))
        parts.append(child.tail or "")
    return "".join(parts)


def _tu_record(tu, want, cache, path, line, index) -> tuple[RawPair | ReadReject, tuple[str, str] | None]:
    """One ``<tu>`` -> a pair or a reject, and the language pair in force after it."""
    variants: dict[str, list[tuple[str, str]]] = {}  # canonical -> [(code as written, text)]
    broken: list[tuple[str, str]] = []  # (reason, detail) of <tuv>s that could not be read
    for tuv in tu:
        if _local(tuv.tag) != "tuv":
            continue
        code = tuv.get(XML_LANG) or tuv.get("lang")
        seg = next((c for c in tuv if _local(c.tag) == "seg"), None)
        if not code:
            broken.append((MALFORMED_RECORD, "a <tuv> without xml:lang"))
        elif seg is None:
            broken.append((MALFORMED_RECORD, f"the {code!r} <tuv> has no <seg>"))
        else:
            try:
                canon = normalize(code)
            except UnknownLanguage as e:
                broken.append((UNKNOWN_LANGUAGE, str(e)))
                continue
            variants.setdefault(canon, []).append((code, flatten_seg(seg).strip()))

    def reject(reason: str, detail: str):
        raw = ET.tostring(tu, encoding="unicode")
        return ReadReject(path, line, reason, f"<tu> #{index}: {detail}", raw), want

    found = list(variants)
    if want is None:
        if broken:
            return reject(*broken[0])
        if len(found) > 2:
            return reject(AMBIGUOUS_LANGUAGES, f"languages {found} and no pair requested")
        if len(found) < 2:
            return reject(MISSING_SIDE, f"languages {found}, need two")
        want = (found[0], found[1])
    missing = [lang for lang in want if lang not in variants]
    if missing:
        if broken:
            return reject(*broken[0])
        return reject(MISSING_SIDE, f"no {missing} variant; languages {found}")
    doubled = [lang for lang in want if len(variants[lang]) > 1]
    if doubled:
        return reject(DUPLICATE_LANGUAGE, f"{len(variants[doubled[0]])} variants normalize to {doubled[0]!r}")
    (code_a, text_a), (code_b, text_b) = variants[want[0]][0], variants[want[1]][0]
    lp = cache.get((code_a, code_b))
    if lp is None:
        lp = cache[(code_a, code_b)] = LanguagePair.of(code_a, code_b)
    return lp.pair(text_a, text_b, origin=path, line=line, source="tmx"), want
