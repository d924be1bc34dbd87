import doctest
import re
import unicodedata
from collections import Counter

import pydantic
import pytest

from labse_core.gettext_catalog import catalog_pairs, read_mo
from labse_core.text import normalize
from labse_core.text.normalize import (
    NormalizeConfig,
    canonical_placeholder,
    dedupe_key,
    key_text,
    normalize_text,
    numbers,
    placeholders,
    sentence_key,
    strip_accelerators,
)
from tests.conftest import named_catalogs

# ------------------------------------------------------------------------------------------------
# Unicode, whitespace, control characters
# ------------------------------------------------------------------------------------------------


def test_nfc_for_stored_text_nfkc_for_keys():
    decomposed = "Cafe\u0301 ﬁle ＡＢＣ ²"
    assert normalize_text(decomposed) == "Café ﬁle ＡＢＣ ²"  # NFC: composes, keeps compatibility chars
    assert normalize_text(decomposed, NormalizeConfig(unicode_form="NFKC")) == "Café file ABC 2"
    assert key_text(decomposed) == "café file abc 2"
    assert key_text("ﬁle") == key_text("FILE") == key_text("ｆｉｌｅ")


def test_whitespace_is_mapped_collapsed_and_stripped():
    s = " a\u00a0b\u202fc\u3000d\te\nf\r\ng\u2028h\u2029i\u2009j\x0bk  "
    assert normalize_text(s) == "a b c d e f g h i j k"
    assert normalize_text("Fichier\u202f:") == "Fichier :"


def test_control_and_format_characters_removed_but_zwj_zwnj_kept():
    s = "a\u00adb\u200ec\u200fd\ufeffe\u200bf\u2060g\U000e0041h\x07i\u202ej"
    assert normalize_text(s) == "abcdefghij"
    persian = "می\u200cخواهم"  # ZWNJ: "I want", written with a half-space
    assert normalize_text(persian) == persian
    malayalam = "\u0d28\u0d4d\u200d"  # ZWJ: chillu form
    assert normalize_text(malayalam) == malayalam
    emoji = "👩\u200d💻"
    assert normalize_text(emoji) == emoji
    # keys drop them: spelling with or without the half-space is the same sentence
    assert key_text(persian) == key_text("میخواهم")


def test_escaped_newlines_become_spaces():
    assert normalize_text("Line one\\nLine two\\tend") == "Line one Line two end"
    assert normalize_text("Line one\nLine two") == "Line one Line two"
    assert normalize_text("a path C:\\\\new") == "a path C:\\\\new"  # an escaped backslash, then "n"
    assert normalize_text("x\\ny", NormalizeConfig(unescape_newlines=False)) == "x\\ny"


def test_config_is_frozen_and_strict():
    cfg = NormalizeConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.unicode_form = "NFKC"
    with pytest.raises(pydantic.ValidationError):
        NormalizeConfig(unicode_form="NFD")
    with pytest.raises(pydantic.ValidationError):
        NormalizeConfig(accelerator_markers="_@")
    with pytest.raises(pydantic.ValidationError):
        NormalizeConfig(typo=True)


# ------------------------------------------------------------------------------------------------
# Accelerators
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("_File", "File"),
        ("Sa_ve As", "Save As"),
        ("E_xit", "Exit"),
        ("Print Pre_view", "Print Preview"),
        ("Страниц на _лист:", "Страниц на лист:"),
        ("О_тменить", "Отменить"),
        ("A_jouter aux signets", "Ajouter aux signets"),
        ("Recent _1", "Recent 1"),
        ("&Open", "Open"),
        ("Save &As...", "Save As..."),
        ("Fi&le", "File"),
        ("~Save", "Save"),
        ("Spei~chern unter", "Speichern unter"),
        ("ファイル(_F)", "ファイル"),
        ("開く(&O)...", "開く..."),
        ("保存(_S)…", "保存…"),
        ("파일(_F)", "파일"),
        ("打开(_O)", "打开"),
        ("X軸の傾き(_T):", "X軸の傾き:"),
        ("ファイル(F)", "ファイル"),
        ("ファイル (_F) _Open", "ファイル Open"),  # after the suffix goes, one candidate is left
    ],
)
def test_accelerators_removed(raw, clean):
    assert strip_accelerators(raw) == clean
    assert normalize_text(raw) == clean


@pytest.mark.parametrize(
    "text",
    [
        "file_name",
        "LC_ALL=C",
        "GTK_THEME",
        "KP_Up",
        "ИМЯ_ФАЙЛА",
        "целевой_столбец",
        "lokales_Schema",
        "소스_별칭",
        "Krb5_safe",
        "Level_2",
        "iconv_openに失敗しました",
        "のpg_database",
        "__init__",
        "use_system_proxy",  # two candidates: not a label
        "_Open or _Close",
        "%s_%d",
        "{file_name} saved",
        "see http://example.com/a_b?x=1&y=2",
        "mail first_last@example.com",
        "/usr/share/some_dir",
        "Tom &amp; Jerry",
        "R&D",
        "AT&T",
        "Q&A",
        "~/Documents",
        "~5 minutes",
        "+N or ~N",
        "%lld~weeks",
        "Temperature (F)",
    ],
)
def test_accelerator_lookalikes_kept(text):
    assert strip_accelerators(text) == text


