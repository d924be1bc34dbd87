"""`prepare` on real text in every pair format, with duplicates across files, evaluation-set
sentences and broken records planted, run by the multi-process direct runner."""

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_jobs.options import BeamConfig
from beam_jobs.prepare import PrepareConfig, PrepareError, run
from labse_core.gettext_catalog import catalog_pairs, read_mo
from labse_core.prepare import REJECT_REASONS, InputSpec, load_eval_keys
from labse_core.text.normalize import sentence_key
from storage import catalog
from storage.layout import Layout
from storage.schemas import CLEAN_PAIRS, RAW_PAIRS, REJECTS
from tests.conftest import LOCALE_ROOT, TATOEBA

IN_MEMORY = BeamConfig(running_mode="in_memory", num_workers=1)


def real_pairs(n=600):
    out = []
    for name in ("coreutils", "glib20", "gtk30", "iso_3166-1"):
        path = LOCALE_ROOT / f"de/LC_MESSAGES/{name}.mo"
        if path.exists():
            out += [(p.src_text, p.tgt_text) for p in catalog_pairs(read_mo(path))
                    if "\n" not in p.src_text + p.tgt_text and "\t" not in p.src_text + p.tgt_text]
    if len(out) < n:
        pytest.skip("not enough German gettext pairs on this machine")
    return out[:n]


def tatoeba_pairs(n=5):
    de = (TATOEBA / "tatoeba.deu-eng.deu").read_text().splitlines()[:n]
    en = (TATOEBA / "tatoeba.deu-eng.eng").read_text().splitlines()[:n]
    return list(zip(en, de, strict=True))


def write_tmx(path: Path, pairs):
    from xml.sax.saxutils import escape

    tus = "".join(f'<tu><tuv xml:lang="en"><seg>{escape(e)}</seg></tuv><tuv xml:lang="de"><seg>{escape(d)}</seg></tuv></tu>\n'
                  for e, d in pairs)
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<tmx version="1.4"><header srclang="en"/><body>\n{tus}</body></tmx>\n')


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, real_catalogs):
    if not TATOEBA.is_dir():
        pytest.skip("no Tatoeba data")
    d = tmp_path_factory.mktemp("corpus")
    pairs = real_pairs()
    moses = pairs[:300] + tatoeba_pairs()
    (d / "ui.de").write_text("".join(de + "\n" for _, de in moses))
    (d / "ui.en").write_text("".join(en + "\n" for en, _ in moses))
    tsv = "".join(f"{en}\t{de}\n" for en, de in pairs[200:500])
    (d / "ui.tsv").write_bytes(tsv.encode() + b"Broken \xff line\tKaputt\n" + b"only one field\n")
    write_tmx(d / "ui.tmx", pairs[400:600])
    inputs = [InputSpec(path=d / "ui"), InputSpec(path=d / "ui.tsv", langs=("en", "de")), InputSpec(path=d / "ui.tmx"),
              InputSpec(path=LOCALE_ROOT / "fr/LC_MESSAGES/coreutils.mo")]
    return d, inputs, len(moses) + 300 + 2 + 200


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    d, inputs, n_records = corpus
    layout = Layout.from_env(tmp_path_factory.mktemp("prep") / "home")
    cfg = PrepareConfig(inputs=inputs, from_raw_corpus=False, eval_sets=[TATOEBA], beam=BeamConfig(num_workers=2))
    return layout, cfg, run(cfg, layout), n_records


def test_every_record_is_clean_or_rejected_and_counts_add_up(prepared):
    layout, cfg, result, n_records = prepared
    fr = sum(1 for _ in catalog_pairs(read_mo(LOCALE_ROOT / "fr/LC_MESSAGES/coreutils.mo")))
    assert result.stats["input_pairs"] == n_records + fr
    assert result.clean.rows + result.rejects.rows == result.stats["input_pairs"]
    rejects = pq.read_table(layout.dataset_dir(REJECTS.relpath))
    by_reason = Counter(rejects.column("reason").to_pylist())
    assert dict(by_reason) == result.rejects.stats["rejected_by_reason"]  # files == counters
    assert set(by_reason) <= set(REJECT_REASONS)
    assert {"duplicate", "eval_overlap", "invalid_utf8", "malformed_record"} <= set(by_reason)
    # 200 pairs were planted twice (Moses/TSV, TSV/TMX); those a filter rejects never reach dedupe.
    assert by_reason["duplicate"] >= 150
    assert by_reason["eval_overlap"] == 5


def test_clean_corpus_has_no_duplicate_and_no_evaluation_sentence(prepared):
    layout, cfg, result, _ = prepared
    clean = pq.read_table(layout.dataset_dir(CLEAN_PAIRS.relpath))
    keys = clean.column("pair_key").to_pylist()
    assert len(keys) == len(set(keys)) == result.clean.rows
    eval_keys = load_eval_keys([TATOEBA])
    for text in clean.column("src_text").to_pylist() + clean.column("tgt_text").to_pylist():
        assert sentence_key(text) not in eval_keys
    assert set(clean.column("lang").to_pylist()) == {"de", "fr"}
    assert set(clean.column("source").to_pylist()) == {"moses", "tsv", "tmx", "gettext-mo"}


