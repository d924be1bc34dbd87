import collections
import doctest
import glob
import os
import random
import unicodedata

import pytest

from labse_core import langcodes
from labse_core.gettext_catalog import catalog_pairs, read_mo
from labse_core.text import scripts
from labse_core.text.scripts import (
    EXPECTED_SCRIPTS,
    RANGES,
    SCRIPT_ID,
    dominant_script,
    expected_scripts,
    script_counts,
    script_ids,
    translator,
)
from tests.conftest import LOCALE_ROOT, named_catalogs

SAMPLES = {
    "Latin": "Hello wörld ça",
    "Cyrillic": "Привет мир",
    "Greek": "Γειά σου κόσμε",
    "Armenian": "Բարեւ աշխարհ",
    "Georgian": "გამარჯობა",
    "Hebrew": "שלום עולם",
    "Arabic": "مرحبا بالعالم",
    "Thaana": "ދިވެހިބަސް",
    "Devanagari": "नमस्ते दुनिया",
    "Bengali": "নমস্কার",
    "Gurmukhi": "ਸਤਿ ਸ੍ਰੀ ਅਕਾਲ",
    "Gujarati": "નમસ્તે",
    "Oriya": "ନମସ୍କାର",
    "Tamil": "வணக்கம்",
    "Telugu": "నమస్కారం",
    "Kannada": "ನಮಸ್ಕಾರ",
    "Malayalam": "നമസ്കാരം",
    "Sinhala": "ආයුබෝවන්",
    "Thai": "สวัสดีชาวโลก",
    "Lao": "ສະບາຍດີ",
    "Tibetan": "བཀྲ་ཤིས་བདེ་ལེགས",
    "Myanmar": "မင်္ဂလာပါ",
    "Khmer": "សួស្តីពិភពលោក",
    "Ethiopic": "ሰላም ልዑል",
    "Hangul": "안녕하세요",
    "Hiragana": "こんにちは",
    "Katakana": "カタカナ",
    "Han": "汉字漢字",
    "Cherokee": "ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ",
    "Canadian_Aboriginal": "ᐃᓄᒃᑎᑐᑦ",
    "Tifinagh": "ⵜⴰⵎⴰⵣⵉⵖⵜ",
    "Mongolian": "ᠮᠣᠩᠭᠣᠯ",
    "Shavian": "𐑖𐑱𐑝𐑾𐑯",
}


@pytest.mark.parametrize("script", sorted(SAMPLES))
def test_dominant_script_of_each_major_script(script):
    text = SAMPLES[script]
    assert dominant_script(text) == script
    counts = script_counts(text)
    assert set(counts) == {script}
    # every letter and mark is counted, nothing else (spaces, Tibetan tsheg)
    assert counts[script] == sum(unicodedata.category(c)[0] in "LM" for c in text)


def test_digits_punctuation_symbols_and_placeholders_have_no_script():
    assert script_counts("%s: 42 — 100% «…» ٤٢ ४२ 😀 → ©") == collections.Counter({"Latin": 1})  # the s of %s
    assert dominant_script("12:30 ... !!") is None
    assert script_counts("") == collections.Counter()


def test_mixed_text_and_inherited_marks():
    assert script_counts("GNOME の設定") == collections.Counter({"Latin": 5, "Hiragana": 1, "Han": 2})
    # a combining acute (U+0301, "Inherited") belongs to no script; the base letter does
    assert script_counts("e\u0301") == collections.Counter({"Latin": 1})
    assert script_counts("ー々") == collections.Counter({"Katakana": 1, "Han": 1})  # block-level
    assert script_counts("𠀋𐌰") == collections.Counter({"Han": 1, "Gothic": 1})  # astral: bisect path
    assert script_counts("ᱚᱞ") == collections.Counter({"Ol_Chiki": 2})
    assert script_counts("\U00016a40") == collections.Counter({"Other": 1})  # Mro: letter of no listed script


def _reference_script(cp: int) -> str | None:
    """Plain reference: category check + linear scan of RANGES."""
    if unicodedata.category(chr(cp))[0] not in "LM":
        return None
    for lo, hi, name in RANGES:
        if lo <= cp <= hi:
            return name
    return None


