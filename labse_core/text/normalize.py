"""Normalize one side of a translation pair, and derive the keys used for dedupe and decontamination.

Two normal forms, on purpose:

- **Stored text: NFC** (``NormalizeConfig.unicode_form``). NFC only composes canonically equivalent
  sequences (``e`` + U+0301 -> ``é``), so no information is lost. NFKC would also rewrite
  compatibility characters that are part of what the translator wrote: ``²`` -> ``2``, ``ﬁ`` ->
  ``fi``, ``½`` -> ``1⁄2``, fullwidth ``（Ａ）`` -> ``(A)``, ``…`` -> ``...``; the tokenizer of the
  encoder does its own normalization, and the stored text should stay what the corpus said.
- **Keys: NFKC + casefold** (``key_text``, ``sentence_key``, ``dedupe_key``). For "is this the same
  sentence?" the compatibility differences, case, punctuation and ZWJ/ZWNJ do not matter, so the
  key folds them all. Key normalization is fixed (not configurable) and versioned (``KEY_VERSION``):
  keys written by one run must match keys computed by another.

Character classes (stored text):

- **Whitespace**: every Unicode space (``str.split()``'s set: Zs, Zl, Zp, tab, newline, ...) becomes
  ``' '``, runs collapse to one, ends are stripped. No-break spaces (French ``Fichier :``, U+202F)
  become ordinary spaces: the distinction is typographic, not lexical.
- **Control and format characters** (Cc, Cf) are removed: soft hyphen, bidi marks (LRM/RLM and the
  embedding/isolate controls), BOM, word joiner, zero-width space, tag characters. **Kept: ZWNJ
  (U+200C) and ZWJ (U+200D)**: in Persian (``می‌خواهم``), in the Indic scripts (conjunct control in
  Malayalam, Bengali, Sinhala) and in emoji sequences they change the word or its rendering.
  Unassigned and private-use code points are kept (removing them would make the output depend on
  the Python's Unicode version).
- **Escaped newlines**: a literal two-character ``\\n`` (also ``\\t``, ``\\r``) inside a UI string is
  a line break the catalog failed to unescape; it becomes a space like a real newline.

gettext specifics (``strip_accelerators``):

- **Keyboard accelerators** are markers for the menu mnemonic, not text: GTK ``_File``, Qt/Windows
  ``&Open``, LibreOffice ``~Save``, and the CJK convention of appending the Latin mnemonic to a
  translated label, ``ファイル(_F)``, ``開く(&O)...``, ``파일(_F)``. The parenthesized suffix is always
  removed when it holds a marker; ``(F)`` without a marker only right after a CJK/Hangul character.
  An in-word marker is removed only when it is the *only* candidate of its kind in the string
  (a label has one mnemonic) and does not look like part of an identifier or a notation: ``__``
  (a literal ``_`` in GTK); a ``_`` joining two all-lowercase or all-uppercase parts
  (``file_name``, ``LC_ALL``, ``ИМЯ_ФАЙЛА``), an upper-case prefix to a word (``KP_Up``) or a
  lower-case part to a capitalized one (``lokales_Schema``); a marker next to a digit
  (``Krb5_safe``, ``~5``), between letters of a caseless script (``소스_별칭``: CJK and Indic
  translations use the ``(_X)`` suffix instead), before a lone letter (``~N``) or after ``%``
  (strftime ``%_d``); ``&`` between capitals (``R&D``, ``AT&T``); anything inside or touching a
  placeholder, URL, e-mail address, path or HTML entity. ``Sa_ve``, ``E_xit``, ``О_тменить``,
  ``Save &As``, ``Spei~chern`` lose the marker. Checked by eye on samples of the ~2,600 strings
  of the de/ja/ko/ru/fr/es catalogs it changes; a known miss is a symbol name starting a word in
  prose (``when _gp not defined``).
- **Placeholders** stay in the text (the encoder sees ``%s`` on both sides, which is harmless and
  keeps the text faithful) but can be extracted with ``placeholders``: printf (``%s %d %1$s %'d %lu
  %.2f %Id %<PRIu64>``, Python ``%(name)s``), Qt (``%1``, ``%L1``, ``%n``), brace (``{name}``,
  ``{0}``, ``{0:.2f}``, ``{}``; not ``\\x{HH}``, a regex escape) and dollar (``${var}``). ``%%``,
  ``{{`` and ``}}`` are escapes, not placeholders. Not recognised, on purpose: the space flag
  (``% d``: "50% done" is prose) and bare ``$HOME`` (shell variables in help text, which
  translators write with or without the ``$``).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from labse_core.text.scripts import translator

KEY_VERSION = 1
"""Bump when ``key_text`` changes: old and new keys must not be compared."""


class NormalizeConfig(BaseModel):
    """How ``normalize_text`` rewrites one side of a pair (the text that is stored and trained on)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unicode_form: Literal["NFC", "NFKC"] = "NFC"
    """Unicode normal form of the stored text. NFC is lossless; NFKC also folds compatibility
    characters (``ﬁ``, ``²``, fullwidth forms). Keys always use NFKC, whatever this says."""
    strip_accelerators: bool = True
    """Remove gettext/Qt/LibreOffice keyboard-accelerator markers (``_File``, ``&Open``, ``~Save``,
    ``ファイル(_F)``) by the heuristics in the module docstring."""
    accelerator_markers: str = Field(default="_&~", pattern=r"^[_&~]*$")
    """Which marker characters are accelerators (subset of ``_&~``)."""
    unescape_newlines: bool = True
    """Turn literal ``\\n``, ``\\t``, ``\\r`` (backslash + letter) into a space."""
    remove_control: bool = True
    """Remove control (Cc) and format (Cf) characters except ZWJ/ZWNJ; whitespace controls
    (tab, newline, ...) become spaces."""
    collapse_whitespace: bool = True
    """Map every Unicode space to ``' '``, collapse runs, strip both ends."""