def test_accelerators_can_be_kept():
    assert normalize_text("_File", NormalizeConfig(strip_accelerators=False)) == "_File"
    assert normalize_text("_File &Open", NormalizeConfig(accelerator_markers="&")) == "_File Open"


# ------------------------------------------------------------------------------------------------
# Placeholders and numbers
# ------------------------------------------------------------------------------------------------


def test_placeholders_are_kept_in_text_and_extractable():
    s = "%s %d %1$s %'d %lu %.2f {name} {0} ${var} %<PRIu64> %(name)s %1 {0:.2f} {}"
    assert normalize_text(s) == s
    assert placeholders(s) == Counter(s.split())


@pytest.mark.parametrize(
    "text", ["50% done", "100%", "%% of total", "{{literal}}", "a set {a, b}", "$HOME", "\\x{HH}", "% d"]
)
def test_not_placeholders(text):
    assert placeholders(text) == Counter()


def test_placeholders_multiset():
    assert placeholders("%s and %s, %d") == Counter({"%s": 2, "%d": 1})


def test_canonical_placeholder():
    assert canonical_placeholder("%2$s") == "%s"
    assert canonical_placeholder("%-10s") == "%s"
    assert canonical_placeholder("%'d") == canonical_placeholder("%Id") == canonical_placeholder("%i") == "%d"
    assert canonical_placeholder("%02X") == "%x"
    assert canonical_placeholder("%lu") == "%ld"
    assert canonical_placeholder("{0:>8}") == "{0}"
    assert canonical_placeholder("%1") != canonical_placeholder("%2")


def test_numbers_across_scripts_and_locales():
    assert (
        numbers("42")
        == numbers("٤٢")
        == numbers("४२")
        == numbers("۴۲")
        == numbers("４２")
        == Counter({"42": 1})
    )
    assert (
        numbers("1,000")
        == numbers("1.000")
        == numbers("1 000")
        == numbers("1\u00a0000")
        == Counter({"1000": 1})
    )
    assert numbers("1.5") == numbers("1,5") == Counter({"1": 1, "5": 1})
    assert numbers("07") == numbers("7")
    assert numbers("%1$s {0} %.2f") == Counter()
    assert numbers("page 3 of 3") == Counter({"3": 2})
    assert numbers("no digits") == Counter()


# ------------------------------------------------------------------------------------------------
# Keys
# ------------------------------------------------------------------------------------------------


def test_keys_fold_case_punctuation_accelerators_and_compatibility():
    assert sentence_key("_Don’t   SAVE…") == sentence_key("Don't save")
    assert sentence_key("Hello, world!") == sentence_key("hello world")
    assert sentence_key("Straße") == sentence_key("STRASSE")  # casefold
    assert sentence_key("Hello") != sentence_key("Hallo")
    assert re.fullmatch(r"[0-9a-f]{32}", sentence_key("x"))


def test_keys_are_stable():
    # Golden values: if this fails, key_text changed; bump KEY_VERSION, since stored keys no longer match.
    assert normalize.KEY_VERSION == 1
    assert sentence_key("Hello, world!") == "7368e388618a5a7205300f10ddfebee9"
    assert dedupe_key("Open file", "Datei öffnen") == "5e5430b5b26c1fe0aa81d2c874f2eb1d"


def test_dedupe_key_is_ordered_and_depends_on_both_sides():
    assert dedupe_key("a", "b") != dedupe_key("b", "a")
    assert dedupe_key("Open", "Öffnen") == dedupe_key("_Open", "Öffnen.")
    assert dedupe_key("Open", "Öffnen") != dedupe_key("Open", "Schließen")
    # the separator keeps ("a b", "c") apart from ("a", "b c")
    assert dedupe_key("a b", "c") != dedupe_key("a", "b c")


# ------------------------------------------------------------------------------------------------
# Real data
# ------------------------------------------------------------------------------------------------


def _real_strings(locales, per_locale=3000):
    out = []
    for loc in locales:
        n = 0
        for f in named_catalogs(loc):
            for row in catalog_pairs(read_mo(f)):
                out += [row.src_text, row.tgt_text]
                n += 1
            if n >= per_locale:
                break
    return out


def test_real_gettext_strings_normalize_idempotently(real_catalogs):
    strings = _real_strings(["de", "ja", "fa", "hi", "ko", "ru", "ml", "zh_TW", "sr@latin"])
    assert len(strings) > 20000
    for s in strings:
        out = normalize_text(s)
        assert normalize_text(out) == out, s
        assert out == out.strip() and "  " not in out, s
        assert not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in out), s
        assert unicodedata.is_normalized("NFC", out), s
        assert placeholders(out) <= placeholders(s), s  # no placeholder invented (escaped \\n can split one)


def test_doctests():
    assert doctest.testmod(normalize).failed == 0