def test_bmp_table_matches_the_range_table():
    mismatches = []
    for cp in range(0x10000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ids = script_ids(chr(cp))
        ref = _reference_script(cp)
        if ref is not None and ids != SCRIPT_ID[ref]:
            mismatches.append(hex(cp))
        if ref is None and ids not in ("", SCRIPT_ID["Other"]):
            mismatches.append(hex(cp))
    assert not mismatches, mismatches[:20]


def test_ranges_are_sorted_and_disjoint():
    for (lo1, hi1, _), (lo2, hi2, _) in zip(RANGES, RANGES[1:], strict=False):
        assert lo1 <= hi1 < lo2 <= hi2


def test_translator_fast_path_equals_str_translate():
    rng = random.Random(0)
    tables = [scripts._BMP, {ord("a"): "b", ord("é"): None, 0x20AC: "E"}, {ord("x"): "yy"}]
    alphabet = "abcxyzé ü\t\u00a0€Жж漢😀"
    for table in tables:
        fast = translator(table)
        for _ in range(300):
            s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            assert fast(s) == s.translate(table)


def test_expected_scripts():
    assert expected_scripts("ja") == {"Han", "Hiragana", "Katakana"}
    assert expected_scripts("ko") == {"Hangul", "Han"}
    assert expected_scripts("zh") == {"Han"}
    assert "Han" in expected_scripts("zh-Hant")
    assert expected_scripts("sr") == {"Cyrillic"}
    assert expected_scripts("sr-Latn") == {"Latin"}
    assert expected_scripts("uz") == {"Latin"}
    assert expected_scripts("uz-Cyrl") == {"Cyrillic"}
    assert expected_scripts("pa") == {"Gurmukhi"}
    assert expected_scripts("pa-Arab") == {"Arabic"}
    assert expected_scripts("hi") == {"Devanagari"}
    assert expected_scripts("am") == {"Ethiopic"}
    assert expected_scripts("iu") == {"Canadian_Aboriginal", "Latin"}
    # other spellings go through langcodes.normalize
    assert expected_scripts("sr@latin") == {"Latin"}
    assert expected_scripts("zh_TW") == expected_scripts("zh-Hant")
    assert expected_scripts("deu") == {"Latin"}
    assert expected_scripts("ff-Adlm") == {"Adlam"}  # from the subtag alone
    # unknown: do not filter
    assert expected_scripts("xx") is None
    assert expected_scripts("tlh") is None  # a valid ISO code with no entry


def test_expected_scripts_keys_are_canonical_codes():
    for code in EXPECTED_SCRIPTS:
        assert langcodes.normalize(code) == code, code
        assert EXPECTED_SCRIPTS[code] <= set(scripts.SCRIPTS), code


def test_every_tatoeba_language_is_known():
    from tests.conftest import TATOEBA

    files = glob.glob(str(TATOEBA / "tatoeba.*-eng.eng"))
    if not files:
        pytest.skip("no Tatoeba test set")
    codes = {os.path.basename(f).split(".")[1].split("-")[0] for f in files}
    unknown = sorted(c for c in codes if expected_scripts(c) is None)
    assert not unknown


UI_DOMAINS = ("gtk20", "glib20", "Linux-PAM", "shared-mime-info", "apt", "adduser", "dpkg")
"""User-interface catalogs (of tests.conftest.BASE_DOMAINS): command-line tools' help texts (coreutils, tar)
are full of Latin option names in every language."""


def test_real_gettext_translations_are_in_their_expected_scripts(real_catalogs):
    """For every locale under /usr/share/locale: the dominant script of its translations (the first three
    of UI_DOMAINS it has, untranslated entries left out) is one its language is expected to use."""
    bad, checked, unknown = [], 0, []
    for loc in sorted(os.listdir(LOCALE_ROOT)):
        files = named_catalogs(loc, UI_DOMAINS)[:3]
        try:
            lang = langcodes.normalize(loc)
        except langcodes.UnknownLanguage:
            continue
        if not files:
            continue
        exp = expected_scripts(lang)
        if exp is None:
            unknown.append(lang)
            continue
        hits = collections.Counter()
        for f in files:
            for row in catalog_pairs(read_mo(f)):
                if row.src_text.casefold() == row.tgt_text.casefold():
                    continue
                d = dominant_script(row.tgt_text.replace("%s", "").replace("%d", ""))
                if d:
                    hits[d in exp] += 1
        n = sum(hits.values())
        if n < 50:
            continue
        checked += 1
        if hits[True] / n < 0.8:
            bad.append((loc, lang, round(hits[True] / n, 2)))
    assert checked > 50
    assert not unknown
    # Known data problem: the GNOME "Tatarish" team's tt catalogs are in the Latin alphabet (they
    # should be tt@iqtelif); script_mismatch rejects them, which is right for the label they carry.
    assert [b[0] for b in bad] in ([], ["tt"]), bad


def test_doctests():
    assert doctest.testmod(scripts).failed == 0
