"""`labse sql` is read-only by construction: every attack below is refused with a one-line message,
nothing outside the lake is read, and no file of the home changes (hashed before and after). Each attack
is refused by the layer expected to stop it (storage.catalog's three layers, told apart by their
messages); with the earlier layers switched off, the later ones still hold on their own.

The lake holds real data: corpus_raw from a few of this machine's gettext catalogs, and
corpus_clean / corpus_rejects prepared from it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from beam_jobs.gettext_ingest import GettextIngestConfig
from beam_jobs.gettext_ingest import run as ingest
from beam_jobs.options import BeamConfig
from beam_jobs.prepare import PrepareConfig
from beam_jobs.prepare import run as prepare
from storage import catalog
from storage.catalog import QueryError
from storage.layout import Layout
from tests.conftest import LOCALE_ROOT

IN_MEMORY = BeamConfig(running_mode="in_memory", num_workers=1)
CATALOGS = [LOCALE_ROOT / f"{lang}/LC_MESSAGES/{name}.mo" for lang in ("de", "fr") for name in ("coreutils", "grep")]


def tree_hash(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the digest of its bytes (and its mode)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
    return out


@pytest.fixture(scope="module")
def lake(tmp_path_factory, real_catalogs) -> Layout:
    paths = [p for p in CATALOGS if p.exists()]
    if len(paths) < 2:
        pytest.skip("not enough de/fr gettext catalogs on this machine")
    layout = Layout.from_env(tmp_path_factory.mktemp("sandbox") / "home").ensure()
    ingest(GettextIngestConfig(locale_roots=[], paths=paths, beam=IN_MEMORY), layout)
    prepare(PrepareConfig(eval_sets=[], beam=IN_MEMORY), layout)
    assert catalog.refresh(layout) == ["corpus_raw", "corpus_clean", "corpus_rejects"]
    return layout


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside the lake that an attack might try to write into."""
    (tmp_path / "outside").mkdir()
    return tmp_path / "outside"


REFUSED_BY = {
    # layer 3: our check of the statement types (DuckDB's parser) before anything runs
    "statement check": "only read queries are allowed here",
    # layer 2: DuckDB's sandbox: allowed_directories + enable_external_access (files, URLs, extensions)
    "sandbox": "refused: labse sql reads only the datasets in",
    # layer 2 too: with external access off, FROM '<path>' is no file read (no replacement scan)
    "no replacement scan": "does not exist",
    # layer 2: lock_configuration
    "locked configuration": "the configuration has been locked",
    # layer 1: the catalog file opened read_only
    "read-only catalog": "in read-only mode",
}


def _refused(layout: Layout, sql: str, layer: str) -> str:
    """``sql`` fails with a one-line QueryError from ``layer`` (a key of REFUSED_BY), the home unchanged."""
    before = tree_hash(layout.home)
    with pytest.raises(QueryError) as info:
        catalog.query(layout, sql)
    message = str(info.value)
    assert "\n" not in message, message
    assert REFUSED_BY[layer] in message, f"{sql!r}: expected the {layer} to refuse it, got: {message}"
    others = [name for name, m in REFUSED_BY.items() if name != layer and m in message]
    assert not others, f"{sql!r}: {message} (also reads like {others})"
    assert tree_hash(layout.home) == before, f"{sql!r} changed the home"
    return message


@pytest.fixture
def lake_copy(lake, tmp_path) -> Layout:
    """A copy of the lake's home for tests that switch layers off (a hole must not damage the shared one)."""
    import shutil

    shutil.copytree(lake.home, tmp_path / "copy")
    layout = Layout.from_env(tmp_path / "copy")
    catalog.refresh(layout)  # views now point at the copy
    return layout


def test_views_over_real_datasets_still_work(lake):
    n_raw = catalog.query(lake, "SELECT count(*) AS n FROM corpus_raw").to_pylist()[0]["n"]
    datasets = {r["name"]: r["rows"] for r in catalog.query(lake, "SELECT name, rows FROM datasets").to_pylist()}
    assert n_raw == datasets["corpus_raw"] > 100
    clean = catalog.query(lake, "SELECT lang, count(*) AS n FROM corpus_clean GROUP BY 1 ORDER BY 1").to_pylist()
    assert [r["lang"] for r in clean] == ["de", "fr"]
    assert sum(r["n"] for r in clean) == datasets["corpus_clean"]
    # the reads a user does: SUMMARIZE, DESCRIBE, EXPLAIN (ANALYZE) of a SELECT, CTEs, recursion,
    # several SELECTs, a lake file read by path
    for sql in ("SUMMARIZE corpus_clean", "DESCRIBE corpus_rejects", "SHOW TABLES", "EXPLAIN SELECT * FROM corpus_raw",
                "EXPLAIN ANALYZE SELECT count(*) FROM corpus_raw", "WITH t AS (SELECT lang FROM corpus_raw) FROM t",
                "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
                "SELECT 1; SELECT 2", f"SELECT count(*) FROM read_parquet('{lake.lake}/corpus/raw/*/*.parquet')"):
        assert catalog.query(lake, sql).num_rows >= 1, sql
    assert catalog.query(lake, "SELECT 2024 AS y").to_pylist() == [{"y": 2024}]


