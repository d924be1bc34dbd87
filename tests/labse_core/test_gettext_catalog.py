import struct
from collections import Counter

import pytest

from labse_core.gettext_catalog import (
    CatalogError,
    catalog_pairs,
    locale_from_path,
    plural_rule,
    read_catalog,
    read_mo,
    read_po,
)
from tests.conftest import LOCALE_ROOT

PO = r'''# German translation
msgid ""
msgstr ""
"Project-Id-Version: demo 1.0\n"
"Language: de\n"
"Content-Type: text/plain; charset=UTF-8\n"
"Plural-Forms: nplurals=2; plural=(n != 1);\n"

#: src/main.c:10
msgid "_File"
msgstr "_Datei"

msgctxt "menu"
msgid "Open"
msgstr "Öffnen"

msgctxt "verb"
msgid "Open"
msgstr "Aufmachen"

#, c-format
msgid "%d file"
msgid_plural "%d files"
msgstr[0] "%d Datei"
msgstr[1] "%d Dateien"

#, fuzzy
msgid "Close"
msgstr "Schliessen"

msgid "Untranslated"
msgstr ""

msgid ""
"Long text that "
"continues\n"
msgstr ""
"Langer Text, der "
"weitergeht\n"

msgid "Tab\there \"quoted\" back\\slash \101"
msgstr "Tab\thier „zitiert“ Rück\\strich A"

#~ msgid "Old"
#~ msgstr "Alt"
'''


