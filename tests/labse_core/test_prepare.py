"""Decisions of the prepare stage, without Beam."""

import collections

import numpy as np
import pytest

from labse_core import prepare as core
from labse_core.prepare import InputSpec, PrepareError
from labse_core.text.normalize import sentence_key
from tests.conftest import TATOEBA


def row(src, tgt, lang="de", origin="a.po", line=1, source="gettext-po", **kw):
    return {"lang": lang, "src_lang": "en", "src_text": src, "tgt_text": tgt, "source": source,
            "origin": origin, "line": line, "locale": lang, "context": None, **kw}


def test_process_batch_normalizes_filters_and_keys():
    rows = [
        row("_Open file", "Datei _öffnen"),
        row("Cancel", "Cancel"),  # copy
        row("", "Leer"),  # empty side
        row("Delete %s", "Löschen"),  # placeholder dropped
        core.reject_row("invalid_utf8", "line 3", source="tsv", origin="x.tsv", line=3),
    ]
    kept, rejects = core.process_batch(rows, core.PrepareRules(), frozenset())
    assert [r["src_text"] for r in kept] == ["Open file"]  # accelerator removed
    assert kept[0]["tgt_text"] == "Datei öffnen" and kept[0]["pair_key"].startswith("de:")
    assert sorted(r["reason"] for r in rejects) == ["copy", "empty_side", "invalid_utf8", "placeholder_mismatch"]
    assert all(set(core.ROW_FIELDS) <= set(r) and r["reason"] in core.REJECT_REASONS for r in rejects)
    assert {r["src_text"] for r in rejects if r["reason"] == "copy"} == {"Cancel"}  # rejects keep the text as read


def test_eval_overlap_catches_either_side_after_normalization():
    keys = frozenset({sentence_key("Wo ist der Bahnhof?"), sentence_key("I like tea.")})
    rows = [row("Where is the station?", "Wo  ist der   Bahnhof?"), row("I like tea.", "Ich mag Tee."),
            row("Open the file", "Öffne die Datei")]
    kept, rejects = core.process_batch(rows, core.PrepareRules(), keys)
    assert [r["reason"] for r in rejects] == ["eval_overlap", "eval_overlap"]
    assert [r["src_text"] for r in kept] == ["Open the file"]


def test_pair_key_separates_languages_but_not_spelling_variants():
    assert core.pair_key("de", "Open", "Öffnen") != core.pair_key("nl", "Open", "Öffnen")
    assert core.pair_key("de", "Open", "Öffnen") == core.pair_key("de", "open", "öffnen")


def test_resolve_duplicates_keeps_first_by_origin_and_line():
    group = [row("a", "b", origin="z.po", line=1, pair_key="k"), row("a", "b", origin="a.po", line=9, pair_key="k"),
             row("a", "b", origin="a.po", line=2, pair_key="k")]
    winner, losers = core.resolve_duplicates(group)
    assert (winner["origin"], winner["line"]) == ("a.po", 2)
    assert [(r["reason"], r["detail"]) for r in losers] == [("duplicate", "k"), ("duplicate", "k")]


def test_resolve_duplicates_prefers_existing_corpus():
    group = [row("a", "b", origin="a.po", pair_key="k"), row("a", "b", origin="old.po", pair_key="k", existing=True)]
    winner, losers = core.resolve_duplicates(group)
    assert winner["existing"] and [r["reason"] for r in losers] == ["duplicate_existing"]


def test_cap_keeps_existing_rows_and_fills_the_rest():
    group = [row("a", f"t{i}", line=i) for i in range(5)] + [row("a", "old", existing=True)]
    kept, dropped = core.cap_translations(group, 3)
    assert [r["tgt_text"] for r in kept] == ["old", "t0", "t1"]
    assert [r["reason"] for r in dropped] == ["source_cap"] * 3
    kept, dropped = core.cap_translations([row("a", "old", existing=True)] * 4, 2)
    assert len(kept) == 4 and dropped == []  # published rows are never dropped


def test_tatoeba_and_mono_are_not_training_inputs(tmp_path):
    if not TATOEBA.is_dir():
        pytest.skip("no Tatoeba data")
    with pytest.raises(PrepareError, match="evaluation data"):
        InputSpec(path=TATOEBA).resolved_format()
    (tmp_path / "de.txt").write_text("Hallo\n")
    with pytest.raises(PrepareError, match="monolingual"):
        InputSpec(path=tmp_path / "de.txt").resolved_format()


def test_eval_keys_from_tatoeba():
    if not TATOEBA.is_dir():
        pytest.skip("no Tatoeba data")
    keys = core.load_eval_keys([TATOEBA])
    first_de = (TATOEBA / "tatoeba.deu-eng.deu").read_text().splitlines()[0]
    assert sentence_key(first_de) in keys and len(keys) > 100_000
    with pytest.raises(PrepareError, match="does not exist"):
        core.load_eval_keys([TATOEBA / "missing"])


