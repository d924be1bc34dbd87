"""The Tatoeba v1 test set (LASER release): ``tatoeba.{xxx}-eng.{xxx}`` + ``tatoeba.{xxx}-eng.eng``.

Line i of one file translates line i of the other (read with the Moses reader: one generator over
both files). ``xxx`` is an ISO 639-3 code (``cmn``, ``pes``, ``kzj``), normalized with
``langcodes``; it is kept as ``RawPair.locale``. Languages are listed and selected by file code; a
canonical code (``zh``) selects every file that normalizes to it (``cmn``), should two ever do.

Evaluation data only: ``eval_sentences`` feeds decontamination (every training pair whose side appears
here is removed), which is why it refuses to skip a line it cannot read.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from labse_core.langcodes import UnknownLanguage, normalize
from labse_core.readers.moses import read_moses
from labse_core.readers.records import RawPair, ReaderError, ReadReject

PathLike = str | os.PathLike[str]
FILE_RE = re.compile(r"^tatoeba\.([a-z]{3})-eng\.\1$")


def tatoeba_files(root: PathLike, code: str) -> tuple[Path, Path]:
    """``(xxx file, eng file)`` for the file code ``code``."""
    root = Path(root)
    return root / f"tatoeba.{code}-eng.{code}", root / f"tatoeba.{code}-eng.eng"


def list_languages(root: PathLike) -> list[str]:
    """The file codes (ISO 639-3, as in the file names) that have both files, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ReaderError(root, "not a directory")
    codes = sorted(m[1] for f in root.iterdir() if (m := FILE_RE.match(f.name)))
    codes = [c for c in codes if tatoeba_files(root, c)[1].is_file()]
    if not codes:
        raise ReaderError(root, "not a Tatoeba v1 directory: no tatoeba.xxx-eng.xxx / tatoeba.xxx-eng.eng files")
    return codes


def select_languages(root: PathLike, langs: Iterable[str] | None = None) -> list[str]:
    """File codes for ``langs``: a file code matches itself; other spellings (``de``, ``zh``) match
    every file whose code normalizes to the same language. ``None``: all."""
    available = list_languages(root)
    if langs is None:
        return available
    picked: list[str] = []
    for want in langs:
        if want in available:
            hits = [want]
        else:
            try:
                canon = normalize(want)
            except UnknownLanguage as e:
                raise ReaderError(root, f"language {want!r}: {e}") from None
            hits = [c for c in available if normalize(c) == canon]
        if not hits:
            raise ReaderError(root, f"no Tatoeba files for language {want!r}")
        picked += [c for c in hits if c not in picked]
    return picked


def read_tatoeba(
    root: PathLike, langs: Iterable[str] | None = None, *, stats: Counter | None = None
) -> Iterator[RawPair | ReadReject]:
    """Pairs (English ``src``) of each selected language, languages in file-code order, lines in order."""
    for code in select_languages(root, langs):
        xxx, eng = tatoeba_files(root, code)
        yield from read_moses(xxx, eng, lang_a=code, lang_b="eng", stats=stats, source="tatoeba")


def eval_sentences(root: PathLike, langs: Iterable[str] | None = None) -> Iterator[tuple[str, str]]:
    """``(canonical lang, text)`` for both sides of every pair, each distinct one once.

    English sentences recur across languages; they are yielded once. Raises ``ReaderError`` on a
    line that cannot be read: a sentence skipped here would leak into training undetected.
    """
    seen: set[tuple[str, str]] = set()
    for rec in read_tatoeba(root, langs):
        if isinstance(rec, ReadReject):
            raise ReaderError(rec.origin, f"{rec.reason}: {rec.detail}", rec.line)
        for item in ((rec.tgt_lang, rec.tgt_text), (rec.src_lang, rec.src_text)):
            if item not in seen:
                seen.add(item)
                yield item