@pytest.mark.parametrize("target", ["lake", "outside"])
@pytest.mark.parametrize(
    "template",
    [
        # the attack: overwrite a published file through EXPLAIN ANALYZE
        "EXPLAIN ANALYZE COPY (SELECT * EXCLUDE (lang) FROM corpus_clean LIMIT 3) TO '{path}' (FORMAT parquet)",
        "EXPLAIN ANALYSE COPY (SELECT 1) TO '{path}'",
        "/* comment */ EXPLAIN ANALYZE COPY (SELECT 1) TO '{path}'",
        "EXPLAIN (FORMAT json) COPY (SELECT 1) TO '{path}'",
        "COPY (SELECT 1) TO '{path}'",
        "COPY corpus_raw TO '{path}'",
        # data-modifying CTEs are SELECT statements to DuckDB's statement splitter
        "WITH t AS (COPY (SELECT 1) TO '{path}') SELECT 1",
        "SELECT * FROM (WITH t AS (COPY (SELECT 1) TO '{path}') SELECT 1)",
        "SELECT 1 WHERE 1 IN (WITH q AS (COPY corpus_raw TO '{path}') SELECT 1)",
        "EXPLAIN ANALYZE WITH t AS (COPY (SELECT 1) TO '{path}') SELECT 1",
        "SELECT 1; COPY (SELECT 1) TO '{path}'",
        "EXPORT DATABASE '{path}'",
    ],
)
def test_no_statement_writes_a_file(lake, outside, template, target):
    path = (lake.lake / "corpus/clean/lang=de/part-00000.parquet") if target == "lake" else outside / "x.csv"
    _refused(lake, template.format(path=path), "statement check")
    assert target == "lake" or not path.exists()
    n = catalog.query(lake, "SELECT count(*) AS n FROM corpus_clean").to_pylist()[0]["n"]
    assert n == catalog.query(lake, "SELECT rows FROM datasets WHERE name = 'corpus_clean'").to_pylist()[0]["rows"]


