"""Which reader an input needs, from its name and layout (never from its content)."""

from __future__ import annotations

import os
from pathlib import Path

from labse_core.readers._files import language_part, strip_compression
from labse_core.readers.moses import moses_files
from labse_core.readers.records import ReaderError
from labse_core.readers.tatoeba import FILE_RE

FORMATS = ("tmx", "tsv", "gettext", "moses", "tatoeba", "mono")
_SUFFIXES = {".tmx": "tmx", ".tsv": "tsv", ".po": "gettext", ".pot": "gettext", ".mo": "gettext",
             ".gmo": "gettext", ".txt": "mono"}


def detect_format(path: str | os.PathLike[str]) -> str:
    """One of ``FORMATS`` for ``path``.

    - a directory of ``tatoeba.xxx-eng.{xxx,eng}`` files -> ``tatoeba``;
    - ``.tmx``, ``.tsv`` (optionally ``.gz``) -> ``tmx``, ``tsv``; ``.po``, ``.pot``, ``.mo``, ``.gmo``
      -> ``gettext``; ``.txt`` / ``.txt.gz`` -> ``mono``;
    - a Moses prefix (``corpus`` with ``corpus.de`` and ``corpus.en`` beside it), or one side of it
      (``corpus.de``, when ``corpus.<other language>`` exists) -> ``moses``.
    Anything else raises ``ReaderError`` saying what was expected.
    """
    p = Path(path)
    if p.is_dir():
        if any(FILE_RE.match(f.name) for f in p.iterdir()):
            return "tatoeba"
        raise ReaderError(p, "a directory that is not a Tatoeba v1 release (no tatoeba.xxx-eng.xxx files)")
    name = strip_compression(p.name)
    fmt = _SUFFIXES.get(Path(name).suffix.lower())
    if fmt is not None:
        if fmt == "gettext" and name != p.name:
            raise ReaderError(p, "compressed gettext catalogs are not supported; decompress first")
        return fmt
    if not p.exists() and len(moses_files(p)) >= 2:
        return "moses"
    stem, dot, suffix = name.rpartition(".")
    if p.is_file() and dot and language_part(suffix) is not None:
        if len(moses_files(p.parent / stem)) >= 2:
            return "moses"
    if not p.exists() and not p.parent.is_dir():
        raise ReaderError(p, "no such file or directory")
    raise ReaderError(
        p, "unknown input format: expected a .tmx, .tsv, .po/.mo or .txt file (optionally .gz), a Moses prefix "
           "with <prefix>.<lang> files, or a Tatoeba v1 directory"
    )
