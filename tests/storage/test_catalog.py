import pytest

from storage import catalog
from storage.catalog import QueryError
from tests.storage.test_datasets import _write_version


def test_no_catalog_yet_is_a_clear_error(layout):
    with pytest.raises(QueryError, match="no catalog at .*labse demo"):
        catalog.query(layout, "SELECT 1")


def test_views_per_published_dataset(layout):
    assert catalog.refresh(layout) == []
    _write_version(layout, [("de", 2), ("fr", 1)])
    assert catalog.refresh(layout) == ["corpus_raw"]
    t = catalog.query(layout, "SELECT lang, count(*) AS n FROM corpus_raw GROUP BY 1 ORDER BY 1")
    assert t.to_pylist() == [{"lang": "de", "n": 2}, {"lang": "fr", "n": 1}]
    d = catalog.query(layout, "SELECT name, rows, partitions FROM datasets").to_pylist()
    assert d == [{"name": "corpus_raw", "rows": 3, "partitions": 2}]


@pytest.mark.parametrize(
    "sql, message",
    [
        ("DROP VIEW corpus_raw", "only read queries"),
        ("CREATE TABLE t AS SELECT 1", "only read queries"),
        ("COPY (SELECT 1) TO '/tmp/labse-should-not-exist.csv'", "only read queries"),
        ("ATTACH '/tmp/other.db'", "only read queries"),
        ("SELECT 1; DELETE FROM datasets", "only read queries"),
        ("SELEC 1", "SQL error: Parser Error"),
        ("SELECT * FROM corpus_missing", "corpus_missing does not exist.* Datasets in the catalog: corpus_raw"),
        ("", "empty query"),
    ],
)
def test_refused_and_bad_queries_have_clear_messages(layout, sql, message):
    _write_version(layout, [("de", 1)])
    catalog.refresh(layout)
    with pytest.raises(QueryError, match=message):
        catalog.query(layout, sql)
    assert catalog.query(layout, "SELECT count(*) AS n FROM corpus_raw").to_pylist() == [{"n": 1}]


def test_read_statements_allowed(layout):
    _write_version(layout, [("de", 1)])
    catalog.refresh(layout)
    for sql in ("DESCRIBE corpus_raw", "SUMMARIZE corpus_raw", "FROM corpus_raw", "EXPLAIN SELECT 1",
                "WITH x AS (SELECT 1 AS a) SELECT a FROM x", "SHOW TABLES"):
        assert catalog.query(layout, sql).num_rows >= 1, sql


def test_dataset_removed_drops_its_view(layout):
    import shutil

    _write_version(layout, [("de", 1)])
    catalog.refresh(layout)
    shutil.rmtree(layout.dataset_dir("corpus/raw"))
    assert catalog.refresh(layout) == []
    with pytest.raises(QueryError, match="does not exist"):
        catalog.query(layout, "SELECT * FROM corpus_raw")


def test_eval_results_written_before_the_precision_column_still_read(layout):
    """A lake from before ``precision`` was recorded: its files lack the column; the view reads them as null
    beside newer rows (union by name), and a query naming the column works over both."""
    import pyarrow.parquet as pq

    from labse_core.evaluation.results import publish_rows
    from storage.manifest import read_manifest
    from storage.schemas import EVAL_RESULTS

    row = {"split": "test", "scope": "language", "language": "de", "direction": "both", "metric": "accuracy",
           "value": 0.5, "n": 10}
    publish_rows(layout, "tatoeba-v1", [row], run_id="old", model_uri="m", model_version=None)
    root = layout.dataset_dir(EVAL_RESULTS.relpath)
    (old_file,) = [root / f.path for f in read_manifest(root).files]
    table = pq.ParquetFile(old_file).read()
    pq.write_table(table.drop_columns(["precision"]), old_file)  # as an older version wrote it
    assert "precision" not in pq.ParquetFile(old_file).schema_arrow.names
    publish_rows(layout, "tatoeba-v1", [row | {"value": 0.6}], run_id="new", model_uri="m", model_version=None,
                 precision="bf16")
    catalog.refresh(layout)
    got = catalog.query(layout, "SELECT run_id, precision, value, eval_set FROM eval_results ORDER BY run_id").to_pylist()
    assert got == [{"run_id": "new", "precision": "bf16", "value": 0.6, "eval_set": "tatoeba-v1"},
                   {"run_id": "old", "precision": None, "value": 0.5, "eval_set": "tatoeba-v1"}]
