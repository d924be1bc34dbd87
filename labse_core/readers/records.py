"""The record contract every reader yields, and the errors that stop a file.

A reader is a generator over one input (a file, a Moses file pair, a Tatoeba directory). It yields
records (``RawPair`` / ``MonoSentence``) and, for a record it cannot read, a ``ReadReject`` with a
reason code, then carries on: every input record ends up as exactly one of the two, so counts add up
(``records in = pairs + rejects``). A problem that makes the rest of the file meaningless (unequal
Moses sides, broken XML, an unknown language in a file name) raises ``ReaderError`` instead.

Language codes are canonical (``labse_core.langcodes.normalize``); ``RawPair.locale`` keeps the
code as the source spelled it (``deu``, ``pt_BR``), for the non-English side.

Orientation: when one side is English, English is ``src`` and the other language ``tgt``; otherwise
the pair keeps the order of the file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from labse_core.errors import InputFileError
from labse_core.langcodes import normalize

ENGLISH = "en"

# Reject reason codes (``ReadReject.reason``).
INVALID_UTF8 = "invalid_utf8"
"""A line (or one side of a Moses line pair) is not valid UTF-8; ``raw`` has it with ``\\xNN`` escapes."""
MALFORMED_RECORD = "malformed_record"
"""TSV: wrong number of fields or broken quoting. TMX: a ``<tuv>`` without a language or a ``<seg>``."""
MISSING_SIDE = "missing_side"
"""TMX: the ``<tu>`` has no variant in one of the two languages being read."""
DUPLICATE_LANGUAGE = "duplicate_language"
"""TMX: the ``<tu>`` has two variants that normalize to the same language; which one is meant is unknown."""
AMBIGUOUS_LANGUAGES = "ambiguous_languages"
"""TMX: no language pair was requested or seen yet and the ``<tu>`` has more than two languages."""
UNKNOWN_LANGUAGE = "unknown_language"
"""A per-record language code (TMX ``xml:lang``, TSV language column) that ``langcodes`` cannot map."""

REJECT_REASONS = (
    INVALID_UTF8, MALFORMED_RECORD, MISSING_SIDE, DUPLICATE_LANGUAGE, AMBIGUOUS_LANGUAGES, UNKNOWN_LANGUAGE,
)


class ReaderError(InputFileError):
    """An input that cannot be read at all; ``str()`` is ``path:line: message`` (``path: message`` if no line)."""


@dataclass(frozen=True, slots=True)
class RawPair:
    src_lang: str
    """Canonical code (``langcodes.normalize``); ``en`` whenever one side is English."""
    src_text: str
    tgt_lang: str
    tgt_text: str
    origin: str
    """File the pair was read from (Moses: the non-English side's file)."""
    line: int | None
    """1-based line in ``origin`` (TMX: line of the ``<tu>`` start tag)."""
    locale: str
    """The target side's language code as the source spelled it, before normalization."""
    source: str
    """Reader name: ``moses``, ``tsv``, ``tmx``, ``tatoeba``."""


@dataclass(frozen=True, slots=True)
class MonoSentence:
    lang: str
    text: str
    origin: str
    line: int


@dataclass(frozen=True, slots=True)
class ReadReject:
    origin: str
    line: int | None
    reason: str
    """One of ``REJECT_REASONS``."""
    detail: str
    raw: str | None
    """The record as far as it could be recovered (undecodable bytes as ``\\xNN``), for the rejects table."""


@dataclass(frozen=True, slots=True)
class LanguagePair:
    """The two languages of a file (or a record) in reading order, and how to orient them.

    Built once per file so the per-line work is one ``RawPair(...)`` call.
    """

    a_locale: str
    b_locale: str
    a_lang: str
    b_lang: str
    swap: bool
    """True when side ``b`` is English and side ``a`` is not: ``b`` becomes ``src``."""

    @classmethod
    def of(cls, a_code: str, b_code: str) -> LanguagePair:
        """Normalize both codes; raises ``langcodes.UnknownLanguage``."""
        a, b = normalize(a_code), normalize(b_code)
        return cls(a_code, b_code, a, b, swap=b == ENGLISH and a != ENGLISH)

    def pair(self, a_text: str, b_text: str, *, origin: str, line: int | None, source: str) -> RawPair:
        if self.swap:
            return RawPair(self.b_lang, b_text, self.a_lang, a_text, origin, line, self.a_locale, source)
        return RawPair(self.a_lang, a_text, self.b_lang, b_text, origin, line, self.b_locale, source)


def orient_english_source(pair: RawPair, src_locale: str | None = None) -> RawPair:
    """Swap the sides of ``pair`` if English is its target and the source is not English.

    ``locale`` describes the target side, so a swap needs the source side's original code:
    pass it as ``src_locale``; without it the canonical ``src_lang`` is used. Readers orient
    pairs themselves (through ``LanguagePair``); this is for pairs built elsewhere.
    """
    if pair.tgt_lang != ENGLISH or pair.src_lang == ENGLISH:
        return pair
    return replace(
        pair,
        src_lang=pair.tgt_lang, src_text=pair.tgt_text,
        tgt_lang=pair.src_lang, tgt_text=pair.src_text,
        locale=src_locale if src_locale is not None else pair.src_lang,
    )
