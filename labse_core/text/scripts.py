"""Which writing system a string is in, and which ones a language is expected to use.

No dependency beyond the standard library: Python's ``unicodedata`` has no Script property, so
``RANGES`` below is a compact table of Unicode *blocks* -> script (block-level is enough to tell
Cyrillic from Latin from Devanagari; it is not the exact per-character Script property, e.g. the
Katakana-Hiragana prolonged sound mark "ー", which Unicode files under Common, counts as Katakana
here, and U+3005 "々" counts as Han).

What is counted: letters and combining marks (categories ``L*``/``M*``) of a script's own blocks.
Digits, punctuation, symbols, spaces, format characters and the generic combining blocks
(U+0300-036F and friends, Unicode's "Inherited") are not counted: ``"%s: 42"`` has no script.
A letter in a block the table does not name counts as ``"Other"``.

Speed: the BMP is precomputed into one 64K-entry translation table (code point -> one-character
script id, or deleted), so ``script_ids`` is a single ``str.translate`` (``bytes.translate`` for
Latin-1 text, see ``translator``) and counting is ``str.count`` per script present: C loops, ~1 us
for a short UI string. Only characters above U+FFFF (rare: emoji, Han extension B+, Shavian) go
through ``bisect`` over ``RANGES``.
"""

from __future__ import annotations

import bisect
import functools
import unicodedata
from collections import Counter
from collections.abc import Callable

