"""The gettext stage on this machine's real catalogs (the domains tests.conftest.BASE_DOMAINS names), with
the multi-process direct runner."""

from collections import Counter

import pyarrow.parquet as pq
import pytest

from beam_jobs.gettext_ingest import GettextIngestConfig, IngestError, discover_catalogs, plan_files, run
from beam_jobs.options import BeamConfig
from labse_core.gettext_catalog import CatalogError, catalog_pairs, read_catalog
from storage.datasets import current_manifest
from storage.schemas import RAW_PAIRS
from tests.conftest import BASE_DOMAINS
from tests.labse_core.test_gettext_catalog import PO

LANGS = ["de", "ja", "sr@latin"]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, real_catalogs):
    from storage.layout import Layout

    layout = Layout.from_env(tmp_path_factory.mktemp("ingest") / "home")
    cfg = GettextIngestConfig(languages=LANGS, domains=list(BASE_DOMAINS), rows_per_file=10_000,
                              beam=BeamConfig(num_workers=2))
    return layout, cfg, run(cfg, layout)


def test_real_catalogs_land_partitioned_by_language(ingested):
    layout, cfg, result = ingested
    m = result.manifest
    assert set(m.partitions) == {"lang=de", "lang=ja", "lang=sr-Latn"}
    assert m.partitions["lang=de"] > 15_000  # German is well translated on any Debian system (~20k here)
    assert len([f for f in m.files if f.partition["lang"] == "de"]) >= 2  # rows_per_file splits it
    table = pq.read_table(layout.dataset_dir(RAW_PAIRS.relpath) / "lang=de")
    assert table.num_rows == m.partitions["lang=de"]
    de = dict(zip(table.column("src_text").to_pylist(), table.column("tgt_text").to_pylist(), strict=True))
    assert de["Germany"] == "Deutschland"
    assert set(table.column("src_lang").to_pylist()) == {"en"}
    assert set(table.column("locale").to_pylist()) >= {"de"}


def test_every_pair_of_the_selected_catalogs_is_there_once(ingested):
    """The Beam job (2 worker processes) against a plain loop over the same files."""
    layout, cfg, result = ingested
    expected = Counter()
    for ref in discover_catalogs(cfg):
        for p in catalog_pairs(read_catalog(ref.path)):
            expected[(ref.lang, ref.path, p.line, p.plural_form, p.tgt_text)] += 1
    table = pq.read_table(layout.dataset_dir(RAW_PAIRS.relpath))
    got = Counter(zip(*(table.column(c).to_pylist() for c in ("lang", "origin", "line", "plural_form", "tgt_text")),
                      strict=True))
    assert got == expected
    assert result.manifest.rows == sum(expected.values()) == result.stats["pairs"] == result.stats["rows_written"]


def test_plan_balances_files_within_a_language(ingested):
    _, cfg, _ = ingested
    refs = discover_catalogs(cfg)
    groups = plan_files(refs, rows_per_file=10_000)
    assert sorted(r.path for g in groups for r in g.refs) == sorted(r.path for r in refs)  # each file once
    de = [sum(r.bytes for r in g.refs) for g in groups if g.lang == "de"]
    assert len(de) >= 2 and max(de) < 2 * min(de) + max(r.bytes for r in refs)


def test_given_po_files_are_read_with_their_header_language(layout, tmp_path):
    (tmp_path / "po").mkdir()
    (tmp_path / "po" / "messages.po").write_text(PO)  # no locale in the name: header says de
    cfg = GettextIngestConfig(locale_roots=[], paths=[tmp_path / "po"], beam=BeamConfig(running_mode="in_memory", num_workers=1))
    result = run(cfg, layout)
    assert result.manifest.partitions == {"lang=de": 7}
    assert result.stats["skipped_fuzzy"] == 1


def test_malformed_po_fails_naming_file_and_line(layout, tmp_path):
    bad = tmp_path / "de.po"
    bad.write_text('msgid "ok"\nmsgstr "gut"\n\nmsgid "broken\nmsgstr "kaputt"\n')
    cfg = GettextIngestConfig(locale_roots=[], paths=[bad], beam=BeamConfig(running_mode="in_memory", num_workers=1))
    with pytest.raises((CatalogError, IngestError), match=rf"{bad}:4: malformed string literal"):
        run(cfg, layout)
    assert current_manifest(layout, RAW_PAIRS) is None  # nothing published


def test_malformed_system_catalog_fails_or_is_counted(layout, tmp_path):
    root = tmp_path / "locale"
    (root / "de/LC_MESSAGES").mkdir(parents=True)
    (root / "de/LC_MESSAGES/good.po").write_text(PO)
    (root / "fr/LC_MESSAGES").mkdir(parents=True)
    (root / "fr/LC_MESSAGES/bad.po").write_text('msgid "a"\nmsgstr "b"\nmsgid "c"\n')
    beam = BeamConfig(running_mode="in_memory", num_workers=1)
    with pytest.raises(IngestError, match=r"fr/LC_MESSAGES/bad\.po:3: msgid without msgstr"):
        run(GettextIngestConfig(locale_roots=[root], beam=beam), layout)
    result = run(GettextIngestConfig(locale_roots=[root], skip_bad_catalogs=True, beam=beam), layout)
    assert result.manifest.partitions == {"lang=de": 7}
    assert result.stats["malformed_catalogs"] == 1 and "bad.po:3" in result.errors[0]


def test_missing_inputs_are_clear(layout, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(GettextIngestConfig(locale_roots=[], paths=[tmp_path / "nope.po"]), layout)
    with pytest.raises(IngestError, match="no gettext catalogs found"):
        run(GettextIngestConfig(locale_roots=[tmp_path]), layout)