@pytest.mark.parametrize("eval_keys", [frozenset(), frozenset({sentence_key("unrelated")})])
def test_batch_pair_keys_equal_the_plain_pair_key(eval_keys):
    rows = [row("_Open file", "Datei _öffnen"), row("Save As…", "Speichern unter …", lang="de"),
            row("Quit", "Quitter", lang="fr")]
    kept, _ = core.process_batch(rows, core.PrepareRules(), eval_keys)
    assert len(kept) == 3
    for r in kept:
        assert r["pair_key"] == core.pair_key(r["lang"], r["src_text"], r["tgt_text"])


# ------------------------------------------------------------------------------------------------
# language labels (issue 10)


def test_same_language_pairs_are_rejected_and_refused_as_langs():
    kept, rejects = core.process_batch([row("Maximize", "Maximise", lang="en"), row("Open", "Öffnen")],
                                       core.PrepareRules(), frozenset())
    assert [(r["reason"], r["detail"]) for r in rejects] == [("same_language", "en -> en")]
    assert [r["tgt_text"] for r in kept] == ["Öffnen"]
    for langs in (("en", "en"), ("de", "deu"), ("sr", "sr-Latn")):
        with pytest.raises(ValueError, match="both sides have the same language"):
            InputSpec(path="x.tsv", langs=langs)
    with pytest.raises(ValueError, match="no tgt column"):
        InputSpec(path="x.tsv", tsv_columns=("src", "score"))


def test_english_variant_catalogs_are_skipped(real_catalogs):
    en_gb = real_catalogs / "en_GB/LC_MESSAGES/glib20.mo"
    if not en_gb.exists():
        pytest.skip("no en_GB catalog")
    spec = InputSpec(path=en_gb)
    assert "English-variant catalog (en_GB)" in core.skip_reason(spec)
    assert list(core.iter_input(spec)) == []
    assert core.skip_reason(InputSpec(path=real_catalogs / "de/LC_MESSAGES/glib20.mo")) is None


def _real_de_en(real_catalogs, n=120):
    from labse_core.gettext_catalog import catalog_pairs, read_mo

    pairs = [(p.src_text, p.tgt_text) for p in catalog_pairs(read_mo(real_catalogs / "de/LC_MESSAGES/coreutils.mo"))
             if len(p.src_text) > 30 and not set("\t\n") & set(p.src_text + p.tgt_text)]
    return pairs[:n]


def test_swapped_sides_are_detected_on_a_sample(tmp_path, real_catalogs):
    pairs = _real_de_en(real_catalogs)
    tsv = tmp_path / "p.tsv"
    tsv.write_text("".join(f"{en}\t{de}\n" for en, de in pairs))
    right = core.refuse_swapped_sides(InputSpec(path=tsv, langs=("en", "de")))
    assert right.sampled >= 10 and right.as_labelled > 0.9 * right.sampled and right.swapped == 0
    wrong = InputSpec(path=tsv, langs=("de", "en"))
    check = core.check_labels(wrong)
    assert check.swapped == right.as_labelled and check.as_labelled == right.swapped  # the mirror image
    with pytest.raises(PrepareError, match=r"p\.tsv: the two sides look swapped: .*p\.tsv:\d+: .* reads as de, .* --swap"):
        core.refuse_swapped_sides(wrong)
    fixed = wrong.model_copy(update={"swap": True})
    assert core.refuse_swapped_sides(fixed).as_labelled == right.as_labelled
    first = next(core.iter_input(fixed))
    assert (first["src_lang"], first["lang"], first["src_text"], first["tgt_text"]) == ("en", "de", *pairs[0])
    with pytest.raises(PrepareError, match="drop --swap"):
        core.refuse_swapped_sides(InputSpec(path=tsv, langs=("en", "de"), swap=True))


def test_invalid_plural_forms_reject_only_the_plural_pairs(tmp_path):
    po = tmp_path / "de.po"
    po.write_text('msgid ""\nmsgstr ""\n"Language: de\\n"\n"Plural-Forms: nplurals=1; plural=n>5 ? 3 : 0;\\n"\n\n'
                  'msgid "Open"\nmsgstr "Öffnen"\n\n'
                  'msgid "%d file"\nmsgid_plural "%d files"\nmsgstr[0] "%d Datei"\n')
    rows = list(core.iter_input(InputSpec(path=po)))
    # the one form it has would have been paired with the singular: rejected, with the reason
    assert [(r["src_text"], r.get("reason")) for r in rows] == [("Open", None), ("%d file", "invalid_plural_forms")]
    assert "plural(6) = 3 is not below nplurals=1" in rows[1]["detail"]
    kept, rejects = core.process_batch(rows, core.PrepareRules(), frozenset())
    assert [r["src_text"] for r in kept] == ["Open"] and len(rejects) == 1


