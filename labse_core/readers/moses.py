"""Moses-style aligned plain text: ``corpus.de`` + ``corpus.en``, line i of one translates line i of the other.

Both files are read together, line by line, in one generator (``zip`` of the two open handles):
reading the sides separately and joining them later is how alignments get lost (two Beam
``ReadFromText`` collections are unordered). Each file may be plain or gzip (by magic number);
the language is the file-name suffix before an optional ``.gz`` (``OpenSubtitles.de-en.de.gz`` -> ``de``).

Line counts are checked before the first pair is yielded: both files are pre-counted (newlines in
binary 1 MiB chunks, cheap next to decoding; a .gz side is decompressed twice). Unequal counts raise
``ReaderError`` naming both files and both counts, and nothing has been yielded. The same check runs
again at the end of the read (a file that changed in between); if it fires there, the pairs already
yielded are not aligned and the caller must discard them. ``precount=False`` skips the first check
(one pass over each file) and leaves only the one at the end.

Per line: a side that is not valid UTF-8 makes the line a ``ReadReject("invalid_utf8")`` and reading
goes on. Text is kept as is apart from the line terminator (``\\n`` or ``\\r\\n``) and a UTF-8 BOM
at the start of a file; empty lines stay pairs with empty text (the filter stage rejects them).
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path

from labse_core.langcodes import UnknownLanguage, normalize
from labse_core.readers._files import (
    count_lines,
    decode,
    iter_lines,
    language_part,
    open_bytes,
    recover,
    strip_compression,
    utf8_error,
)
from labse_core.readers.records import (
    ENGLISH,
    INVALID_UTF8,
    LanguagePair,
    RawPair,
    ReaderError,
    ReadReject,
)

PathLike = str | os.PathLike[str]


def suffix_language(path: PathLike) -> str:
    """The language code a Moses file name ends with, as spelled (``corpus.pt_BR.gz`` -> ``pt_BR``)."""
    name = strip_compression(Path(path).name)
    _, dot, suffix = name.rpartition(".")
    code = language_part(suffix) if dot else None
    if code is None:
        raise ReaderError(path, f"cannot tell the language from the file name suffix {suffix!r}; pass it explicitly")
    return code


def moses_files(prefix: PathLike) -> dict[str, Path]:
    """``{code as spelled: path}`` for the files ``{prefix}.{code}`` and ``{prefix}.{code}.gz``."""
    p = Path(prefix)
    found: dict[str, Path] = {}
    for f in sorted(p.parent.glob(glob.escape(p.name) + ".*")):
        rest = strip_compression(f.name)[len(p.name) + 1:]
        if "." in rest or not f.is_file() or language_part(rest) is None:
            continue
        if rest in found:
            raise ReaderError(prefix, f"two files for language {rest!r}: {found[rest]} and {f}")
        found[rest] = f
    return found


def moses_pair(prefix: PathLike, langs: tuple[str, str] | None = None) -> tuple[Path, Path]:
    """The two files of the Moses corpus ``prefix``, the non-English side first.

    ``langs`` picks two of several (``("de", "en")``; spelled as in the file names or canonical).
    Without it the prefix must have exactly two language files.
    """
    found = moses_files(prefix)
    if langs is not None:
        picked = []
        for want in langs:
            hits = [c for c in found if c == want] or [c for c in found if _same_language(c, want)]
            if len(hits) != 1:
                raise ReaderError(prefix, f"{len(hits)} files for language {want!r} among {sorted(found)}")
            picked.append(found[hits[0]])
        a, b = picked
    elif len(found) == 2:
        a, b = found.values()
    else:
        what = f"languages {sorted(found)}" if found else "no files"
        raise ReaderError(prefix, f"a Moses prefix needs two {prefix}.<lang> files, found {what}; pass langs=")
    if normalize(suffix_language(a)) == ENGLISH:
        a, b = b, a
    return a, b


def _same_language(a: str, b: str) -> bool:
    try:
        return normalize(a) == normalize(b)
    except UnknownLanguage:
        return False


def read_moses(
    path_a: PathLike,
    path_b: PathLike,
    *,
    lang_a: str | None = None,
    lang_b: str | None = None,
    precount: bool = True,
    stats: Counter | None = None,
    source: str = "moses",
) -> Iterator[RawPair | ReadReject]:
    """Pairs of line i of ``path_a`` and line i of ``path_b``, English oriented to ``src``.

    Languages default to the file-name suffixes. ``RawPair.origin`` is the non-English side's file
    (``path_a`` if neither is English), ``line`` the 1-based line number. ``stats`` counts
    ``lines``, ``pairs`` and each reject reason. Raises ``ReaderError`` for an empty file, unequal
    line counts (see the module docstring for when), a corrupt .gz, or an unknown language code.
    """
    stats = stats if stats is not None else Counter()
    path_a, path_b = str(path_a), str(path_b)
    code_a = lang_a if lang_a is not None else suffix_language(path_a)
    code_b = lang_b if lang_b is not None else suffix_language(path_b)
    try:
        langs = LanguagePair.of(code_a, code_b)
    except UnknownLanguage as e:
        raise ReaderError(path_a, f"unknown language ({code_a!r}, {code_b!r}): {e}") from None
    origin = path_b if langs.a_lang == ENGLISH and langs.b_lang != ENGLISH else path_a

    if precount:
        n_a, n_b = count_lines(path_a), count_lines(path_b)
        _check_counts(path_a, n_a, path_b, n_b)

    lineno = 0
    with open_bytes(path_a) as fa, open_bytes(path_b) as fb:
        for raw_a, raw_b in zip_longest(iter_lines(fa, path_a), iter_lines(fb, path_b)):
            if raw_a is None or raw_b is None:
                # Only reachable without precount (or if a file changed under us): finish counting for the message.
                rest_a = sum(1 for _ in iter_lines(fa, path_a)) + (raw_a is not None)
                rest_b = sum(1 for _ in iter_lines(fb, path_b)) + (raw_b is not None)
                _check_counts(path_a, lineno + rest_a, path_b, lineno + rest_b)
            lineno += 1
            stats["lines"] += 1
            try:
                text_a = decode(raw_a)
                text_b = decode(raw_b)
            except UnicodeDecodeError:
                stats[INVALID_UTF8] += 1
                yield ReadReject(origin, lineno, INVALID_UTF8, _bad_sides(raw_a, path_a, raw_b, path_b),
                                 f"{recover(raw_a)}\t{recover(raw_b)}")
                continue
            stats["pairs"] += 1
            yield langs.pair(text_a, text_b, origin=origin, line=lineno, source=source)
    if lineno == 0:
        _check_counts(path_a, 0, path_b, 0)


def read_moses_prefix(
    prefix: PathLike, langs: tuple[str, str] | None = None, **kwargs
) -> Iterator[RawPair | ReadReject]:
    """``read_moses`` on the two files ``moses_pair(prefix, langs)`` finds."""
    a, b = moses_pair(prefix, langs)
    return read_moses(a, b, **kwargs)


def _check_counts(path_a: str, n_a: int, path_b: str, n_b: int) -> None:
    if n_a == 0 or n_b == 0:
        empty, other, n_other = (path_a, path_b, n_b) if n_a == 0 else (path_b, path_a, n_a)
        tail = "" if n_other == 0 else f" (its other side {other} has {n_other} lines)"
        raise ReaderError(empty, f"empty file{tail}")
    if n_a != n_b:
        raise ReaderError(
            path_a, f"line counts differ: {path_a} has {n_a} lines, {path_b} has {n_b} lines; the sides are not aligned"
        )


def _bad_sides(raw_a: bytes, path_a: str, raw_b: bytes, path_b: str) -> str:
    problems = []
    for raw, path in ((raw_a, path_a), (raw_b, path_b)):
        try:
            decode(raw)
        except UnicodeDecodeError as e:
            problems.append(f"{path}: {utf8_error(e)}")
    return "; ".join(problems)
