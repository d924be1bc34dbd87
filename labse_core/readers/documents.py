"""Folders of documents as sentences with their place: the input of document mining (``labse mine`` with
a folder on either side).

    docs = read_documents("lake/docs/manpages/de", lang="de")
    docs.sentences[i], docs.doc_ids[docs.doc_of[i]], docs.position[i]   # text, document, place in it

A document is a file under the folder (recursively, hidden files and folders left out), read by its name:

- ``.html``/``.htm``/``.xhtml``: the text of the block elements (``p``, ``li``, headings, table cells, ...),
  without ``script``/``style``/``head``; the page's canonical URL (``<link rel=canonical>`` or
  ``og:url``) is kept as the document's URL;
- man pages (``ls.1``, ``printf.3``, ``git-log.1.gz``, any name ending in a section number, or a file whose
  text starts with a groff request): the paragraphs, headings and tags ``labse_core.text.groff`` parses,
  without code (no-fill blocks), synopses and tables;
- anything else (``.txt``, ``.md``, no suffix): plain text, paragraphs separated by blank lines;
- ``.gz`` on any of these: read through gzip.

Each paragraph is cut into sentences by ``labse_core.text.sentences.split_document_sentences`` (the
splitter chosen by measurement, docs/benchmarks.md). The document id is the file's path below the folder
without ``.gz`` (``man1/ls.1``), so the same page in two language folders has the same id: that is how
``labse mine`` pairs documents by name.

Bytes are read as UTF-8 (a BOM dropped); a document that is not UTF-8 is decoded with the encoding
``charset_normalizer`` finds, unless it mixes UTF-8 with another encoding (both kinds of bytes in one
file), which no decoding reads right. Documents that cannot be used are counted rejects with a reason
(``empty``, ``binary``, ``mixed-encodings``, ``unknown-encoding``, ``unreadable-gzip``, ``too-large``,
``man-link``, ``man-mdoc``, ``no-text``), never an exception; a folder with no usable document at all is
one ``DocumentError`` line.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from labse_core.text.groff import ManPageError, join_lines, parse_man

MAX_DOCUMENT_BYTES = 64 << 20
"""Larger documents (after gzip) are rejected as ``too-large``: a runaway file, not a document."""

_MAN_NAME = re.compile(r"\.[1-9][a-z0-9]*$", re.I)
_HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
_GROFF_START = re.compile(r"^(\.\\\"|'\\\"|\.(TH|SH|so|Dd|de|ds|ig)\b)")
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")
_MAN_KINDS = {"SH", "SS", "P", "TP", "IP"}
"""Blocks of a man page that hold sentences; ``nf`` (code), ``SY`` (synopsis) and ``TS`` (tables) do not."""


class DocumentError(ValueError):
    """A documents folder that cannot be used at all (one line: the folder and why)."""


@dataclass
class DocumentSet:
    """The sentences of every usable document under one folder, in document order then position."""

    root: Path
    lang: str
    doc_ids: list[str] = field(default_factory=list)
    """Path below the root without ``.gz``, one per document that gave sentences (sorted)."""
    urls: list[str | None] = field(default_factory=list)
    """Each document's canonical URL (HTML pages that name one), else None."""
    sentences: list[str] = field(default_factory=list)
    doc_of: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    """(n,) index into ``doc_ids`` of each sentence."""
    position: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    """(n,) place of each sentence in its document (0, 1, ...)."""
    rejects: Counter = field(default_factory=Counter)
    """Documents not used, per reason."""
    examples: dict[str, str] = field(default_factory=dict)
    """One document per reject reason, with the detail (for the run's summary)."""

    def subset(self, docs: Sequence[int]) -> DocumentSet:
        """The same folder with only the documents ``docs`` (indices, any order; kept in document order)."""
        keep = sorted(set(docs))
        rows = [self.rows_of(d) for d in keep]
        idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        new_doc = np.concatenate([np.full(len(r), i, np.int32) for i, r in enumerate(rows)]) if rows else np.zeros(0, np.int32)
        return DocumentSet(self.root, self.lang, [self.doc_ids[d] for d in keep], [self.urls[d] for d in keep],
                           [self.sentences[i] for i in idx.tolist()], new_doc, self.position[idx].copy(),
                           Counter(self.rejects), dict(self.examples))

    def rows_of(self, doc: int) -> np.ndarray:
        """The sentence rows of document ``doc`` (rows are grouped by document)."""
        lo, hi = np.searchsorted(self.doc_of, [doc, doc + 1])
        return np.arange(lo, hi, dtype=np.int64)