def test_rejects_can_be_broken_down_with_sql(prepared):
    layout, _, result, _ = prepared
    catalog.refresh(layout)
    rows = catalog.query(layout, "SELECT reason, lang, count(*) AS n FROM corpus_rejects GROUP BY ALL").to_pylist()
    assert sum(r["n"] for r in rows) == result.rejects.rows
    assert any(r["reason"] == "invalid_utf8" and r["lang"] is None for r in rows)  # language unknown: null


def test_append_dedupes_against_the_lake(prepared, tmp_path):
    layout, cfg, first, _ = prepared
    pairs = real_pairs()
    (tmp_path / "more.tsv").write_text("".join(f"{en}\t{de}\n" for en, de in pairs[550:600] + [("A brand new sentence", "Ein ganz neuer Satz")]))
    cfg2 = cfg.model_copy(update={"inputs": [InputSpec(path=tmp_path / "more.tsv", langs=("en", "de"))],
                                  "mode": "append", "beam": IN_MEMORY})
    second = run(cfg2, layout)
    assert second.stats["input_pairs"] == 51
    assert second.stats["clean_new"] == 1
    assert second.clean.rows == first.clean.rows + 1
    assert second.rejects.rows == first.rejects.rows + second.stats["rejected"]
    assert second.clean.stats["rejected_by_reason"].get("duplicate_existing", 0) >= 40


def test_broken_inputs_are_named(tmp_path, layout):
    (tmp_path / "c.de").write_text("a\nb\nc\n")
    (tmp_path / "c.en").write_text("a\nb\n")
    cfg = PrepareConfig(inputs=[InputSpec(path=tmp_path / "c")], from_raw_corpus=False, eval_sets=[], beam=IN_MEMORY)
    with pytest.raises(PrepareError, match=r"c\.de.*3.*c\.en.*2|c\.en.*2.*c\.de.*3"):
        run(cfg, layout)
    (tmp_path / "bad.tmx").write_text('<tmx><body><tu><tuv xml:lang="en"><seg>Hi</seg></tuv>\n<tuv xml:lang="de"><seg>Hallo</seg>\n</body></tmx>')
    (tmp_path / "ok.tsv").write_text("Open\tÖffnen\n")
    cfg = PrepareConfig(inputs=[InputSpec(path=tmp_path / "bad.tmx", langs=("en", "de")),
                                InputSpec(path=tmp_path / "ok.tsv", langs=("en", "de"))],
                        from_raw_corpus=False, eval_sets=[], beam=IN_MEMORY)
    with pytest.raises(PrepareError, match=r"bad\.tmx:\d+"):
        run(cfg, layout)
    result = run(cfg.model_copy(update={"skip_bad_inputs": True}), layout)
    assert result.clean.rows == 1 and "bad.tmx" in result.errors[0]


def test_config_errors_before_any_work(tmp_path, layout):
    with pytest.raises(PrepareError, match="nothing to prepare"):
        run(PrepareConfig(from_raw_corpus=True, eval_sets=[]), layout)
    with pytest.raises(PrepareError, match="evaluation set .* does not exist"):
        run(PrepareConfig(inputs=[InputSpec(path=tmp_path / "x.tsv")], eval_sets=[tmp_path / "nope"]), layout)


def _dataset_rows(layout, spec, fields):
    from storage.datasets import current_manifest

    m = current_manifest(layout, spec)
    root = layout.dataset_dir(spec.relpath)
    rows = []
    for f in m.files:
        for r in pq.read_table(root / f.path).to_pylist():
            rows.append(tuple((r | f.partition).get(c) for c in fields))
    return Counter(rows)