# (first code point, last code point, script). Sorted, non-overlapping; gaps are "no script".
RANGES: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x024F, "Latin"),  # Basic Latin letters .. Latin Extended-B (non-letters not counted)
    (0x0250, 0x02AF, "Latin"),  # IPA extensions
    (0x0370, 0x03FF, "Greek"),  # Greek and Coptic
    (0x0400, 0x052F, "Cyrillic"),
    (0x0530, 0x058F, "Armenian"),
    (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"),
    (0x0700, 0x074F, "Syriac"),
    (0x0750, 0x077F, "Arabic"),
    (0x0780, 0x07BF, "Thaana"),
    (0x07C0, 0x07FF, "Nko"),
    (0x0800, 0x083F, "Samaritan"),
    (0x0840, 0x085F, "Mandaic"),
    (0x0860, 0x086F, "Syriac"),
    (0x0870, 0x08FF, "Arabic"),
    (0x0900, 0x097F, "Devanagari"),
    (0x0980, 0x09FF, "Bengali"),
    (0x0A00, 0x0A7F, "Gurmukhi"),
    (0x0A80, 0x0AFF, "Gujarati"),
    (0x0B00, 0x0B7F, "Oriya"),
    (0x0B80, 0x0BFF, "Tamil"),
    (0x0C00, 0x0C7F, "Telugu"),
    (0x0C80, 0x0CFF, "Kannada"),
    (0x0D00, 0x0D7F, "Malayalam"),
    (0x0D80, 0x0DFF, "Sinhala"),
    (0x0E00, 0x0E7F, "Thai"),
    (0x0E80, 0x0EFF, "Lao"),
    (0x0F00, 0x0FFF, "Tibetan"),
    (0x1000, 0x109F, "Myanmar"),
    (0x10A0, 0x10FF, "Georgian"),
    (0x1100, 0x11FF, "Hangul"),  # Jamo
    (0x1200, 0x139F, "Ethiopic"),
    (0x13A0, 0x13FF, "Cherokee"),
    (0x1400, 0x167F, "Canadian_Aboriginal"),
    (0x1680, 0x169F, "Ogham"),
    (0x16A0, 0x16FF, "Runic"),
    (0x1700, 0x171F, "Tagalog"),
    (0x1780, 0x17FF, "Khmer"),
    (0x1800, 0x18AF, "Mongolian"),
    (0x18B0, 0x18FF, "Canadian_Aboriginal"),
    (0x1900, 0x194F, "Limbu"),
    (0x1950, 0x197F, "Tai_Le"),
    (0x1980, 0x19DF, "New_Tai_Lue"),
    (0x19E0, 0x19FF, "Khmer"),
    (0x1A00, 0x1A1F, "Buginese"),
    (0x1A20, 0x1AAF, "Tai_Tham"),
    (0x1B00, 0x1B7F, "Balinese"),
    (0x1B80, 0x1BBF, "Sundanese"),
    (0x1BC0, 0x1BFF, "Batak"),
    (0x1C00, 0x1C4F, "Lepcha"),
    (0x1C50, 0x1C7F, "Ol_Chiki"),
    (0x1C80, 0x1C8F, "Cyrillic"),
    (0x1C90, 0x1CBF, "Georgian"),  # Mtavruli capitals
    (0x1CC0, 0x1CCF, "Sundanese"),
    (0x1D00, 0x1DBF, "Latin"),  # phonetic extensions
    (0x1E00, 0x1EFF, "Latin"),  # Latin Extended Additional (Vietnamese)
    (0x1F00, 0x1FFF, "Greek"),
    (0x2C00, 0x2C5F, "Glagolitic"),
    (0x2C60, 0x2C7F, "Latin"),
    (0x2C80, 0x2CFF, "Coptic"),
    (0x2D00, 0x2D2F, "Georgian"),
    (0x2D30, 0x2D7F, "Tifinagh"),
    (0x2D80, 0x2DDF, "Ethiopic"),
    (0x2DE0, 0x2DFF, "Cyrillic"),
    (0x2E80, 0x2FDF, "Han"),  # radicals (symbols: not counted)
    (0x3000, 0x303F, "Han"),  # CJK symbols: only 々 〆 〇 〻 are letters
    (0x3040, 0x309F, "Hiragana"),
    (0x30A0, 0x30FF, "Katakana"),
    (0x3100, 0x312F, "Bopomofo"),
    (0x3130, 0x318F, "Hangul"),  # compatibility jamo
    (0x3190, 0x319F, "Han"),  # kanbun
    (0x31A0, 0x31BF, "Bopomofo"),
    (0x31C0, 0x31EF, "Han"),
    (0x31F0, 0x31FF, "Katakana"),
    (0x3400, 0x4DBF, "Han"),  # extension A
    (0x4E00, 0x9FFF, "Han"),
    (0xA000, 0xA4CF, "Yi"),
    (0xA4D0, 0xA4FF, "Lisu"),
    (0xA500, 0xA63F, "Vai"),
    (0xA640, 0xA69F, "Cyrillic"),
    (0xA6A0, 0xA6FF, "Bamum"),
    (0xA720, 0xA7FF, "Latin"),
    (0xA800, 0xA82F, "Syloti_Nagri"),
    (0xA8E0, 0xA8FF, "Devanagari"),
    (0xA960, 0xA97F, "Hangul"),
    (0xA980, 0xA9DF, "Javanese"),
    (0xA9E0, 0xA9FF, "Myanmar"),
    (0xAA00, 0xAA5F, "Cham"),
    (0xAA60, 0xAA7F, "Myanmar"),
    (0xAA80, 0xAADF, "Tai_Viet"),
    (0xAAE0, 0xAAFF, "Meetei_Mayek"),
    (0xAB00, 0xAB2F, "Ethiopic"),
    (0xAB30, 0xAB6F, "Latin"),
    (0xAB70, 0xABBF, "Cherokee"),
    (0xABC0, 0xABFF, "Meetei_Mayek"),
    (0xAC00, 0xD7AF, "Hangul"),  # syllables
    (0xD7B0, 0xD7FF, "Hangul"),
    (0xF900, 0xFAFF, "Han"),  # compatibility ideographs
    (0xFB00, 0xFB06, "Latin"),  # ligatures ﬁ ﬂ
    (0xFB13, 0xFB17, "Armenian"),
    (0xFB1D, 0xFB4F, "Hebrew"),
    (0xFB50, 0xFDFF, "Arabic"),  # presentation forms A
    (0xFE70, 0xFEFF, "Arabic"),  # presentation forms B
    (0xFF21, 0xFF5A, "Latin"),  # fullwidth A-Z a-z
    (0xFF66, 0xFF9F, "Katakana"),  # halfwidth katakana
    (0xFFA0, 0xFFDC, "Hangul"),  # halfwidth jamo
    (0x10330, 0x1034F, "Gothic"),
    (0x10400, 0x1044F, "Deseret"),
    (0x10450, 0x1047F, "Shavian"),
    (0x10480, 0x104AF, "Osmanya"),
    (0x104B0, 0x104FF, "Osage"),
    (0x1B000, 0x1B16F, "Hiragana"),  # kana supplement / extended (hentaigana)
    (0x1D400, 0x1D7FF, "Latin"),  # mathematical alphanumerics (styled letters)
    (0x1E900, 0x1E95F, "Adlam"),
    (0x1EE00, 0x1EEFF, "Arabic"),
    (0x20000, 0x323AF, "Han"),  # extensions B-H and compatibility supplement
)
OTHER = "Other"

