"""Pair filters for parallel corpora: each a pure function of one (src, tgt) pair with a reason code.

``check_pair`` runs the filters in the fixed order of ``ORDER`` (cheap ones first, language ID
last) and returns the first failing reason code, or None. ``check_pairs`` is the batched form: the
same per-record checks, with the language-ID model run once over every text that reaches it; it
returns exactly what ``check_pair`` returns record by record (``tests/labse_core/test_text_filters.py``
checks this on real gettext and Tatoeba pairs).

Inputs are texts as ``normalize.normalize_text`` stores them and canonical language codes
(``langcodes.normalize``); ``REASONS`` maps each code to the description the rejects dataset and the
docs show. Per side, the filters look at two forms of the text:

- the **text** itself (length bounds, copy, placeholders, numbers);
- its **content**: the text with HTML/Pango tags, entities, URLs, e-mail addresses, paths and
  placeholders removed (markup, letter count, length ratio, repetition, script, language).

Language ID (``labse_core.text.langid``) uses the model bundled inside ``py3langid`` (no download); it is loaded once per process
on first use (~2 s; Beam: ``get_langid()`` in ``DoFn.setup``) and scored with a batched
re-implementation of py3langid's own classifier (same model arrays, same byte-DFA features, same
length-calibrated softmax; see ``LangId``).

Speed (CPU time on one core of a busy 2-core box, 100k real gettext pairs in 16 languages, batches
of 1000): ~19-21k pairs/s with language ID (which takes 20-25% of it: ~47k texts reach it, ~25 us
each), ~25k pairs/s without; ``check_pair`` one record at a time: ~5-6k pairs/s (language ID
per text is ~130 us unbatched). Prefer ``check_pairs`` on a bundle; a worker that sees many bundles
uses ``PairChecker``, which also remembers what it computed per distinct text (in gettext data the
English msgid recurs in every language's catalog).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from labse_core.text import normalize as tn
from labse_core.text.langid import LANGID_CONFUSABLE, LANGID_LABEL, LangId, get_langid  # noqa: F401  (re-exported)
from labse_core.text.scripts import SCRIPT_ID, expected_scripts, script_ids

# ------------------------------------------------------------------------------------------------
# Reason codes
# ------------------------------------------------------------------------------------------------

EMPTY_SIDE = "empty_side"
TOO_LONG = "too_long"
MARKUP_OR_URL = "markup_or_url"
TOO_SHORT = "too_short"
LENGTH_RATIO = "length_ratio"
COPY = "copy"
REPETITION = "repetition"
PLACEHOLDER_MISMATCH = "placeholder_mismatch"
NUMBER_MISMATCH = "number_mismatch"
SCRIPT_MISMATCH = "script_mismatch"
LANG_ID = "lang_id"

REASONS: dict[str, str] = {
    EMPTY_SIDE: "a side is empty or only whitespace",
    TOO_LONG: "a side has more than max_chars characters or max_words words",
    MARKUP_OR_URL: "a side is only markup, URLs, e-mail addresses or paths (no letters once those are removed)",
    TOO_SHORT: "a side has fewer than min_chars characters, min_words words or min_letters letters "
    "(letters counted outside markup and placeholders)",
    LENGTH_RATIO: "the longer side is more than max_length_ratio times the shorter "
    "(CJK-weighted characters, smoothed for short strings)",
    COPY: "source and target are the same text after normalization and casefolding (untranslated)",
    REPETITION: "runaway repetition: a letter repeated many times, or a short unit repeated several times in a row",
    PLACEHOLDER_MISMATCH: "the printf/Qt/brace/dollar placeholders differ between the sides",
    NUMBER_MISMATCH: "the numbers written in digits differ between the sides",
    SCRIPT_MISMATCH: "too few of a side's letters are in the scripts its language is written in",
    LANG_ID: "language identification is confident that a side is in another language",
}

ORDER: tuple[str, ...] = (
    EMPTY_SIDE,
    TOO_LONG,
    MARKUP_OR_URL,
    TOO_SHORT,
    LENGTH_RATIO,
    COPY,
    REPETITION,
    PLACEHOLDER_MISMATCH,
    NUMBER_MISMATCH,
    SCRIPT_MISMATCH,
    LANG_ID,
)
"""The order ``check_pair`` applies the filters in: cheapest first, the language-ID model last.
A pair failing several filters is reported under the first."""


class FilterConfig(BaseModel):
    """Thresholds of the pair filters. Defaults are tuned for short UI strings (gettext catalogs)
    and sentence pairs (Tatoeba); every bound applies to each side separately."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    disabled: frozenset[str] = frozenset()
    """Reason codes whose filter is skipped (``{"lang_id"}`` to run without the model)."""

    min_chars: int = Field(default=1, ge=0)
    """Fewest characters (code points of the normalized text) a side may have."""
    max_chars: int = Field(default=1000, ge=1)
    """Most characters a side may have; longer texts are help paragraphs, not sentences."""
    min_words: int = Field(default=1, ge=0)
    """Fewest whitespace-separated words. Scripts written without spaces (Chinese, Japanese, Thai)
    count a whole run as one word, so keep this at 1 unless the pair set has no such language."""
    max_words: int = Field(default=250, ge=1)
    """Most whitespace-separated words a side may have."""
    min_letters: int = Field(default=1, ge=0)
    """Fewest letters in the content (outside markup and placeholders). With 1, a side such as
    ``"%s: %s"``, ``"100%"`` or ``"..."`` is too short: it carries no sentence meaning."""

    max_length_ratio: float = Field(default=3.0, gt=1.0)
    """Reject when ``(L_long + s) / (L_short + s) > max_length_ratio`` with ``L`` the weighted content
    length of a side and ``s`` = ``length_ratio_smoothing``."""
    length_ratio_smoothing: float = Field(default=5.0, ge=0.0)
    """Added to both lengths so that short strings ("OK" / "Aceptar") are not judged by a ratio of
    single-digit counts."""
    char_weights: dict[str, float] = {"Han": 3.0, "Hiragana": 1.5, "Katakana": 1.5, "Hangul": 2.0}
    """Weight of one character of a script in the length (others weigh 1). Measured on Tatoeba: the
    median English/target character ratio is 3.1 for Chinese, 2.2 for Japanese (kana and kanji
    mixed), 1.9 for Korean, 0.9-1.3 for alphabetic scripts."""

    repetition_min_run: int = Field(default=8, ge=2)
    """A letter repeated this many times in a row is runaway repetition ("aaaaaaaa"). Runs of ``x``
    are exempt: they are templates in real UI text (``tmp.XXXXXXXXXX``, ``\\UXXXXXXXX``)."""
    repetition_min_repeats: int = Field(default=4, ge=2)
    """A word n-gram or an in-word unit repeated this many times in a row is runaway repetition
    ("la la la la", "hahahaha")."""
    repetition_max_ngram: int = Field(default=3, ge=1)
    """Longest repeated word n-gram looked for."""
    repetition_max_unit: int = Field(default=6, ge=2)
    """Longest repeated unit looked for inside a word, in characters."""

    placeholder_allow_dropped_count: bool = True
    """Allow one integer placeholder (``%d``, ``%'lu``, Qt ``%n``) on one side only. gettext pairs
    the English singular with the translation's n=1 form: "One file" / Russian "%d файл" (the form
    also serves 21, 31, ...), "%d file" / German "Eine Datei". Both are correct translations; the
    price is keeping a few real bugs where a translator dropped the count."""

    number_max_spelled: int = Field(default=100, ge=-1)
    """Numbers up to this may be written in digits on one side only: the other side spelled them
    out ("three-way" / "3-Wege", "5th level" / "fünfte Ebene") or says them with a word ("December"
    / "12月", "hexadecimal" / "16進数", "Adults only" / "R18+"). -1 demands identical numbers."""

    script_min_share: float = Field(default=0.3, ge=0.0, le=1.0)
    """Reject when fewer than this share of a side's letters are in its language's expected scripts
    (``scripts.expected_scripts``; languages it does not know are not checked). Letters are weighted
    by ``char_weights``. Low on purpose: UI translations into CJK and Indic languages keep product
    names and identifiers in Latin ("Ubuntu 8.04 'Hardy Heron' の CD-ROM"); the filter is for text in
    the wrong script altogether (untranslated English, Latin Serbian under ``sr``), which scores
    near 0. ASCII words that also occur in the other side ("GNOME", "PostgreSQL") are not held
    against a side: the share is computed with and without them, the better counts."""
    script_min_letters: int = Field(default=1, ge=1)
    """Fewest content letters for the script check to apply."""

    lang_id_min_letters: int = Field(default=20, ge=1)
    """Fewest content letters for language ID to apply. UI strings are short ("Save", "Rand") and
    on a few letters an n-gram model confidently names the wrong language; below this the pair is
    not judged. CJK and other non-Latin scripts are identified from fewer letters, but the script
    check already covers those."""
    lang_id_min_confidence: float = Field(default=0.8, gt=0.0, le=1.0)
    """Reject only when the top language is not an accepted one and its (length-calibrated)
    probability is at least this. Measured on Tatoeba sentences with >= 20 letters, 82 languages:
    0.8 rejects 0.11% of correct pairs and catches 80% of pairs relabelled with a random other
    language (0.9: 0.09% / 72%; 0.7: 0.14% / 85%); on real gettext catalogs what 0.7 adds is mostly
    place and language names."""
    lang_id_skip: frozenset[str] = frozenset({"en"})
    """Languages (base codes) whose side is not language-identified: the English msgid of a gettext
    catalog is English by construction."""

    @field_validator("disabled")
    @classmethod
    def _known_reasons(cls, v: frozenset[str]) -> frozenset[str]:
        unknown = v - REASONS.keys()
        if unknown:
            raise ValueError(f"unknown reason codes {sorted(unknown)}; known: {sorted(REASONS)}")
        return v