DEFAULT_NORMALIZE = NormalizeConfig()
_KEY_CONFIG = NormalizeConfig(unicode_form="NFKC")

# ------------------------------------------------------------------------------------------------
# Patterns
# ------------------------------------------------------------------------------------------------

# printf: %[pos$][flags][width][.prec][len]conv ; the space flag is left out on purpose ("50% done").
_PRINTF = (
    r"%(?:\d+\$)?[-+0#'I]*(?:\d+|\*(?:\d+\$)?)?(?:\.(?:\d+|\*(?:\d+\$)?))?"
    r"(?:hh|h|ll|l|L|q|j|z|Z|t)?[diouxXeEfFgGaAcspnm]"
    r"|%<PRI[a-zA-Z0-9]+>"  # gettext's portable <inttypes.h> macros
    r"|%\([A-Za-z_]\w*\)[-+0#]*(?:\d+)?(?:\.\d+)?[diouxXeEfFgGcrsa]"  # Python %(name)s
)
_QT = r"%L?\d{1,2}(?!\d)"
_BRACE = r"(?<!\\[A-Za-z])\{(?:[A-Za-z_][\w.]*|\d+)?(?:![rsa])?(?::[^{}\s]*)?\}"
_DOLLAR = r"\$\{[^{}\s]+\}"
# Escapes first, so that "%%d" is a literal percent then "d" and "{{x}}" is literal text.
PLACEHOLDER_RE = re.compile(rf"(?P<esc>%%|\{{\{{|\}}\}})|(?P<ph>{_PRINTF}|{_QT}|{_BRACE}|{_DOLLAR})")
# One group: findall gives each placeholder as written, or "" for an escape.
_PH_FINDALL = re.compile(rf"(?:%%|\{{\{{|\}}\}})|({_PRINTF}|{_QT}|{_BRACE}|{_DOLLAR})").findall

# ASCII character classes on purpose: in CJK text a URL or path is often followed by a word with
# no space between ("/proc/net/snmpを開けません"), and \w would swallow it.
URL_RE = re.compile(
    r"\b(?:[A-Za-z][A-Za-z0-9+.\-]*://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&()*+,;=%]*[A-Za-z0-9\-_~/#=&%+]"
)
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
# /usr/share/foo, ~/.config, ./configure, ../x, C:\Windows ; a lone "/" or "and/or" is not a path.
PATH_RE = re.compile(
    r"(?<![\w/])(?:~|\.\.?)?/[A-Za-z0-9_.\-+~@]+(?:/[A-Za-z0-9_.\-+~@]*)*|\b[A-Za-z]:\\[A-Za-z0-9_\\.\-]+"
)
ENTITY_RE = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,7}|#\d{1,7}|#[xX][0-9A-Fa-f]{1,6});")
# Markup: HTML and Pango tag names only, so usage metavariables such as "<worktree>" or "<file>"
# (translated text in git/coreutils catalogs) are not mistaken for tags.
_TAGS = (
    "a|abbr|b|big|blockquote|body|br|caption|center|cite|code|dd|del|div|dl|dt|em|font|h[1-6]|head|hr|"
    "html|i|img|input|ins|kbd|li|link|mark|meta|ol|p|pre|q|s|samp|small|span|strike|strong|sub|sup|"
    "table|tbody|td|th|thead|title|tr|tt|u|ul|var"
)
TAG_RE = re.compile(rf"</?(?:{_TAGS})(?:\s+[^<>]*)?/?>", re.IGNORECASE)