_STARTS = [r[0] for r in RANGES]
SCRIPTS: tuple[str, ...] = tuple(dict.fromkeys([OTHER, *(r[2] for r in RANGES)]))
_ID = {name: i + 1 for i, name in enumerate(SCRIPTS)}  # ids 1..N; 0 = not counted


def _is_counted(cp: int) -> bool:
    return unicodedata.category(chr(cp))[0] in "LM"


def _range_script(cp: int) -> str | None:
    i = bisect.bisect_right(_STARTS, cp) - 1
    if i >= 0 and cp <= RANGES[i][1]:
        return RANGES[i][2]
    return None


def _build_bmp_table() -> dict[int, str | None]:
    out: dict[int, str | None] = dict.fromkeys(range(0x10000))  # None = delete (not counted)
    for cp in range(0x10000):
        if 0xD800 <= cp <= 0xDFFF or not _is_counted(cp):
            continue
        name = _range_script(cp)
        if name is None:
            # Letters outside every named block: the Spacing Modifier Letters (ʼ ˈ), superscripts,
            # letterlike symbols and the generic combining blocks are script-neutral ("Common"/
            # "Inherited"); a real letter of an unlisted script counts as Other.
            if 0x02B0 <= cp <= 0x036F or 0x1AB0 <= cp <= 0x1AFF or 0x1CD0 <= cp <= 0x1CFF:
                continue
            if 0x1DC0 <= cp <= 0x1DFF or 0x2000 <= cp <= 0x2BFF or 0xFE00 <= cp <= 0xFE2F:
                continue
            if 0xA700 <= cp <= 0xA71F or 0xA830 <= cp <= 0xA83F:
                continue
            name = OTHER
        out[cp] = chr(_ID[name])
    return out


def translator(mapping: dict[int, str | None]) -> Callable[[str], str]:
    """``lambda s: s.translate(mapping)``, faster for Latin-1 text.

    ``str.translate`` with a dict costs ~80 ns per character (a dict lookup each); when the text
    fits in Latin-1 (English, most Western European text) ``bytes.translate`` with a 256-entry
    table does the same in ~1 ns per character. Used for every per-character table in this package.
    """
    table, delete = bytearray(range(256)), bytearray()
    for cp in range(256):
        v = mapping.get(cp, chr(cp))
        if v is None:
            delete.append(cp)
        elif len(v) == 1 and ord(v) < 256:
            table[cp] = ord(v)
        else:
            return lambda s: s.translate(mapping)
    btable, bdelete = bytes(table), bytes(delete)

    def translate(s: str) -> str:
        try:
            b = s.encode("latin-1")
        except UnicodeEncodeError:
            return s.translate(mapping)
        return b.translate(btable, bdelete).decode("latin-1")

    return translate


# Every BMP code point -> its script id as a 1-char string, or None (deleted: not counted). A code
# point above U+FFFF is missing from the table, which str.translate treats as "leave unchanged".
_BMP = _build_bmp_table()
_to_ids = translator(_BMP)


SCRIPT_ID: dict[str, str] = {name: chr(i) for name, i in _ID.items()}
"""Script name -> the one-character id ``script_ids`` writes for it."""


def _astral_id(ch: str) -> str:
    cp = ord(ch)
    if cp < 0x10000:
        return ch
    return SCRIPT_ID[_range_script(cp) or OTHER] if _is_counted(cp) else ""