DEFAULT_FILTERS = FilterConfig()

# ------------------------------------------------------------------------------------------------
# Per-side helpers
# ------------------------------------------------------------------------------------------------

_MARKUP_RE = re.compile(
    "|".join(p.pattern for p in (tn.URL_RE, tn.EMAIL_RE, tn.PATH_RE, tn.ENTITY_RE, tn.TAG_RE))
)
_ANY_DIGIT_RE = re.compile(r"\d")
_ASCII_WORD_RE = re.compile(r"[A-Za-z]+")
# A word: a run of anything but whitespace and Unicode punctuation (marks stay inside the word).
_WORD_RE = re.compile("[^\\s" + re.escape(tn.PUNCTUATION) + "]+")
_DIGITS = frozenset("0123456789")
_INT_CONV = frozenset("diouxX")


def content_text(s: str) -> str:
    """``s`` without tags, entities, URLs, e-mail addresses, paths and placeholders, spaces collapsed.

    >>> content_text("<b>Open</b> %s at https://gnu.org/x or ~/.config &amp; {name}")
    'Open at or'
    """
    # Each pattern only where its trigger character occurs: most UI strings have none.
    if "<" in s:
        s = tn.TAG_RE.sub(" ", s)
    if "&" in s:
        s = tn.ENTITY_RE.sub(" ", s)
    if "://" in s or "www." in s:
        s = tn.URL_RE.sub(" ", s)
    if "@" in s:
        s = tn.EMAIL_RE.sub(" ", s)
    if "/" in s or ":\\" in s:
        s = tn.PATH_RE.sub(" ", s)
    if "%" in s or "{" in s or "$" in s:
        s = tn.PLACEHOLDER_RE.sub(" ", s)
    return " ".join(s.split())


