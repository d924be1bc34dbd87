"""Streaming readers for parallel and monolingual sources: pure generators, one input at a time.

Each reader yields records (``RawPair`` / ``MonoSentence``) and ``ReadReject`` for records it cannot
read, and raises ``ReaderError`` (``path:line: message``) when a whole file cannot be read; see
``records`` for the contract. A Beam ``DoFn`` calls them per file and counts the rejects.

    from labse_core.readers import read_moses_prefix, read_tmx, read_tsv, read_tatoeba, read_mono
    for rec in read_tmx("OpenSubtitles.de-en.tmx.gz", langs=("de", "en")):
        ...
"""

from labse_core.readers.detect import FORMATS, detect_format
from labse_core.readers.mono import mono_language, read_mono
from labse_core.readers.moses import moses_files, moses_pair, read_moses, read_moses_prefix, suffix_language
from labse_core.readers.records import (
    REJECT_REASONS,
    LanguagePair,
    MonoSentence,
    RawPair,
    ReaderError,
    ReadReject,
    orient_english_source,
)
from labse_core.readers.tatoeba import eval_sentences, list_languages, read_tatoeba, select_languages
from labse_core.readers.tmx import flatten_seg, read_tmx
from labse_core.readers.tsv import TsvFormat, read_tsv

__all__ = [
    "FORMATS", "REJECT_REASONS", "LanguagePair", "MonoSentence", "RawPair", "ReadReject", "ReaderError",
    "TsvFormat", "detect_format", "eval_sentences", "flatten_seg", "list_languages", "mono_language",
    "moses_files", "moses_pair", "orient_english_source", "read_mono", "read_moses", "read_moses_prefix",
    "read_tatoeba", "read_tmx", "read_tsv", "select_languages", "suffix_language",
]