def script_ids(s: str) -> str:
    """``s`` with every counted character replaced by its script's id and everything else dropped:
    ``len(script_ids(s))`` is the number of letters, ``.count(SCRIPT_ID["Han"])`` the Han ones.
    The low-level form behind ``script_counts``, for callers that count a few scripts in a hot loop."""
    t = _to_ids(s)
    if not t.isascii():  # an astral character, left unchanged by translate: classify it the slow way
        t = "".join(_astral_id(ch) for ch in t)
    return t


def script_counts(s: str) -> Counter[str]:
    """Number of counted characters (letters and marks) per script name.

    >>> sorted(script_counts("GNOME の設定 42%").items())
    [('Han', 2), ('Hiragana', 1), ('Latin', 5)]
    """
    t = script_ids(s)
    # set + str.count beats Counter(t): t holds one to three distinct ids in practice.
    return Counter({SCRIPTS[ord(ch) - 1]: t.count(ch) for ch in set(t)})


def dominant_script(s: str) -> str | None:
    """The script with the most counted characters, or None if there are none (ties: by name)."""
    counts = script_counts(s)
    return min(counts, key=lambda name: (-counts[name], name)) if counts else None


# ------------------------------------------------------------------------------------------------
# Expected scripts per language
# ------------------------------------------------------------------------------------------------

# ISO 15924 subtag (as langcodes.normalize writes it) -> scripts of this module.
ISO15924: dict[str, frozenset[str]] = {
    "Latn": frozenset({"Latin"}),
    "Cyrl": frozenset({"Cyrillic"}),
    "Grek": frozenset({"Greek"}),
    "Arab": frozenset({"Arabic"}),
    "Hebr": frozenset({"Hebrew"}),
    "Deva": frozenset({"Devanagari"}),
    "Beng": frozenset({"Bengali"}),
    "Guru": frozenset({"Gurmukhi"}),
    "Gujr": frozenset({"Gujarati"}),
    "Orya": frozenset({"Oriya"}),
    "Taml": frozenset({"Tamil"}),
    "Telu": frozenset({"Telugu"}),
    "Knda": frozenset({"Kannada"}),
    "Mlym": frozenset({"Malayalam"}),
    "Sinh": frozenset({"Sinhala"}),
    "Thai": frozenset({"Thai"}),
    "Laoo": frozenset({"Lao"}),
    "Tibt": frozenset({"Tibetan"}),
    "Mymr": frozenset({"Myanmar"}),
    "Geor": frozenset({"Georgian"}),
    "Armn": frozenset({"Armenian"}),
    "Ethi": frozenset({"Ethiopic"}),
    "Khmr": frozenset({"Khmer"}),
    "Thaa": frozenset({"Thaana"}),
    "Cher": frozenset({"Cherokee"}),
    "Cans": frozenset({"Canadian_Aboriginal"}),
    "Tfng": frozenset({"Tifinagh"}),
    "Mong": frozenset({"Mongolian"}),
    "Hang": frozenset({"Hangul"}),
    "Kore": frozenset({"Hangul", "Han"}),
    "Hani": frozenset({"Han"}),
    "Hans": frozenset({"Han"}),
    "Hant": frozenset({"Han", "Bopomofo"}),
    "Jpan": frozenset({"Han", "Hiragana", "Katakana"}),
    "Hira": frozenset({"Hiragana"}),
    "Kana": frozenset({"Katakana"}),
    "Shaw": frozenset({"Shavian"}),
    "Dsrt": frozenset({"Deseret"}),
    "Adlm": frozenset({"Adlam"}),
    "Nkoo": frozenset({"Nko"}),
    "Olck": frozenset({"Ol_Chiki"}),
    "Syrc": frozenset({"Syriac"}),
    "Glag": frozenset({"Glagolitic"}),
    "Copt": frozenset({"Coptic"}),
    "Goth": frozenset({"Gothic"}),
}