# Spans an accelerator marker must not be searched in.
_PROTECTED_RE = re.compile(
    "|".join(p.pattern for p in (URL_RE, EMAIL_RE, PATH_RE, ENTITY_RE, TAG_RE))
    + rf"|{PLACEHOLDER_RE.pattern}"
)
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f"


@functools.lru_cache(maxsize=8)
def _cjk_accel_re(markers: str) -> re.Pattern[str]:
    """ "ファイル(_F)", "開く(&O)" (a suffix with one of ``markers``), or "ファイル(F)" after a CJK letter."""
    with_marker = rf"\s*[(（]\s*[{re.escape(markers)}][A-Za-z0-9]\s*[)）]|" if markers else ""
    return re.compile(rf"{with_marker}(?<=[{_CJK}])\s*[(（][A-Z][)）]")


_ESCAPED_WS_RE = re.compile(r"(?<!\\)\\[ntr]")


# Planes 0, 1 and 14 hold every control, format and decimal-digit character; scanning only them
# keeps import fast.
_PLANES = [*range(0xD800), *range(0xE000, 0x20000), *range(0xE0000, 0xE1000)]


def _build_control_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for cp in _PLANES:
        ch = chr(cp)
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf") and cp not in (0x200C, 0x200D):
            table[cp] = " " if ch.isspace() else None
    return table


# ~200 entries, astral tag characters included; whitespace controls become spaces.
_CONTROL_TABLE = _build_control_table()

# Unicode decimal digits (Arabic-Indic, Devanagari, fullwidth, ...) -> ASCII.
_DIGIT_TABLE = {
    cp: str(unicodedata.digit(chr(cp)))
    for cp in _PLANES
    if unicodedata.category(chr(cp)) == "Nd" and not 0x30 <= cp <= 0x39
}
# Punctuation (P*) -> space, for keys. ZWJ/ZWNJ are dropped from keys too.
_KEY_TABLE: dict[int, str | None] = {
    cp: " " for cp in range(0x10000) if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp))[0] == "P"
}
_KEY_TABLE.update({0x200C: None, 0x200D: None})
_remove_control = translator(_CONTROL_TABLE)
_ascii_digits = translator(_DIGIT_TABLE)
punct_to_space = translator(_KEY_TABLE)
"""Every punctuation character (Unicode P*) -> ``' '``; ZWJ/ZWNJ dropped."""
PUNCTUATION = "".join(chr(cp) for cp, v in _KEY_TABLE.items() if v == " ")
"""Every BMP punctuation character (Unicode categories P*)."""

# ------------------------------------------------------------------------------------------------
# Accelerators
# ------------------------------------------------------------------------------------------------

_MARKER_RE = {
    # not doubled, not escaped, not a strftime flag ("%_d", "%~x")
    "_": re.compile(r"(?<![_\\%])_(?=[^\W_])"),
    "&": re.compile(r"(?<![&%])&(?=[^\W_])"),
    "~": re.compile(r"(?<![~%])~(?=[^\W\d_])"),
}
_ALNUM_RUN_LEFT = re.compile(r"[^\W_]+$")
_ALNUM_RUN_RIGHT = re.compile(r"[^\W_]+")


def _is_identifier_like(marker: str, s: str, i: int) -> bool:
    """True if the marker at ``s[i]`` is not an accelerator: it sits inside an identifier or a
    metavariable (``file_name``, ``LC_ALL``, ``ИМЯ_ФАЙЛА``, ``lokales_Schema``, ``소스_별칭``,
    ``Krb5_safe``), an abbreviation (``R&D``), or precedes a lone letter (``~N``)."""
    rw = _ALNUM_RUN_RIGHT.match(s, i + 1).group()
    if len(rw) < 2 and not rw.isdigit():
        return True
    left = _ALNUM_RUN_LEFT.search(s, 0, i)
    if left is None:  # at the start of a word: "_File", "&Open", "~Save"
        return False
    lw = left.group()
    a, b = lw[-1], rw[0]
    if a.isdigit() or b.isdigit():
        return True
    # Scripts without case (CJK, Hangul, Indic, Arabic) mark accelerators with a "(_X)" suffix,
    # never inside a word.
    if not (a.isupper() or a.islower()) or not (b.isupper() or b.islower()):
        return True
    if marker == "&":
        return a.isupper() and b.isupper()
    if marker == "_":
        # An in-word mnemonic sits inside one word ("Sa_ve", "O_rdner", "Papiere_inzug"); two
        # words joined are an identifier, as is an upper-case prefix (X11 keysyms: "KP_Up").
        return (
            (lw.islower() and rw.islower())
            or (lw.isupper() and (rw.isupper() or len(lw) > 1))
            or (a.islower() and b.isupper())
        )
    return False