def _id_counts(ids: str) -> dict[str, int]:
    """Letters per script id (``ids = scripts.script_ids(text)``)."""
    return {c: ids.count(c) for c in set(ids)}


def _weights_by_id(weights: dict[str, float]) -> dict[str, float]:
    return {SCRIPT_ID[name]: w for name, w in weights.items()}


def _weighted_length(content: str, counts: dict[str, int], weights_by_id: dict[str, float]) -> float:
    """``len(content)`` with each letter of a weighted script counted ``weight`` times."""
    n = float(len(content))
    for c, w in weights_by_id.items():  # a fixed order: float sums do not depend on set order
        k = counts.get(c)
        if k:
            n += (w - 1.0) * k
    return n


_RE_CACHE: dict[tuple[int, int], re.Pattern[str]] = {}


def _run_re(run: int) -> re.Pattern[str]:
    key = (0, run)
    if key not in _RE_CACHE:
        _RE_CACHE[key] = re.compile(rf"([^\W\d_x])\1{{{run - 1},}}")  # any letter but x (templates)
    return _RE_CACHE[key]


def _unit_re(max_unit: int, repeats: int) -> re.Pattern[str]:
    key = (max_unit, repeats)
    if key not in _RE_CACHE:
        # a letter, then a different character (a one-letter unit is a run), up to max_unit in all
        _RE_CACHE[key] = re.compile(
            rf"(([^\W\d_])(?!\2).{{1,{max_unit - 1}}}?)\1{{{repeats - 1},}}", re.DOTALL
        )
    return _RE_CACHE[key]