# Script -> languages written in it (canonical codes). Inverted into EXPECTED_SCRIPTS below;
# a language listed under several scripts expects any of them.
_BY_SCRIPT: dict[str, str] = {
    "Latin": (
        "ace ach af ak an ang arq ast ay az bar bcl ber bi br bs ca cbk ceb ch cs csb cy da de dsb dtp"
        " crh ee en eo es et eu ext ff fi fil fj fo fr frp fur fy ga gd gl gn gsw gv ha haw hil hr hsb ht"
        " hu ia id ie ig ilo io is it iu jam jv kab kg ki kl kmr ku kw kzj la lb lfn lg li lij lmo ln"
        " lt ltg lv max mfe mg mh mi ms mt na nah nap nb nds nl nn nov nso ny oc om pam pap pcm pl pms"
        " pt qu rm rn ro rom rw sc scn sco se sg sid sk sl sm sn so son sq ss st su sv sw swg tet tk tl"
        " tn to tpi tr ts tw ty tzl tzm ve vec vi vo wa war wo xh yo za zu ain"
    ),
    "Cyrillic": "ab av ba be bg ce cu cv kbd kk kv ky lfn mdf mhr mk mn myv orv os ru rue sah sr tg tt tyv udm uk",
    "Greek": "el grc",
    "Armenian": "hy",
    "Georgian": "ka",
    "Hebrew": "he hbo yi lad",
    "Arabic": "ar arq ary arz ckb fa glk ks mzn ps sd sdh ug ur",
    "Thaana": "dv",
    "Devanagari": "awa bho brx doi gom hi hne kok mag mai mr ne new sa",
    "Bengali": "as bn mni",
    "Meetei_Mayek": "mni",
    "Gurmukhi": "pa",
    "Gujarati": "gu",
    "Oriya": "or",
    "Tamil": "ta",
    "Telugu": "te",
    "Kannada": "kn tcy",
    "Malayalam": "ml",
    "Sinhala": "si",
    "Thai": "th",
    "Lao": "lo",
    "Tibetan": "bo dz",
    "Myanmar": "my shn mnw",
    "Khmer": "km",
    "Ethiopic": "am byn gez ti tig wal",
    "Hangul": "ko",
    "Han": "ja ko zh yue wuu lzh hak gan",
    "Hiragana": "ja",
    "Katakana": "ja ain",
    "Cherokee": "chr",
    "Canadian_Aboriginal": "iu cr",
    "Tifinagh": "ber tzm zgh",
    "Nko": "nqo",
    "Syriac": "syr",
}

EXPECTED_SCRIPTS: dict[str, frozenset[str]] = {}
for _script, _langs in _BY_SCRIPT.items():
    for _lang in _langs.split():
        EXPECTED_SCRIPTS[_lang] = EXPECTED_SCRIPTS.get(_lang, frozenset()) | {_script}
# Languages written in a script other than their usual one (codes as langcodes.normalize writes them).
EXPECTED_SCRIPTS.update(
    {
        "sr-Latn": ISO15924["Latn"],
        "zh-Hant": ISO15924["Hant"],
        "uz-Cyrl": ISO15924["Cyrl"],
        "pa-Arab": ISO15924["Arab"],
        "az-Arab": ISO15924["Arab"],
        "be-Latn": ISO15924["Latn"],
        "tt-Latn": ISO15924["Latn"],
        "ku-Arab": ISO15924["Arab"],
        "ms-Arab": ISO15924["Arab"],
        "sd-Deva": ISO15924["Deva"],
        "mn-Mong": ISO15924["Mong"],
        "en-Shaw": ISO15924["Shaw"],
        "uz": ISO15924["Latn"],
    }
)
del _script, _langs, _lang


@functools.lru_cache(maxsize=1024)
def expected_scripts(lang: str) -> frozenset[str] | None:
    """Scripts text in ``lang`` is expected to use; None for a language this table does not know
    (callers must then not filter on script).

    ``lang`` is a canonical code (``de``, ``sr-Latn``); other spellings (``deu``, ``sr@latin``,
    ``zh_TW``) are passed through ``langcodes.normalize`` first. A script subtag the table has no
    entry for (``ff-Adlm``) is answered from the subtag alone.
    """
    if lang in EXPECTED_SCRIPTS:
        return EXPECTED_SCRIPTS[lang]
    from labse_core import langcodes

    try:
        canon = langcodes.normalize(lang)
    except langcodes.UnknownLanguage:
        return None
    if canon in EXPECTED_SCRIPTS:
        return EXPECTED_SCRIPTS[canon]
    base, _, subtag = canon.partition("-")
    if subtag:
        return ISO15924.get(subtag)
    return None