OUTSIDE_READS = [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_text('/etc/shadow')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_json('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM parquet_metadata('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM read_text('{lake}/../../../../../../etc/passwd')",
    "SELECT * FROM glob('{lake}/../*')",
    "SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "SELECT * FROM read_csv('s3://bucket/key.csv')",
    "FROM 'https://example.com/x.csv'",
    "SELECT * FROM corpus_raw UNION ALL SELECT * FROM read_csv('/etc/passwd')",
    "EXPLAIN ANALYZE SELECT * FROM read_text('/etc/passwd')",
]


@pytest.mark.parametrize("sql", OUTSIDE_READS + ["FROM '/etc/passwd'"])
def test_nothing_outside_the_lake_is_read(lake, sql):
    """Reads are SELECTs: the statement check lets them through and DuckDB's sandbox refuses them."""
    layer = "no replacement scan" if sql == "FROM '/etc/passwd'" else "sandbox"
    message = _refused(lake, sql.format(lake=lake.lake), layer)
    assert "root:" not in message


@pytest.mark.parametrize(
    "sql",
    [
        "SET enable_external_access = true",
        "SET allowed_directories = ['/']",
        "RESET allowed_directories",
        "SET lock_configuration = false",
        "EXPLAIN ANALYZE SET threads = 1",
        "PRAGMA enable_profiling",
        "PRAGMA version",
        "CALL pragma_version()",
        "INSTALL httpfs",
        "LOAD httpfs",
        "FORCE INSTALL httpfs FROM 'http://127.0.0.1:9'",
        "ATTACH '{outside}/other.db' AS o",
        "ATTACH ':memory:' AS m",
        "DETACH memory",
        "USE memory",
        "CREATE TABLE t AS SELECT 1",
        "CREATE VIEW v AS SELECT 1",
        "CREATE OR REPLACE VIEW corpus_raw AS SELECT 1",
        "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
        "DROP VIEW corpus_raw",
        "DELETE FROM datasets",
        "UPDATE datasets SET rows = 0",
        "INSERT INTO datasets SELECT * FROM datasets",
        "WITH t AS (DELETE FROM datasets RETURNING *) SELECT 1",
        "WITH t AS (UPDATE datasets SET rows = 0 RETURNING *) SELECT 1",
        "VACUUM",
        "CHECKPOINT",
        "PIVOT corpus_raw ON lang",
        "SELECT 1; DROP VIEW corpus_raw",
        "SELECT 1; SET threads = 1",
        "BEGIN TRANSACTION",
        "PREPARE p AS SELECT 1",
    ],
)
def test_nothing_is_changed_or_loaded(lake, outside, sql):
    _refused(lake, sql.format(outside=outside), "statement check")
    assert not (outside / "other.db").exists()
    assert catalog.query(lake, "SELECT count(*) AS n FROM corpus_raw").to_pylist()[0]["n"] > 0


def test_the_sandbox_holds_whatever_the_statement_check_lets_through(lake_copy, outside, monkeypatch):
    """Layers 1 and 2 without layer 3: with the statement check switched off, DuckDB's sandbox still refuses
    reads outside the lake, network reads, writes outside it, extension loading and configuration changes,
    and the read-only catalog file refuses changes to its tables and views."""
    monkeypatch.setattr(catalog, "_check_read_only", lambda con, sql: None)
    expected = {sql: "sandbox" for sql in OUTSIDE_READS} | {
        "FROM '/etc/passwd'": "no replacement scan",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO '{outside}/x.csv'": "sandbox",
        "COPY corpus_raw TO '{outside}/x.csv'": "sandbox",
        "EXPORT DATABASE '{outside}/export'": "sandbox",
        "ATTACH '{outside}/other.db' AS o": "sandbox",
        "LOAD httpfs": "sandbox",
        "INSTALL httpfs": "sandbox",
        "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')": "sandbox",  # persistent secrets live outside
        "SET enable_external_access = true": "locked configuration",
        "SET allowed_directories = ['/']": "locked configuration",
        "RESET allowed_directories": "locked configuration",
        "SET lock_configuration = false": "locked configuration",
        "PRAGMA enable_profiling": "locked configuration",
        "SELECT 1; SET threads = 1": "locked configuration",
        "CREATE TABLE t AS SELECT 1": "read-only catalog",
        "CREATE OR REPLACE VIEW corpus_raw AS SELECT 1": "read-only catalog",
        "DROP VIEW corpus_raw": "read-only catalog",
        "DELETE FROM datasets": "read-only catalog",
        "UPDATE datasets SET rows = 0": "read-only catalog",
        "INSERT INTO datasets SELECT * FROM datasets": "read-only catalog",
        "WITH t AS (DELETE FROM datasets RETURNING *) SELECT 1": "read-only catalog",
        "ATTACH ':memory:' AS m": "read-only catalog",
    }
    for sql, layer in expected.items():
        _refused(lake_copy, sql.format(lake=lake_copy.lake, outside=outside), layer)
    assert list(outside.iterdir()) == []


def test_the_read_only_catalog_holds_on_its_own(lake_copy, monkeypatch):
    """Layer 1 alone: with the statement check and DuckDB's sandbox both switched off, the catalog file
    opened read_only still refuses every change to its views and tables."""
    monkeypatch.setattr(catalog, "_check_read_only", lambda con, sql: None)
    monkeypatch.setattr(catalog, "_sandbox", lambda con, layout: None)
    for sql in ("CREATE TABLE t AS SELECT 1", "CREATE VIEW v AS SELECT 1", "CREATE OR REPLACE VIEW corpus_raw AS SELECT 1",
                "DROP VIEW corpus_raw", "DELETE FROM datasets", "UPDATE datasets SET rows = 0",
                "INSERT INTO datasets SELECT * FROM datasets", "WITH t AS (UPDATE datasets SET rows = 0 RETURNING *) SELECT 1",
                "SELECT 1; DROP VIEW corpus_raw"):
        _refused(lake_copy, sql, "read-only catalog")


def test_a_missing_file_is_reported_by_refresh_and_query(lake, tmp_path):
    import shutil

    home = tmp_path / "copy"
    shutil.copytree(lake.home, home)
    layout = Layout.from_env(home)
    catalog.refresh(layout)  # views now point at the copy
    victim = next((layout.lake / "corpus/raw/lang=de").glob("*.parquet"))
    victim.unlink()
    with pytest.raises(QueryError) as info:
        catalog.query(layout, "SELECT count(*) FROM corpus_raw WHERE lang = 'de'")
    assert "labse catalog-refresh" in str(info.value) and "\n" not in str(info.value)
    assert catalog.problems(layout) == {"corpus_raw": f"{victim} listed in its manifest is missing"}
    assert "corpus_raw" not in catalog.refresh(layout)


def test_an_empty_dataset_has_a_view_with_the_same_columns(lake, layout):
    from storage.datasets import DatasetWriter
    from storage.schemas import CLEAN_PAIRS

    DatasetWriter(layout, CLEAN_PAIRS).begin().publish(expected_rows=0)
    assert catalog.refresh(layout) == ["corpus_clean"]
    assert catalog.query(layout, "SELECT count(*) AS n FROM corpus_clean WHERE lang = 'de'").to_pylist() == [{"n": 0}]
    empty = catalog.query(layout, "DESCRIBE corpus_clean").select(["column_name", "column_type"]).to_pylist()
    real = catalog.query(lake, "DESCRIBE corpus_clean").select(["column_name", "column_type"]).to_pylist()
    assert empty == real