def is_repetitive(content: str, cfg: FilterConfig = DEFAULT_FILTERS) -> bool:
    """Runaway repetition in ``content`` (casefolded, punctuation ignored): a word n-gram
    (n <= ``repetition_max_ngram``) repeated ``repetition_min_repeats`` times in a row, a letter
    repeated ``repetition_min_run`` times, or a unit of 2..``repetition_max_unit`` characters
    repeated ``repetition_min_repeats`` times inside one word (scripts without spaces included).
    Words with a digit are never repetitive ("0xffffffff"), nor are runs of ``x`` (templates).

    >>> [is_repetitive(s) for s in ("la la la la la la", "aaaaaaaa", "hahahahaha", "Bora Bora", "<Uxxxxxxxx>")]
    [True, True, True, False, False]
    """
    reps, run = cfg.repetition_min_repeats, cfg.repetition_min_run
    if len(content) < min(run, 2 * reps):
        return False
    words = _WORD_RE.findall(content.casefold())
    # An n-gram repeated `reps` times repeats n*(reps-1) words: skip when there are fewer duplicates.
    if len(words) - len(set(words)) >= reps - 1:
        for n in range(1, cfg.repetition_max_ngram + 1):
            need, streak = n * (reps - 1), 0
            for a, b in zip(words, words[n:], strict=False):  # words[i] == words[i+n], `need` times in a row
                # a word of two letters or more: "0x, 0x, 0x, 0x" (hex bytes) is not runaway text
                streak = streak + 1 if a == b and len(a) > 1 and _DIGITS.isdisjoint(a) else 0
                if streak >= need:
                    return True
    shortest = min(run, 2 * reps)
    for w in words:
        n = len(w)
        if n < shortest:
            continue
        distinct = len(set(w))
        # Cheap necessary conditions first: a run leaves at most n - run + 1 distinct characters,
        # a repeated unit makes a word (or a stretch of it) poor in distinct characters; long words
        # (CJK sentences have no spaces) are always searched.
        if (
            (distinct <= n - run + 1 or 2 * distinct <= n or n > 20)
            and _DIGITS.isdisjoint(w)
            and (
                _run_re(run).search(w)
                or (n >= 2 * reps and _unit_re(cfg.repetition_max_unit, reps).search(w))
            )
        ):
            return True
    return False


def _copy_key(s: str) -> str:
    """``normalize.key_text`` for text that already went through ``normalize_text``."""
    s = s.casefold()
    if not s.isascii():
        s = unicodedata.normalize("NFKC", s)
    return " ".join(tn.punct_to_space(s).split())


def _is_count(tok: str) -> bool:
    """An integer placeholder: ``%d``, ``%'lu``, ``%2$d``, Qt ``%n``."""
    return tok == "%n" or (tok.startswith("%") and tok[-1] in _INT_CONV and not tok.startswith("%<"))


def placeholders_match(src: str, tgt: str, allow_dropped_count: bool = True) -> bool:
    """Same canonical placeholders on both sides (``normalize.canonical_placeholders``), up to one
    integer placeholder present on one side only when ``allow_dropped_count`` (plural forms)."""
    la, lb = tn.placeholder_list(src), tn.placeholder_list(tgt)
    if la == lb:  # the common case: same tokens in the same order (or none)
        return True
    a = Counter(tn.canonical_placeholder(t) for t in la)
    b = Counter(tn.canonical_placeholder(t) for t in lb)
    if a == b:
        return True
    diff = (a - b) + (b - a)
    if allow_dropped_count and sum(diff.values()) == 1:
        (tok,) = diff
        return _is_count(tok)
    return False


def numbers_match(src: str, tgt: str, max_spelled: int = 100) -> bool:
    """Same digit-written numbers (``normalize.numbers``) on both sides, except that one side may
    have extra numbers up to ``max_spelled`` which the other side spelled out ("5th level" /
    "fünfte Ebene", "three-way" / "3-Wege"). A number changed on both sides ("page 5" / "Seite 6")
    always fails.

    >>> numbers_match("Page 5 of 10", "Seite 5 von 10"), numbers_match("Page 5", "Seite 6")
    (True, False)
    >>> numbers_match("Key for the 5th level", "Taste für die fünfte Ebene")
    True
    """
    if _ANY_DIGIT_RE.search(src) is None and _ANY_DIGIT_RE.search(tgt) is None:
        return True
    a, b = tn.numbers(src), tn.numbers(tgt)
    if a == b:
        return True
    only_a, only_b = a - b, b - a
    if only_a and only_b:
        return False
    return all(len(x) <= 3 and int(x) <= max_spelled for x in (only_a or only_b))