class _Reject(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# ---------------------------------------------------------------------------------------------------
# Bytes to text


def decode_document(data: bytes) -> str:
    """A document's text from its bytes (module docstring: UTF-8, else the detected encoding); ``_Reject``
    for empty, binary, mixed or undetectable bytes."""
    if not data.strip():
        raise _Reject("empty")
    if b"\x00" in data[:65536]:
        raise _Reject("binary", "NUL bytes")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = e.start
    if _UTF8_MULTIBYTE.search(data):
        raise _Reject("mixed-encodings", f"UTF-8 text with a non-UTF-8 byte at offset {bad}")
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None:
        raise _Reject("unknown-encoding", f"not UTF-8 (byte {bad}) and no encoding detected")
    return str(best)


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(MAX_DOCUMENT_BYTES + 1)
    if data[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                data = gz.read(MAX_DOCUMENT_BYTES + 1)
        except (OSError, EOFError) as e:
            raise _Reject("unreadable-gzip", str(e)) from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise _Reject("too-large", f"over {MAX_DOCUMENT_BYTES >> 20} MiB")
    return data


# ---------------------------------------------------------------------------------------------------
# Text to paragraphs


class _HtmlText(HTMLParser):
    """Paragraphs of an HTML page: text between block-element boundaries."""

    BLOCKS = frozenset("p div li ul ol dl dt dd h1 h2 h3 h4 h5 h6 td th tr table section article header footer "
                       "nav aside blockquote pre figcaption caption title br hr main form fieldset legend".split())
    SKIP = frozenset("script style head noscript template svg".split())

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.url: str | None = None
        self._buf: list[str] = []
        self._skip = 0

    def _flush(self) -> None:
        text = join_lines(self._buf)
        if text:
            self.paragraphs.append(text)
        self._buf = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "link" and (a.get("rel") or "").lower() == "canonical" and a.get("href"):
            self.url = self.url or a["href"]
        elif tag == "meta" and a.get("property") == "og:url" and a.get("content"):
            self.url = self.url or a["content"]
        if tag in self.SKIP:
            self._skip += 1
        elif tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._buf.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def html_paragraphs(text: str) -> tuple[list[str], str | None]:
    """The paragraphs of an HTML page and its canonical URL (None when it names none)."""
    p = _HtmlText()
    p.feed(text)
    p.close()
    return p.paragraphs, p.url


def text_paragraphs(text: str) -> list[str]:
    """Paragraphs of plain text: blocks separated by blank lines, each block's lines joined."""
    out = []
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        joined = join_lines(block.split("\n"))
        if joined:
            out.append(joined)
    return out


def man_paragraphs(text: str, origin: str) -> list[str]:
    """The sentence-bearing blocks of a man page (module docstring); ``_Reject`` for a link or mdoc page."""
    try:
        blocks = parse_man(text, origin)
    except ManPageError as e:
        msg = str(e)
        reason = "man-link" if "(.so)" in msg else "man-mdoc" if "mdoc" in msg else "no-text"
        raise _Reject(reason, msg.split(": ", 1)[-1]) from None
    return [b.text for b in blocks if b.kind in _MAN_KINDS and b.text.strip()]


def document_kind(name: str, text: str) -> str:
    """``html``, ``man`` or ``text``, from the file name (without ``.gz``) and, for names that do not say,
    the first line."""
    suffix = Path(name).suffix.lower()
    if suffix in _HTML_SUFFIXES:
        return "html"
    if _MAN_NAME.search(name) or _GROFF_START.match(text.lstrip("\ufeff")[:200]):
        return "man"
    return "text"


def document_paragraphs(path: Path, doc_id: str) -> tuple[list[str], str | None]:
    """The paragraphs of one document file and its URL; ``_Reject`` when it cannot be used."""
    text = decode_document(_read_bytes(path))
    kind = document_kind(doc_id, text)
    if kind == "html":
        paras, url = html_paragraphs(text)
    elif kind == "man":
        paras, url = man_paragraphs(text, str(path)), None
    else:
        paras, url = text_paragraphs(text), None
    if not paras:
        raise _Reject("no-text")
    return paras, url


# ---------------------------------------------------------------------------------------------------
# A folder


def document_files(root: Path, aliases: list[Path] | None = None) -> list[tuple[str, Path]]:
    """(document id, path) of every file under ``root``, sorted by id; hidden files and folders left out,
    and so are symbolic links to a file under ``root`` (an alias: the document is read under its own name),
    which go to ``aliases``. The id is the path below ``root`` without ``.gz``."""
    aliases = aliases if aliases is not None else []
    root_real = root.resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.startswith("_"))
        for name in filenames:
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if not p.is_file():
                continue
            if p.is_symlink() and root_real in p.resolve().parents:
                aliases.append(p)  # another name of a document read under its own name (man page aliases)
                continue
            rel = p.relative_to(root).as_posix()
            out.append((rel[:-3] if rel.endswith(".gz") else rel, p))
    return sorted(out)


def read_documents(root: str | os.PathLike[str], lang: str) -> DocumentSet:
    """Every usable document under ``root`` as sentences (module docstring). ``DocumentError`` when the
    folder does not exist or holds no usable document."""
    from labse_core.text.sentences import split_document_sentences

    root = Path(root)
    if not root.is_dir():
        raise DocumentError(f"{root}: not a folder of documents")
    aliases: list[Path] = []
    files = document_files(root, aliases)
    if not files:
        raise DocumentError(f"{root}: no documents in this folder (HTML, text or man pages; .gz too)")
    out = DocumentSet(root=root, lang=lang)
    if aliases:
        out.rejects["alias-link"] = len(aliases)
        out.examples["alias-link"] = f"{aliases[0]} -> {aliases[0].resolve()}"
    doc_of: list[int] = []
    position: list[int] = []
    seen_ids: set[str] = set()
    for doc_id, path in files:
        if doc_id in seen_ids:  # ls.1 and ls.1.gz: the same document twice
            out.rejects["duplicate-id"] += 1
            out.examples.setdefault("duplicate-id", f"{path}: {doc_id} is already read")
            continue
        seen_ids.add(doc_id)
        try:
            paras, url = document_paragraphs(path, doc_id)
        except _Reject as r:
            out.rejects[r.reason] += 1
            out.examples.setdefault(r.reason, f"{path}: {r.detail}" if r.detail else str(path))
            continue
        except OSError as e:
            out.rejects["unreadable"] += 1
            out.examples.setdefault("unreadable", f"{path}: {e.strerror or e}")
            continue
        sentences = [s for p in paras for s in split_document_sentences(p, lang)]
        if not sentences:
            out.rejects["no-text"] += 1
            continue
        d = len(out.doc_ids)
        out.doc_ids.append(doc_id)
        out.urls.append(url)
        out.sentences += sentences
        doc_of += [d] * len(sentences)
        position += range(len(sentences))
    if not out.sentences:
        why = ", ".join(f"{n} {r}" for r, n in out.rejects.most_common())
        raise DocumentError(f"{root}: no usable document ({len(files)} files: {why})")
    out.doc_of = np.asarray(doc_of, dtype=np.int32)
    out.position = np.asarray(position, dtype=np.int32)
    return out


# ---------------------------------------------------------------------------------------------------
# Pairs of documents


def name_key(doc_id: str, lang: str) -> str:
    """A document id without its language tag before the last extension (``guide.de.html``,
    ``guide_de.txt``, ``guide-de.md`` -> ``guide.html`` ...), so translations named that way pair up."""
    if not lang or lang == "und":
        return doc_id
    tags = {lang.lower(), lang.split("-")[0].split("_")[0].lower()}
    head, _, name = doc_id.rpartition("/")
    m = re.match(r"^(.*)[._-]([A-Za-z]{2,3}(?:[_-][A-Za-z]{2,4})?)(\.[^.]+)$", name)
    if m and m.group(2).lower().replace("-", "_") in tags | {t.replace("-", "_") for t in tags}:
        name = m.group(1) + m.group(3)
    return f"{head}/{name}" if head else name


def pair_by_name(src: DocumentSet, tgt: DocumentSet) -> list[tuple[int, int]]:
    """(source doc, target doc) for every document id both folders hold (``man1/ls.1`` in both), also once
    each side's language tag is taken out of the file name (``name_key``: ``a.de.html`` and ``a.en.html``),
    and for every canonical URL both name."""
    tgt_ids = {d: j for j, d in enumerate(tgt.doc_ids)}
    for j, d in enumerate(tgt.doc_ids):
        tgt_ids.setdefault(name_key(d, tgt.lang), j)
    tgt_urls = {u: j for j, u in enumerate(tgt.urls) if u}
    pairs = set()
    for i, d in enumerate(src.doc_ids):
        if d in tgt_ids:
            pairs.add((i, tgt_ids[d]))
        elif (key := name_key(d, src.lang)) in tgt_ids:
            pairs.add((i, tgt_ids[key]))
        u = src.urls[i]
        if u and u in tgt_urls:
            pairs.add((i, tgt_urls[u]))
    return sorted(pairs)


def pair_from_file(src: DocumentSet, tgt: DocumentSet, path: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """Document pairs listed in a TSV file, one ``source<TAB>target`` per line (document ids or URLs);
    ``DocumentError`` naming the file and line for a line that names a document neither folder holds."""
    def index(ds: DocumentSet) -> dict[str, int]:
        idx = {d: j for j, d in enumerate(ds.doc_ids)}
        idx.update({u: j for j, u in enumerate(ds.urls) if u})
        return idx

    si, ti = index(src), index(tgt)
    pairs = set()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DocumentError(f"{path}: cannot read the document pairs ({getattr(e, 'strerror', None) or e})") from None
    for no, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DocumentError(f"{path}:{no}: expected 'source<TAB>target' (document ids or URLs)")
        a, b = parts[0].strip(), parts[1].strip()
        if a not in si:
            raise DocumentError(f"{path}:{no}: no source document {a!r} in {src.root}")
        if b not in ti:
            raise DocumentError(f"{path}:{no}: no target document {b!r} in {tgt.root}")
        pairs.add((si[a], ti[b]))
    if not pairs:
        raise DocumentError(f"{path}: no document pairs in this file")
    return sorted(pairs)