def strip_accelerators(s: str, markers: str = "_&~") -> str:
    """Remove keyboard-accelerator markers (rules in the module docstring).

    >>> [strip_accelerators(x) for x in ("_File", "Sa_ve As", "&Open", "~Save", "ファイル(_F)")]
    ['File', 'Save As', 'Open', 'Save', 'ファイル']
    >>> [strip_accelerators(x) for x in ("file_name", "LC_ALL", "R&D", "_Open or _Close", "%s_%d")]
    ['file_name', 'LC_ALL', 'R&D', '_Open or _Close', '%s_%d']
    >>> [strip_accelerators(x) for x in ("iconv_openに失敗", "ИМЯ_ФАЙЛА", "소스_별칭", "KP_Up", "+N or ~N", "%lld~w")]
    ['iconv_openに失敗', 'ИМЯ_ФАЙЛА', '소스_별칭', 'KP_Up', '+N or ~N', '%lld~w']

    """
    if "(" in s or "（" in s:
        s = _cjk_accel_re(markers).sub("", s)
    if not (("_" in s and "_" in markers) or ("&" in s and "&" in markers) or ("~" in s and "~" in markers)):
        return s
    protected = [(m.start(), m.end()) for m in _PROTECTED_RE.finditer(s)]
    for marker in markers:
        if marker not in s:
            continue
        # Not inside, nor touching, a placeholder/URL/path/entity ("%lld~weeks", "{file_name}").
        cands = [
            m.start()
            for m in _MARKER_RE[marker].finditer(s)
            if not any(a - 1 <= m.start() <= b for a, b in protected)
        ]
        if len(cands) != 1 or _is_identifier_like(marker, s, cands[0]):
            continue
        i = cands[0]
        s = s[:i] + s[i + 1 :]
        protected = [(a - (a > i), b - (b > i)) for a, b in protected]
    return s


# ------------------------------------------------------------------------------------------------
# Normalization
# ------------------------------------------------------------------------------------------------


def normalize_text(s: str, cfg: NormalizeConfig = DEFAULT_NORMALIZE) -> str:
    """The stored form of one side of a pair (see the module docstring for each step).

    >>> normalize_text("  _Open\\u00a0%s…\\\\n\\u200b(Ctrl+O) ")
    'Open %s… (Ctrl+O)'
    """
    if cfg.unescape_newlines and "\\" in s:
        s = _ESCAPED_WS_RE.sub(" ", s)
    if cfg.remove_control and not s.isprintable():  # isprintable: no Cc/Cf/Zl/Zp, no space but ' '
        s = _remove_control(s)
    if not s.isascii() and not unicodedata.is_normalized(cfg.unicode_form, s):
        s = unicodedata.normalize(cfg.unicode_form, s)
    if cfg.strip_accelerators and cfg.accelerator_markers:
        s = strip_accelerators(s, cfg.accelerator_markers)
    if cfg.collapse_whitespace:
        s = " ".join(s.split())
    return s


def key_text(s: str) -> str:
    """The readable form behind ``sentence_key``: NFKC, casefolded, accelerators removed,
    punctuation and ZWJ/ZWNJ dropped, whitespace collapsed. Fixed; see ``KEY_VERSION``.

    >>> key_text("_Don’t   SAVE…") == key_text("Don't save")
    True
    """
    s = normalize_text(s, _KEY_CONFIG).casefold()
    if not s.isascii():
        s = unicodedata.normalize("NFKC", s)  # casefold can leave non-NFKC sequences (NFKC_Casefold)
    return " ".join(punct_to_space(s).split())


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def sentence_key(s: str) -> str:
    """Stable 32-hex-digit hash of ``key_text(s)``: find a test sentence in training data."""
    return sentence_key_of(key_text(s))


def sentence_key_of(key: str) -> str:
    """``sentence_key`` from an already computed ``key_text`` (hot paths compute it once per side)."""
    return _digest(f"v{KEY_VERSION}\x00{key}")


def dedupe_key(src: str, tgt: str) -> str:
    """Stable 32-hex-digit hash of the (src, tgt) pair of key texts. Ordered: (a, b) != (b, a).
    Meant to be compared within one language pair."""
    return dedupe_key_of(key_text(src), key_text(tgt))