def _share(counts: dict[str, int], expected_ids: str, weights_by_id: dict[str, float]) -> float:
    """Weighted share of the letters in ``counts`` whose script is in ``expected_ids``."""
    total = inside = 0.0
    for c in sorted(counts):  # a fixed order: float sums do not depend on set order
        x = counts[c] * weights_by_id.get(c, 1.0)
        total += x
        if c in expected_ids:
            inside += x
    return inside / total if total else 0.0


def _script_ok(
    content: str,
    counts: dict[str, int],
    other_content: str,
    expected_ids: str,
    cfg: FilterConfig,
    weights_by_id: dict[str, float],
) -> bool:
    """The share of ``content``'s letters in the expected scripts reaches ``cfg.script_min_share``,
    counting either all letters or only those of words the other side does not contain. Letters are
    weighted like lengths (``cfg.char_weights``): one Han character says about as much as three
    Latin letters, so "英語 (UK、WinKey 拡張)" is mostly Japanese."""
    if (
        sum(counts.values()) < cfg.script_min_letters
        or _share(counts, expected_ids, weights_by_id) >= cfg.script_min_share
    ):
        return True
    # Words are ASCII letter runs: what a translation copies verbatim is Latin-script names and
    # identifiers, often glued to the translated text ("integerの範囲外です", "NULL文字列").
    other = {w.casefold() for w in _ASCII_WORD_RE.findall(other_content)}
    if not other:
        return False
    kept, n = _ASCII_WORD_RE.subn(lambda m: "" if m.group().casefold() in other else m.group(), content)
    if not n or len(kept) == len(content):  # nothing shared: same share as before
        return False
    return _share(_id_counts(script_ids(kept)), expected_ids, weights_by_id) >= cfg.script_min_share


@functools.lru_cache(maxsize=1024)
def _expected_ids(lang: str) -> str | None:
    scripts = expected_scripts(lang)
    return None if scripts is None else "".join(SCRIPT_ID[s] for s in sorted(scripts))


# ------------------------------------------------------------------------------------------------
# The checks
# ------------------------------------------------------------------------------------------------

# A pair that passed every check but language ID: the (text, accepted labels) to identify.
_Pending = list[tuple[str, frozenset[str]]]


_WEIGHTS_CACHE: dict[int, tuple[dict[str, float], dict[str, float]]] = {}