def write_po(tmp_path, text, name="de.po"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def compile_mo(entries, charset="UTF-8", big_endian=False) -> bytes:
    """Minimal GNU .mo writer (for round-trip tests): entries are (key, value) strings in the
    .mo encoding (context\\x04msgid, msgid\\x00plural, msgstr[0]\\x00msgstr[1])."""
    entries = sorted(entries)
    o = ">" if big_endian else "<"
    keys = [k.encode(charset) for k, _ in entries]
    vals = [v.encode(charset) for _, v in entries]
    n = len(entries)
    orig_off = 28
    trans_off = orig_off + 8 * n
    data_off = trans_off + 8 * n
    blob = b""
    ktab, vtab = [], []
    for k in keys:
        ktab.append((len(k), data_off + len(blob)))
        blob += k + b"\0"
    for v in vals:
        vtab.append((len(v), data_off + len(blob)))
        blob += v + b"\0"
    head = struct.pack(o + "7I", 0x950412DE, 0, n, orig_off, trans_off, 0, 0)
    return head + b"".join(struct.pack(o + "2I", *t) for t in ktab) + b"".join(struct.pack(o + "2I", *t) for t in vtab) + blob


def test_po_entries_and_policy(tmp_path):
    cat = read_po(write_po(tmp_path, PO))
    assert cat.language == "de" and cat.plural_forms.startswith("nplurals=2")
    stats = Counter()
    pairs = list(catalog_pairs(cat, stats=stats))
    got = {(p.src_text, p.context): p.tgt_text for p in pairs}
    assert got[("_File", None)] == "_Datei"
    assert got[("Open", "menu")] == "Öffnen" and got[("Open", "verb")] == "Aufmachen"  # contexts kept apart
    assert got[("%d file", None)] == "%d Datei" and got[("%d files", None)] == "%d Dateien"
    assert got[("Long text that continues\n", None)] == "Langer Text, der weitergeht\n"
    assert got[('Tab\there "quoted" back\\slash A', None)] == "Tab\thier „zitiert“ Rück\\strich A"
    assert ("Close", None) not in got and ("Untranslated", None) not in got and ("Old", None) not in got
    assert stats["skipped_fuzzy"] == 1 and stats["skipped_untranslated"] == 1 and stats["skipped_obsolete"] == 1
    assert stats["skipped_header"] == 1 and stats["pairs"] == len(pairs) == 7
    plural = [p for p in pairs if p.plural_form is not None]
    assert [(p.src_text, p.plural_form) for p in plural] == [("%d file", 0), ("%d files", 1)]
    assert {p.src_text: p.line for p in pairs}["_File"] == 10  # line of the msgid keyword


def test_fuzzy_kept_on_request(tmp_path):
    cat = read_po(write_po(tmp_path, PO))
    assert "Close" in {p.src_text for p in catalog_pairs(cat, include_fuzzy=True)}


@pytest.mark.parametrize("big_endian", [False, True])
def test_mo_round_trip_matches_po(tmp_path, big_endian):
    cat = read_po(write_po(tmp_path, PO))
    entries = []
    for e in cat.entries:
        if e.obsolete or e.fuzzy:
            continue  # msgfmt leaves them out
        key = (e.context + "\x04" if e.context else "") + e.msgid + ("\x00" + e.msgid_plural if e.msgid_plural else "")
        entries.append((key, "\x00".join(e.msgstr)))
    mo = tmp_path / "de.mo"
    mo.write_bytes(compile_mo(entries, big_endian=big_endian))
    from_mo = {(p.src_text, p.context, p.tgt_text) for p in catalog_pairs(read_mo(mo))}
    from_po = {(p.src_text, p.context, p.tgt_text) for p in catalog_pairs(cat)}
    assert from_mo == from_po


def test_plural_rule_picks_forms_for_one_and_two():
    rule, n, ok = plural_rule("nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && (n%100<10 || n%100>=20) ? 1 : 2);")
    assert ok and n == 3 and (rule(1), rule(2), rule(5), rule(21)) == (0, 1, 2, 0)
    rule, _, ok = plural_rule("nplurals=1; plural=0;")
    assert ok and rule(1) == rule(2) == 0
    rule, _, ok = plural_rule("nplurals=2; plural=import os;")
    assert not ok and (rule(1), rule(2)) == (0, 1)  # falls back to n != 1, never evaluates junk


@pytest.mark.parametrize(
    "text, line, message",
    [
        ('msgid "a"\nmsgstr "b"\nmsgid "c"\n', 3, "msgid without msgstr"),
        ('msgid "a"\nmsgstr "b"\n\nmsgstr "x"\n', 4, "msgstr without msgid"),
        ('msgid "a"\nmsgstr "b\n', 2, "malformed string literal"),
        ('msgid "a"\nmsgstr "b"\n"orphan"\nbogus line\n', 4, "unexpected text"),
        ('"orphan"\n', 1, "string continuation without a keyword"),
        ('msgid "a"\nmsgid_plural "as"\nmsgstr "b"\n', 1, r"msgid_plural needs msgstr\[0\]"),
        ('msgid "a"\nmsgstr[0] "b"\n', 1, r"msgstr\[n\] without msgid_plural"),
        ('msgid "a"\nmsgid_plural "as"\nmsgstr[0] "b"\nmsgstr[2] "c"\n', 1, "not 0..n-1"),
        ('msgid "a\\q"\nmsgstr "b"\n', 1, "unknown escape"),
        ('msgid "ok"\nmsgstr "fine"\n\nmsgid "bad"\nmsgstr "\xff"\n', 5, "invalid utf-8"),
    ],
)
def test_malformed_po_names_file_and_line(tmp_path, text, line, message):
    p = tmp_path / "bad.po"
    p.write_bytes(text.encode("utf-8", "surrogateescape") if "\xff" not in text else text.encode("latin-1"))
    with pytest.raises(CatalogError, match=message) as e:
        read_po(p)
    assert e.value.line == line
    assert str(e.value).startswith(f"{p}:{line}: ")


def test_empty_and_truncated_files(tmp_path):
    (tmp_path / "empty.po").write_text("")
    with pytest.raises(CatalogError, match="empty file"):
        read_po(tmp_path / "empty.po")
    good = compile_mo([("", "Language: de\n"), ("a", "b")])
    (tmp_path / "t.mo").write_bytes(good[:40])
    with pytest.raises(CatalogError, match=r"t\.mo: (truncated|entry)"):
        read_mo(tmp_path / "t.mo")
    (tmp_path / "x.mo").write_bytes(b"\x00" * 64)
    with pytest.raises(CatalogError, match="bad magic number"):
        read_mo(tmp_path / "x.mo")
    with pytest.raises(CatalogError, match="not a gettext catalog"):
        read_catalog(tmp_path / "notes.txt")


def test_locale_from_path():
    assert locale_from_path("/usr/share/locale/pt_BR/LC_MESSAGES/gtk30.mo") == ("pt_BR", "gtk30")
    assert locale_from_path("po/sr@latin.po") == ("sr@latin", None)
    assert locale_from_path("po/messages.po") == (None, None)


# ------------------------------------------------------------------ real catalogs of this machine


def test_real_german_country_names(real_catalogs):
    path = next(p for p in (LOCALE_ROOT / f"de/LC_MESSAGES/{n}.mo" for n in ("iso_3166-1", "iso_3166")) if p.exists())
    pairs = {p.src_text: p.tgt_text for p in catalog_pairs(read_mo(path))}
    assert pairs["Germany"] == "Deutschland"
    assert pairs["France"] == "Frankreich"
    assert len(pairs) > 200


def test_real_russian_plurals_use_the_catalog_rule(real_catalogs):
    path = LOCALE_ROOT / "ru/LC_MESSAGES/coreutils.mo"
    if not path.exists():
        pytest.skip("no Russian coreutils catalog")
    cat = read_mo(path)
    rule, n, ok = plural_rule(cat.plural_forms)
    assert ok and n == 3
    plural = [p for p in catalog_pairs(cat) if p.plural_form is not None]
    assert plural and {p.plural_form for p in plural} == {rule(1), rule(2)} == {0, 1}


def test_every_catalog_on_this_machine_parses(real_catalogs):
    stats = Counter()
    n = 0
    for path in sorted(real_catalogs.glob("*/LC_MESSAGES/*.mo"))[::7]:  # a seventh of them: ~3 s
        n += sum(1 for _ in catalog_pairs(read_mo(path), stats=stats))
    assert n > 100_000
    assert stats["pairs"] == n


@pytest.mark.parametrize(
    "header, message",
    [
        ("nplurals=1; plural=n>5 ? 3 : 0;", "plural(6) = 3 is not below nplurals=1"),
        ("nplurals=2; plural=(n != 1;", "syntax error"),
        ("nplurals=2; plural=n/0;", "plural(0) fails"),
        ("nplurals=0; plural=0;", "nplurals must be at least 1"),
        ("plural=n != 1;", "lacks nplurals"),
    ],
)
def test_invalid_plural_forms_are_named_counted_and_not_paired(tmp_path, header, message):
    from labse_core.gettext_catalog import plural_forms_error

    assert message in plural_forms_error(header)
    cat = read_po(write_po(tmp_path,
        f'msgid ""\nmsgstr ""\n"Plural-Forms: {header}\\n"\n\nmsgid "Open"\nmsgstr "Öffnen"\n\n'
        'msgid "%d file"\nmsgid_plural "%d files"\nmsgstr[0] "%d Datei"\nmsgstr[1] "%d Dateien"\n'
    ))
    stats = Counter()
    assert [p.src_text for p in catalog_pairs(cat, stats=stats)] == ["Open"]
    assert stats["catalogs_invalid_plural_forms"] == 1 and stats["skipped_invalid_plural_forms"] == 1
    kept = [p.src_text for p in catalog_pairs(cat, keep_invalid_plurals=True)]
    assert kept == ["Open", "%d file", "%d files"]  # for the prepare stage to reject with a reason


def test_valid_and_missing_plural_forms_are_not_errors(real_catalogs):
    from labse_core.gettext_catalog import plural_forms_error

    assert plural_forms_error(None) is None  # no header: gettext's default n != 1
    for path in sorted(real_catalogs.glob("*/LC_MESSAGES/coreutils.mo")):
        assert plural_forms_error(read_mo(path).plural_forms) is None, path