def test_evaluation_sets_of_every_kind(tmp_path):
    txt = tmp_path / "e.txt"
    txt.write_text("Wo ist der Bahnhof?\n")
    tmx = tmp_path / "e.tmx"
    tmx.write_text('<tmx version="1.4"><header/><body><tu><tuv xml:lang="en"><seg>I like tea.</seg></tuv>'
                   '<tuv xml:lang="de"><seg>Ich mag Tee.</seg></tuv></tu></body></tmx>')
    tsv = tmp_path / "e.tsv"
    tsv.write_text("Good night\tGute Nacht\n")
    keys = core.load_eval_keys([txt, tmx, tsv])
    assert keys == {sentence_key(s) for s in ("Wo ist der Bahnhof?", "I like tea.", "Ich mag Tee.", "Good night",
                                              "Gute Nacht")}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    with pytest.raises(PrepareError, match=r"bad\.txt:2: not UTF-8 text"):
        core.check_eval_sets([txt, bad])


# ------------------------------------------------------------------------------------------------
# The Arrow form of the stage decides exactly as the per-record form, on real catalogs


def _real_rows(real_catalogs, locales=("de", "ja", "ru", "ar", "sr@latin", "zh_CN", "hi", "fr"), domains=(
        "coreutils.mo", "glib20.mo", "gtk30.mo", "dpkg.mo", "iso_3166-1.mo")):
    rows = []
    for loc in locales:
        for dom in domains:
            path = real_catalogs / loc / "LC_MESSAGES" / dom
            if path.exists():
                rows += list(core.iter_input(InputSpec(path=path)))
    return rows


def _as_set(rows, fields):
    return collections.Counter(tuple(r.get(f) for f in fields) for r in rows)


def test_table_preparer_and_dedupe_table_equal_the_per_record_functions(real_catalogs):
    import pyarrow as pa

    rows = _real_rows(real_catalogs)[::4]
    # the same pairs again from another "file" (duplicates across files), an English-variant row,
    # reader rejects, and evaluation sentences taken from the data itself (overlap on either side)
    rows += [r | {"origin": "copy-" + r["origin"]} for r in rows[::3]]
    rows += [row("Colour", "Color", lang="en"), core.reject_row("invalid_utf8", "line 3", source="tsv", origin="x", line=3)]
    eval_keys = frozenset(sentence_key(r["tgt_text"]) for r in rows[::97]) | frozenset(
        sentence_key(r["src_text"]) for r in rows[::89])
    assert len(rows) > 5000
    rules = core.PrepareRules()
    kept_ref, rej_ref = [], []
    preparer = core.TablePreparer(rules, eval_keys, max_cached=500)  # caches emptied many times
    kept_tabs, rej_tabs = [], []
    for i in range(0, len(rows), 700):
        k, r = core.process_batch(rows[i : i + 700], rules, eval_keys)
        kept_ref += k
        rej_ref += r
        batch = rows[i : i + 700]
        if i % 1400 == 0 and not any("reason" in x for x in batch):  # half as Arrow tables, as corpus_raw gives them
            batch = pa.Table.from_pylist(batch)
        k, r = preparer.process(batch)
        kept_tabs.append(k)
        rej_tabs.append(r)
    kept = pa.concat_tables(kept_tabs)
    kept_fields = [f.name for f in core.KEPT_SCHEMA if f.name != "existing"]
    reject_fields = [f.name for f in core.REJECT_SCHEMA]
    assert _as_set(kept.to_pylist(), kept_fields) == _as_set(kept_ref, kept_fields)
    assert _as_set(pa.concat_tables(rej_tabs).to_pylist(), reject_fields) == _as_set(rej_ref, reject_fields)
    reasons = collections.Counter(r["reason"] for r in rej_ref)
    assert {"copy", "eval_overlap", "same_language", "invalid_utf8", "too_short"} <= set(reasons)

    # dedupe: every pair_key group through resolve_duplicates, vs one sort; some rows already published
    existing = list({r["pair_key"]: dict(r, existing=True, origin="old.po") for r in kept_ref[::13]}.values())
    groups = collections.defaultdict(list)
    for r in kept_ref + existing:
        groups[r["pair_key"]].append(r)
    win_ref, lost_ref = [], []
    for g in groups.values():
        w, lost = core.resolve_duplicates(g)
        win_ref.append(w)
        lost_ref += lost
    table = pa.concat_tables([kept, pa.Table.from_pylist(existing, schema=core.KEPT_SCHEMA)])
    winners, lost = core.dedupe_table(table.take(np.random.default_rng(0).permutation(table.num_rows)))
    assert _as_set(winners.to_pylist(), [*kept_fields, "existing"]) == _as_set(
        [w | {"existing": bool(w.get("existing"))} for w in win_ref], [*kept_fields, "existing"])
    assert _as_set(lost.to_pylist(), reject_fields) == _as_set(lost_ref, reject_fields)
    assert {"duplicate", "duplicate_existing"} <= {r["reason"] for r in lost_ref}