def _check_before_langid(
    src: str, tgt: str, src_lang: str, tgt_lang: str, cfg: FilterConfig
) -> str | _Pending | None:
    """Every filter but language ID, in ``ORDER``: a reason code, None (passed, nothing left to
    identify), or the texts language ID still has to judge."""
    off = cfg.disabled
    if EMPTY_SIDE not in off and (not src or not tgt or src.isspace() or tgt.isspace()):
        return EMPTY_SIDE
    wa, wb = len(src.split()), len(tgt.split())
    if TOO_LONG not in off and (
        len(src) > cfg.max_chars or len(tgt) > cfg.max_chars or max(wa, wb) > cfg.max_words
    ):
        return TOO_LONG
    ca, cb = content_text(src), content_text(tgt)
    ia, ib = script_ids(ca), script_ids(cb)  # one id character per letter
    if MARKUP_OR_URL not in off and (
        (not ia and _MARKUP_RE.search(src) is not None) or (not ib and _MARKUP_RE.search(tgt) is not None)
    ):
        return MARKUP_OR_URL
    if TOO_SHORT not in off and (
        min(len(src), len(tgt)) < cfg.min_chars
        or min(wa, wb) < cfg.min_words
        or min(len(ia), len(ib)) < cfg.min_letters
    ):
        return TOO_SHORT
    na, nb = _id_counts(ia), _id_counts(ib)
    cached = _WEIGHTS_CACHE.get(id(cfg.char_weights))
    if cached is None or cached[0] is not cfg.char_weights:
        if len(_WEIGHTS_CACHE) > 64:
            _WEIGHTS_CACHE.clear()
        cached = _WEIGHTS_CACHE[id(cfg.char_weights)] = (cfg.char_weights, _weights_by_id(cfg.char_weights))
    wid = cached[1]  # script id -> weight
    if LENGTH_RATIO not in off:
        la, lb = _weighted_length(ca, na, wid), _weighted_length(cb, nb, wid)
        sm = cfg.length_ratio_smoothing
        if max(la, lb) + sm > cfg.max_length_ratio * (min(la, lb) + sm):
            return LENGTH_RATIO
    # Equal key texts have letters of the same scripts (casefolding and NFKC keep a letter's script;
    # only symbols such as "㈱" turn into letters): most pairs are told apart without a key.
    if (
        COPY not in off
        and na.keys() == nb.keys()
        and (src.casefold() == tgt.casefold() or _copy_key(src) == _copy_key(tgt))
    ):
        return COPY
    if REPETITION not in off and (is_repetitive(ca, cfg) or is_repetitive(cb, cfg)):
        return REPETITION
    if PLACEHOLDER_MISMATCH not in off and not placeholders_match(
        src, tgt, cfg.placeholder_allow_dropped_count
    ):
        return PLACEHOLDER_MISMATCH
    if NUMBER_MISMATCH not in off and not numbers_match(src, tgt, cfg.number_max_spelled):
        return NUMBER_MISMATCH
    if SCRIPT_MISMATCH not in off:
        ea, eb = _expected_ids(src_lang), _expected_ids(tgt_lang)
        if (ea is not None and not _script_ok(ca, na, cb, ea, cfg, wid)) or (
            eb is not None and not _script_ok(cb, nb, ca, eb, cfg, wid)
        ):
            return SCRIPT_MISMATCH
    if LANG_ID in off:
        return None
    pending: _Pending = []
    if len(ia) >= cfg.lang_id_min_letters:
        acc = _langid_accepted(src_lang, cfg.lang_id_skip)
        if acc is not None:
            pending.append((ca, acc))
    if len(ib) >= cfg.lang_id_min_letters:
        acc = _langid_accepted(tgt_lang, cfg.lang_id_skip)
        if acc is not None:
            pending.append((cb, acc))
    return pending or None


@functools.lru_cache(maxsize=1024)
def _langid_accepted(lang: str, skip: frozenset[str]) -> frozenset[str] | None:
    """Labels accepted for ``lang``, or None when its side is not language-identified."""
    if lang.split("-")[0] in skip:
        return None
    return get_langid().accepted(lang)


def _decide_langid(pending: _Pending, tops: Sequence[tuple[str, float]], cfg: FilterConfig) -> str | None:
    for (_, accepted), (label, prob) in zip(pending, tops, strict=True):
        if label not in accepted and prob >= cfg.lang_id_min_confidence:
            return LANG_ID
    return None


def check_pair(
    src: str, tgt: str, src_lang: str, tgt_lang: str, cfg: FilterConfig = DEFAULT_FILTERS
) -> str | None:
    """The first failing reason code in ``ORDER`` for one pair, or None if it passes every filter.

    >>> check_pair("Open file", "Datei öffnen", "en", "de"), check_pair("Open", "Open", "en", "de")
    (None, 'copy')
    """
    res = _check_before_langid(src, tgt, src_lang, tgt_lang, cfg)
    if not isinstance(res, list):
        return res
    return _decide_langid(res, get_langid().top([t for t, _ in res]), cfg)


def check_pairs(
    src_list: Sequence[str],
    tgt_list: Sequence[str],
    src_langs: Sequence[str],
    tgt_langs: Sequence[str],
    cfg: FilterConfig = DEFAULT_FILTERS,
) -> list[str | None]:
    """``[check_pair(*row, cfg) for row in zip(...)]``, with language ID run once for the whole batch
    (identical texts identified once)."""
    n = len(src_list)
    if not len(tgt_list) == len(src_langs) == len(tgt_langs) == n:
        raise ValueError(
            f"check_pairs: lengths differ: {n} src, {len(tgt_list)} tgt, {len(src_langs)} src_langs, {len(tgt_langs)} tgt_langs"
        )
    results: list[str | None] = [None] * n
    waiting: list[tuple[int, _Pending]] = []
    for i in range(n):
        res = _check_before_langid(src_list[i], tgt_list[i], src_langs[i], tgt_langs[i], cfg)
        if isinstance(res, list):
            waiting.append((i, res))
        else:
            results[i] = res
    if waiting:
        texts = list(dict.fromkeys(t for _, pend in waiting for t, _ in pend))
        tops = dict(zip(texts, get_langid().top(texts), strict=True))
        for i, pend in waiting:
            results[i] = _decide_langid(pend, [tops[t] for t, _ in pend], cfg)
    return results