def test_raw_corpus_through_the_stage_equals_the_per_record_functions(tmp_path, real_catalogs):
    """corpus_raw from real catalogs -> the Beam stage (Arrow tables between steps) gives exactly the
    clean and rejects rows of the per-record functions: process_batch, then resolve_duplicates per
    pair key, then cap_translations per source."""
    from beam_jobs import gettext_ingest
    from labse_core import prepare as core

    layout = Layout.from_env(tmp_path / "home")
    ingest = gettext_ingest.GettextIngestConfig(languages=["de", "ja", "sr@latin"], domains=["glib20", "coreutils"],
                                                beam=IN_MEMORY)
    gettext_ingest.run(ingest, layout)
    raw_fields = [f.name for f in RAW_PAIRS.schema]
    raw = _dataset_rows(layout, RAW_PAIRS, raw_fields)
    rows = [dict(zip(raw_fields, t, strict=True)) for t, n in raw.items() for _ in range(n)]
    assert len(rows) > 3000
    # evaluation sentences: some of the catalogs' own texts, on either side
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text("".join(r["tgt_text"].replace("\n", " ") + "\n" for r in rows[::151])
                         + "".join(r["src_text"].replace("\n", " ") + "\n" for r in rows[::173]))
    rules = core.PrepareRules()
    kept, rejects = core.process_batch(rows, rules, load_eval_keys([eval_file]))
    groups = {}
    for r in kept:
        groups.setdefault(r["pair_key"], []).append(r)
    clean = []
    for g in groups.values():
        winner, lost = core.resolve_duplicates(g)
        clean.append(winner)
        rejects += lost
    clean_fields = [f.name for f in CLEAN_PAIRS.schema]
    reject_fields = [f.name for f in REJECTS.schema]
    cfg = PrepareConfig(eval_sets=[eval_file], beam=IN_MEMORY, batch_size=700, rows_per_file=900)
    result = run(cfg, layout)
    assert _dataset_rows(layout, CLEAN_PAIRS, clean_fields) == Counter(tuple(r.get(c) for c in clean_fields) for r in clean)
    assert _dataset_rows(layout, REJECTS, reject_fields) == Counter(tuple(r.get(c) for c in reject_fields) for r in rejects)
    assert {"duplicate", "eval_overlap", "copy"} <= set(result.clean.stats["rejected_by_reason"])

    # the cap on translations per source, after the dedupe
    by_source = {}
    for r in clean:
        by_source.setdefault((r["lang"], sentence_key(r["src_text"])), []).append(r)
    capped, dropped, tied = [], [], set()
    for key, g in by_source.items():
        k, d = core.cap_translations(g, 1)
        capped += k
        dropped += d
        order = sorted(core.order_key(r) for r in g)
        if len(order) > 1 and order[0] == order[1]:
            # two plural forms of one entry with the same English text: which one is kept is not defined
            tied.add(key)
    result = run(cfg.model_copy(update={"max_translations_per_source": 1, "shuffle_digits": 0}), layout)
    assert result.stats["rejected.source_cap"] == len(dropped) > 0
    got = _dataset_rows(layout, CLEAN_PAIRS, clean_fields)
    assert sum(got.values()) == len(capped)

    def untied(rows):
        return Counter(r for r in rows if (r[0], sentence_key(r[2])) not in tied)

    assert untied(got.elements()) == untied(tuple(r.get(c) for c in clean_fields) for r in capped)


def test_a_large_tsv_read_in_spans_by_two_workers_equals_one_whole_read(tmp_path):
    """A TSV input larger than ``span_bytes`` is read in spans by both workers: the published clean corpus
    and rejects (line numbers included) equal the whole-file read's; the input counts once; the dedupe's
    spill files are gone after the run and their size is recorded; an unreadable input read in spans is
    one message, not one per span."""
    pairs = real_pairs()
    lines = [f"{en}\t{de}\n" for en, de in pairs] + [f"{en}\t{de}\n" for en, de in pairs[:200]]  # duplicates
    lines.insert(100, "only one field\n")
    tsv = tmp_path / "big.tsv"
    tsv.write_text("".join(lines) * 3)
    assert tsv.stat().st_size > 2 * 65536  # three spans or more
    fields = ("lang", "src_text", "tgt_text", "origin", "line")
    reject_fields = ("reason", "src_text", "tgt_text", "line")
    out = {}
    for span_bytes in (10**9, 65536):
        layout = Layout.from_env(tmp_path / f"home-{span_bytes}")
        cfg = PrepareConfig(inputs=[InputSpec(path=tsv, langs=("en", "de"))], from_raw_corpus=False, eval_sets=[],
                            span_bytes=span_bytes, beam=BeamConfig(num_workers=2))
        result = run(cfg, layout)
        assert result.stats["inputs_read"] == 1
        assert result.spill_bytes > 0
        assert not list(layout.staging.glob("*spill-*"))  # removed
        out[span_bytes] = (_dataset_rows(layout, CLEAN_PAIRS, fields), _dataset_rows(layout, REJECTS, reject_fields),
                           result.stats["input_pairs"])
    whole, spans = out[10**9], out[65536]
    assert spans == whole
    assert whole[2] == len(lines) * 3 and sum(whole[1].values()) > 2 * len(pairs)  # every repeat a duplicate
    assert Counter(r[0] for r in whole[1].elements())["malformed_record"] == 3

    bad = tmp_path / "bad.tsv"
    bad.write_text("src\tzz-unknown\n" + "".join(lines) * 2)
    layout = Layout.from_env(tmp_path / "home-bad")
    cfg = PrepareConfig(inputs=[InputSpec(path=bad, tsv_header=True)], from_raw_corpus=False, eval_sets=[],
                        span_bytes=65536, skip_bad_inputs=True, beam=IN_MEMORY)
    with pytest.raises(PrepareError, match="every input was unreadable") as e:
        run(cfg, layout)
    assert "more)" not in str(e.value)  # one message for the input, not one per span
