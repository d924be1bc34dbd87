"""Monolingual text for MLM: one sentence per line, plain or gzip (by magic number).

The language is given, or read from the file name: ``de.txt``, ``news.2019.de.shuffled.gz``,
``cc100/de/part-0001.txt`` (dot-separated parts of the name, last first, then the parent directory).
Blank (whitespace-only) lines are skipped and counted in ``stats["blank_lines"]``; a line that is
not UTF-8 is a ``ReadReject("invalid_utf8")``. Text is kept as is apart from the line terminator.
An empty file yields nothing and is not an error (``stats["lines"]`` stays 0): monolingual shards
can legitimately be empty after upstream filtering, unlike one side of a parallel corpus.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from labse_core.langcodes import UnknownLanguage, normalize
from labse_core.readers._files import (
    decode,
    iter_lines,
    language_part,
    open_bytes,
    recover,
    strip_compression,
    utf8_error,
)
from labse_core.readers.records import INVALID_UTF8, MonoSentence, ReaderError, ReadReject

PathLike = str | os.PathLike[str]


def mono_language(path: PathLike) -> str:
    """The canonical language a monolingual file's name states; ``ReaderError`` if it states none."""
    p = Path(path)
    parts = strip_compression(p.name).split(".")
    for part in [*reversed(parts), p.parent.name]:
        code = language_part(part)
        if code is not None:
            return normalize(code)
    raise ReaderError(path, "cannot tell the language from the file name (xx.txt, news.xx.gz, xx/...); pass lang=")


def read_mono(
    path: PathLike, lang: str | None = None, *, stats: Counter | None = None
) -> Iterator[MonoSentence | ReadReject]:
    """Sentences of ``path`` with their 1-based line numbers; ``stats`` counts ``lines``,
    ``sentences``, ``blank_lines`` and ``invalid_utf8``."""
    stats = stats if stats is not None else Counter()
    path = str(path)
    try:
        canon = normalize(lang) if lang is not None else mono_language(path)
    except UnknownLanguage as e:
        raise ReaderError(path, f"language {lang!r}: {e}") from None
    with open_bytes(path) as f:
        for lineno, raw in enumerate(iter_lines(f, path), 1):
            stats["lines"] += 1
            try:
                text = decode(raw)
            except UnicodeDecodeError as e:
                stats[INVALID_UTF8] += 1
                yield ReadReject(path, lineno, INVALID_UTF8, utf8_error(e), recover(raw))
                continue
            if not text.strip():
                stats["blank_lines"] += 1
                continue
            stats["sentences"] += 1
            yield MonoSentence(canon, text, path, lineno)