# ------------------------------------------------------------------------------------------------
# The same checks with per-text memory (the prepare stage's hot path)
# ------------------------------------------------------------------------------------------------


class _Side:
    """What the filters compute from one side alone; ``PairChecker`` computes it once per text."""

    __slots__ = ("content", "counts", "fold", "ids", "markup", "n_chars", "n_words", "placeholders", "wlen",
                 "has_digit", "_copy_key", "_repetitive", "_share_ok", "_numbers")

    def __init__(self, s: str, cfg: FilterConfig, wid: dict[str, float]) -> None:
        self.n_chars = len(s)
        self.n_words = len(s.split())
        self.content = content_text(s)
        self.ids = script_ids(self.content)
        self.counts = _id_counts(self.ids)
        self.markup = not self.ids and _MARKUP_RE.search(s) is not None
        self.wlen = _weighted_length(self.content, self.counts, wid)
        self.fold = s.casefold()
        self.placeholders = tn.placeholder_list(s)
        self.has_digit = _ANY_DIGIT_RE.search(s) is not None
        self._copy_key: str | None = None
        self._repetitive: bool | None = None
        self._numbers: Counter[str] | None = None
        self._share_ok: dict[str, bool] = {}


class PairChecker:
    """``check_pairs`` for a stream of batches, remembering what it computed per text.

    Everything a filter derives from one side alone (lengths, content, script ids, markup, the
    casefolded and key forms, placeholders, repetition, the script share, the language-ID result) is
    computed once per distinct text and kept for later batches: in gettext data the English side of
    a msgid recurs in every language's catalog, and identical translations recur across catalogs.
    The pair-level decisions are the ones of ``check_pair``, in ``ORDER``, calling the same helpers,
    so the result is identical (``tests/labse_core/test_text_filters.py`` compares the two on real
    pairs). Memory is bounded: a cache is emptied when it holds ``max_cached`` texts.
    """

    def __init__(self, cfg: FilterConfig = DEFAULT_FILTERS, max_cached: int = 200_000) -> None:
        self.cfg = cfg
        self.max_cached = max_cached
        self._wid = _weights_by_id(cfg.char_weights)
        self._sides: dict[str, _Side] = {}
        self._tops: dict[str, tuple[str, float]] = {}

    def side(self, s: str) -> _Side:
        f = self._sides.get(s)
        if f is None:
            if len(self._sides) >= self.max_cached:
                self._sides.clear()
            f = self._sides[s] = _Side(s, self.cfg, self._wid)
        return f

    def _repetitive(self, f: _Side) -> bool:
        if f._repetitive is None:
            f._repetitive = is_repetitive(f.content, self.cfg)
        return f._repetitive

    def _copy_key(self, s: str, f: _Side) -> str:
        if f._copy_key is None:
            f._copy_key = _copy_key(s)
        return f._copy_key

    def _numbers_match(self, src: str, a: _Side, tgt: str, b: _Side) -> bool:
        """``numbers_match`` with each side's ``numbers`` computed once."""
        if not a.has_digit and not b.has_digit:
            return True
        if a._numbers is None:
            a._numbers = tn.numbers(src)
        if b._numbers is None:
            b._numbers = tn.numbers(tgt)
        x, y = a._numbers, b._numbers
        if x == y:
            return True
        only_a, only_b = x - y, y - x
        if only_a and only_b:
            return False
        return all(len(n) <= 3 and int(n) <= self.cfg.number_max_spelled for n in (only_a or only_b))

    def _script_ok(self, f: _Side, other: _Side, expected: str) -> bool:
        """``_script_ok``; its first test (the side alone) is remembered per expected scripts."""
        ok = f._share_ok.get(expected)
        if ok is None:
            cfg = self.cfg
            ok = f._share_ok[expected] = (
                sum(f.counts.values()) < cfg.script_min_letters
                or _share(f.counts, expected, self._wid) >= cfg.script_min_share
            )
        return ok or _script_ok(f.content, f.counts, other.content, expected, self.cfg, self._wid)

    def _before_langid(self, src: str, tgt: str, src_lang: str, tgt_lang: str) -> str | _Pending | None:
        """``_check_before_langid`` on remembered side features (same decisions, same order)."""
        cfg, off = self.cfg, self.cfg.disabled
        if EMPTY_SIDE not in off and (not src or not tgt or src.isspace() or tgt.isspace()):
            return EMPTY_SIDE
        a, b = self.side(src), self.side(tgt)
        if TOO_LONG not in off and (
            a.n_chars > cfg.max_chars or b.n_chars > cfg.max_chars or max(a.n_words, b.n_words) > cfg.max_words
        ):
            return TOO_LONG
        if MARKUP_OR_URL not in off and (a.markup or b.markup):
            return MARKUP_OR_URL
        if TOO_SHORT not in off and (
            min(a.n_chars, b.n_chars) < cfg.min_chars
            or min(a.n_words, b.n_words) < cfg.min_words
            or min(len(a.ids), len(b.ids)) < cfg.min_letters
        ):
            return TOO_SHORT
        if LENGTH_RATIO not in off:
            sm = cfg.length_ratio_smoothing
            if max(a.wlen, b.wlen) + sm > cfg.max_length_ratio * (min(a.wlen, b.wlen) + sm):
                return LENGTH_RATIO
        if (
            COPY not in off
            and a.counts.keys() == b.counts.keys()
            and (a.fold == b.fold or self._copy_key(src, a) == self._copy_key(tgt, b))
        ):
            return COPY
        if REPETITION not in off and (self._repetitive(a) or self._repetitive(b)):
            return REPETITION
        if (
            PLACEHOLDER_MISMATCH not in off
            and a.placeholders != b.placeholders
            and not placeholders_match(src, tgt, cfg.placeholder_allow_dropped_count)
        ):
            return PLACEHOLDER_MISMATCH
        if NUMBER_MISMATCH not in off and not self._numbers_match(src, a, tgt, b):
            return NUMBER_MISMATCH
        if SCRIPT_MISMATCH not in off:
            ea, eb = _expected_ids(src_lang), _expected_ids(tgt_lang)
            if (ea is not None and not self._script_ok(a, b, ea)) or (eb is not None and not self._script_ok(b, a, eb)):
                return SCRIPT_MISMATCH
        if LANG_ID in off:
            return None
        pending: _Pending = []
        if len(a.ids) >= cfg.lang_id_min_letters:
            acc = _langid_accepted(src_lang, cfg.lang_id_skip)
            if acc is not None:
                pending.append((a.content, acc))
        if len(b.ids) >= cfg.lang_id_min_letters:
            acc = _langid_accepted(tgt_lang, cfg.lang_id_skip)
            if acc is not None:
                pending.append((b.content, acc))
        return pending or None

    def check(
        self, src_list: Sequence[str], tgt_list: Sequence[str], src_langs: Sequence[str], tgt_langs: Sequence[str]
    ) -> list[str | None]:
        """``check_pairs(src_list, tgt_list, src_langs, tgt_langs, self.cfg)``."""
        n = len(src_list)
        if not len(tgt_list) == len(src_langs) == len(tgt_langs) == n:
            raise ValueError(
                f"PairChecker.check: lengths differ: {n} src, {len(tgt_list)} tgt, {len(src_langs)} src_langs, "
                f"{len(tgt_langs)} tgt_langs"
            )
        results: list[str | None] = [None] * n
        waiting: list[tuple[int, _Pending]] = []
        before = self._before_langid
        for i in range(n):
            res = before(src_list[i], tgt_list[i], src_langs[i], tgt_langs[i])
            if res.__class__ is list:
                waiting.append((i, res))  # type: ignore[arg-type]
            else:
                results[i] = res  # type: ignore[assignment]
        if waiting:
            tops = self._tops
            new = list(dict.fromkeys(t for _, pend in waiting for t, _ in pend if t not in tops))
            if new:
                if len(tops) + len(new) > self.max_cached:
                    tops.clear()
                    new = list(dict.fromkeys(t for _, pend in waiting for t, _ in pend))
                tops.update(zip(new, get_langid().top(new), strict=True))
            cfg = self.cfg
            for i, pend in waiting:
                results[i] = _decide_langid(pend, [tops[t] for t, _ in pend], cfg)
        return results
