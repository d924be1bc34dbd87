"""One language-code scheme for the whole platform.

Canonical code: the ISO 639-1 code where the language has one (``de``), else ISO 639-3 (``ast``),
else an ISO 639-5 collective code (``son``); followed by an ISO 15924 script subtag only when the
text is in a script other than the language's usual one (``sr-Latn``, ``zh-Hant``, ``uz-Cyrl``).
Regions are dropped (``pt_BR`` -> ``pt``): a sentence encoder treats them as one language; the
original locale string is kept beside the code in every dataset.

Inputs understood: gettext locales (``zh_CN``, ``pt_BR``, ``sr@latin``, ``ca@valencia``),
BCP-47 tags (``zh-Hant-TW``), ISO 639-1/2/3 codes and the individual-language codes the Tatoeba
test set uses for macrolanguages (``cmn``, ``pes``, ``zsm``, ``swh``, ``lvs``).
"""

from __future__ import annotations

import functools
import re

import pycountry


class UnknownLanguage(ValueError):
    """A code that maps to no ISO 639 language."""


# Deprecated or alternative codes -> canonical language (before the ISO lookup).
ALIASES: dict[str, str] = {
    "mo": "ro",  # Moldavian: retired, written Romanian
    "no": "nb",  # gettext's "no" catalogs are Bokmål
    "iw": "he",
    "in": "id",
    "ji": "yi",
    "jw": "jv",
    "sh": "sr-Latn",  # Serbo-Croatian catalogs are Latin-script Serbian in practice
    # Tatoeba (and other 639-3 sources) use individual languages of a macrolanguage; the
    # canonical code is the macrolanguage's 639-1 code, which is how gettext names them.
    "cmn": "zh",
    "pes": "fa",
    "prs": "fa",
    "zsm": "ms",
    "swh": "sw",
    "lvs": "lv",
    "ekk": "et",
    "arb": "ar",
    "azj": "az",
    "khk": "mn",
    "nob": "nb",
    "nno": "nn",
}

# Retired ISO 639-3 codes still used by evaluation sets, kept as languages of their own
# (Tatoeba has separate test sets for kzj, Coastal Kadazan, and dtp, Kadazan Dusun).
RETIRED_CODES: frozenset[str] = frozenset({"kzj"})

# gettext "@modifier" -> script subtag ("" = same language, no subtag: a dialect or spelling).
MODIFIER_SCRIPTS: dict[str, str] = {
    "latin": "Latn",
    "latn": "Latn",
    "cyrillic": "Cyrl",
    "cyrl": "Cyrl",
    "iqtelif": "Latn",  # Tatar in the İQTElif Latin alphabet
    "devanagari": "Deva",
    "arabic": "Arab",
    "shaw": "Shaw",  # English in the Shavian alphabet
    "ije": "",  # Serbian, ijekavian pronunciation
    "valencia": "",
    "quot": "",  # English with typographic quotes
    "boldquot": "",
    "euro": "",
}

# The usual script of languages written in more than one; a subtag equal to it is dropped.
DEFAULT_SCRIPT: dict[str, str] = {
    "sr": "Cyrl",
    "zh": "Hans",
    "uz": "Latn",
    "tt": "Cyrl",
    "be": "Cyrl",
    "pa": "Guru",
    "az": "Latn",
    "ku": "Latn",
    "mn": "Cyrl",
    "sd": "Arab",
    "ks": "Arab",
    "ha": "Latn",
    "ms": "Latn",
    "en": "Latn",
}

# Regions that imply a non-default script.
REGION_SCRIPTS: dict[tuple[str, str], str] = {
    ("zh", "TW"): "Hant",
    ("zh", "HK"): "Hant",
    ("zh", "MO"): "Hant",
    ("pa", "PK"): "Arab",
    ("az", "IR"): "Arab",
    ("sd", "IN"): "Deva",
}

_LOCALE_RE = re.compile(
    r"^(?P<lang>[A-Za-z]{2,3})"
    r"(?:[_-](?P<script>[A-Za-z]{4}))?"
    r"(?:[_-](?P<region>[A-Za-z]{2}|\d{3}))?"
    r"(?:\.(?P<charset>[A-Za-z0-9_-]+))?"
    r"(?:@(?P<modifier>[A-Za-z0-9_-]+))?$"
)


@functools.lru_cache(maxsize=4096)
def iso_base(code: str) -> str:
    """ISO 639-1 if it exists, else the 639-3 / 639-5 code; raises ``UnknownLanguage``."""
    code = code.lower()
    code = ALIASES.get(code, code).split("-")[0]
    if code in RETIRED_CODES:
        return code
    if len(code) == 2:
        if pycountry.languages.get(alpha_2=code) is not None:
            return code
        raise UnknownLanguage(f"{code!r} is not an ISO 639-1 code")
    lang = pycountry.languages.get(alpha_3=code)
    if lang is not None:
        return getattr(lang, "alpha_2", None) or code
    # ISO 639-2/B codes (ger, fre, chi ...) that differ from the 639-3 ones.
    lang = pycountry.languages.get(bibliographic=code)
    if lang is not None:
        return getattr(lang, "alpha_2", None) or lang.alpha_3
    if pycountry.language_families.get(alpha_3=code) is not None:
        return code
    raise UnknownLanguage(f"{code!r} is not an ISO 639 language code")


@functools.lru_cache(maxsize=4096)
def normalize(code: str) -> str:
    """Canonical language code for a locale, BCP-47 tag or ISO code.

    >>> [normalize(x) for x in ("de_CH", "pt_BR", "sr@latin", "zh_TW", "zh_CN", "cmn", "mo", "deu")]
    ['de', 'pt', 'sr-Latn', 'zh-Hant', 'zh', 'zh', 'ro', 'de']
    """
    raw = code.strip()
    m = _LOCALE_RE.match(raw)
    if not m:
        raise UnknownLanguage(f"{code!r} is not a language code or locale")
    alias = ALIASES.get(m["lang"].lower())
    if alias and "-" in alias:  # an alias that already carries a script, e.g. sh -> sr-Latn
        base, script = alias.split("-", 1)
    else:
        base, script = iso_base(m["lang"]), None
    if m["script"]:
        script = m["script"].title()
    if m["modifier"]:
        mod = m["modifier"].lower()
        if mod not in MODIFIER_SCRIPTS:
            raise UnknownLanguage(f"{code!r}: unknown locale modifier @{m['modifier']}")
        script = MODIFIER_SCRIPTS[mod] or script
    if script is None and m["region"]:
        script = REGION_SCRIPTS.get((base, m["region"].upper()))
    if script and script != DEFAULT_SCRIPT.get(base):
        return f"{base}-{script}"
    return base


def base_language(code: str) -> str:
    """The language without its script subtag: ``sr-Latn`` -> ``sr``."""
    return normalize(code).split("-")[0]


def language_name(code: str) -> str:
    """English name for display (``sr-Latn`` -> ``Serbian (Latn)``)."""
    canon = normalize(code)
    base, _, script = canon.partition("-")
    rec = pycountry.languages.get(alpha_2=base) if len(base) == 2 else pycountry.languages.get(alpha_3=base)
    rec = rec or pycountry.language_families.get(alpha_3=base)
    name = rec.name if rec else base
    return f"{name} ({script})" if script else name