def dedupe_key_of(src_key: str, tgt_key: str) -> str:
    """``dedupe_key`` from already computed ``key_text`` of each side."""
    return _digest(f"v{KEY_VERSION}\x00{src_key}\x00{tgt_key}")


# ------------------------------------------------------------------------------------------------
# Placeholders and numbers
# ------------------------------------------------------------------------------------------------


def placeholders(s: str) -> Counter[str]:
    """Multiset of placeholder tokens as written (``%1$s``, ``{name}``, ``${var}``), escapes excluded.

    >>> sorted(placeholders("%1$s has %'d items, {name} in ${dir}; 100%% done").elements())
    ['${dir}', "%'d", '%1$s', '{name}']
    """
    return Counter(t for t in _PH_FINDALL(s) if t)


def placeholder_list(s: str) -> list[str]:
    """Placeholder tokens as written, in order (cheap to compare when both sides agree)."""
    if "%" not in s and "{" not in s and "$" not in s:
        return []
    return [t for t in _PH_FINDALL(s) if t]


_PRINTF_PARTS_RE = re.compile(r"%(?:\d+\$)?[-+0#'I]*(?:\d+|\*(?:\d+\$)?)?(?:\.(?:\d+|\*(?:\d+\$)?))?")
_QT_RE = re.compile(_QT)
_CONV_CASE = str.maketrans("XEFGAiu", "xefgadd")
_BRACE_FORMAT_RE = re.compile(r"(?:![rsa])?(?::[^{}]*)?\}$")


def canonical_placeholder(tok: str) -> str:
    """The part of a placeholder a translation must keep: printf without argument position, flags,
    width or precision (translators may reorder arguments with ``%2$s``, add the ``'``/``I`` flags
    for locale digits, or change a column width) and with one spelling per kind of number (``%X`` ->
    ``%x``, ``%u``/``%i`` -> ``%d``); brace without its format spec; Qt without ``L``.

    >>> [canonical_placeholder(t) for t in ("%2$-10s", "%'lu", "%.2f", "%02X", "{0:>8}", "{name!r}", "%L1")]
    ['%s', '%ld', '%f', '%x', '{0}', '{name}', '%1']
    """
    if tok.startswith("%"):
        if tok.startswith("%<") or tok.startswith("%("):
            return tok
        if _QT_RE.fullmatch(tok):
            return "%" + tok.lstrip("%L")
        # "%02X" / "%02x" differ in letter case, %d / %i / %u in signedness: the same number in the text
        return _PRINTF_PARTS_RE.sub("%", tok, count=1).translate(_CONV_CASE)
    if tok.startswith("{") and tok != "{}":
        return _BRACE_FORMAT_RE.sub("}", tok)
    return tok


def canonical_placeholders(s: str) -> Counter[str]:
    """``placeholders(s)`` with every token passed through ``canonical_placeholder``."""
    return Counter(canonical_placeholder(t) for t in _PH_FINDALL(s) if t)


_THOUSANDS_SEP_RE = re.compile(r"(?<=[0-9])[,.'’\u066c\u00a0\u202f\u2009 ](?=[0-9]{3}(?![0-9]))")
_DIGITS_RE = re.compile(r"[0-9]+")
_NON_ASCII_DIGIT_RE = re.compile(r"(?![0-9])\d")


def numbers(s: str) -> Counter[str]:
    """Multiset of the numbers written in digits, comparable across scripts and locales.

    Placeholders are removed first (``%1$s``, ``{0}``, ``%.2f`` are not numbers); every Unicode
    decimal digit becomes ASCII (``٤٢``, ``४२`` -> ``42``); a thousands separator (``, . ' ’``,
    U+066C, no-break/thin space before exactly three digits) is dropped so ``1,000``, ``1.000`` and
    ``1 000`` agree; leading zeros are dropped (``07`` == ``7``). Decimal parts stay separate
    numbers: ``1.5`` and ``1,5`` both give ``{1, 5}``.

    >>> sorted(numbers("%1$s: ٤٢ of 1,000 (v2.05)").elements())
    ['1000', '2', '42', '5']
    """
    if "%" in s or "{" in s or "$" in s:
        s = PLACEHOLDER_RE.sub(" ", s)
    if not s.isascii() and _NON_ASCII_DIGIT_RE.search(s):
        s = _ascii_digits(s)
    s = _THOUSANDS_SEP_RE.sub("", s)
    return Counter(d.lstrip("0") or "0" for d in _DIGITS_RE.findall(s))
