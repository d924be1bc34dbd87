"""DuckDB catalog: one view per published dataset, and safe read-only querying for `labse sql`.

The catalog file (``LABSE_HOME/catalog.duckdb``) holds only views over the lake's Parquet files and
a ``datasets`` table listing each dataset's manifest summary, so it is tiny and can be rebuilt at
any time with ``refresh``. Queries run on a read-only connection and only statements that read
(SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) are accepted.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from storage.layout import Layout
from storage.manifest import read_manifest
from storage.schemas import DATASETS, DatasetSpec


class QueryError(Exception):
    """A query the catalog refuses or cannot run; the message is meant for the user as is."""


READ_STATEMENTS = {"SELECT", "EXPLAIN"}


def _view_sql(layout: Layout, spec: DatasetSpec) -> str:
    root = layout.dataset_dir(spec.relpath)
    depth = "/*" * len(spec.partition_by)
    glob = f"{root}{depth}/*.parquet".replace("'", "''")
    hive = "true" if spec.partition_by else "false"
    return f"CREATE OR REPLACE VIEW {spec.name} AS SELECT * FROM read_parquet('{glob}', hive_partitioning={hive})"


def refresh(layout: Layout) -> list[str]:
    """(Re)create a view for every dataset that has a manifest; drop views of datasets that are gone."""
    layout.home.mkdir(parents=True, exist_ok=True)
    published = []
    with duckdb.connect(str(layout.catalog_db)) as con:
        con.execute(
            "CREATE OR REPLACE TABLE datasets (name VARCHAR, path VARCHAR, rows BIGINT, files INTEGER, "
            "partitions INTEGER, created_at VARCHAR, description VARCHAR)"
        )
        for spec in DATASETS.values():
            manifest = read_manifest(layout.dataset_dir(spec.relpath))
            if manifest is None or not manifest.files:
                con.execute(f"DROP VIEW IF EXISTS {spec.name}")
                continue
            con.execute(_view_sql(layout, spec))
            con.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?)",
                [spec.name, str(layout.dataset_dir(spec.relpath)), manifest.rows, len(manifest.files),
                 len(manifest.partitions), manifest.created_at, spec.description],
            )
            published.append(spec.name)
    return published


def _check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"SQL error: {_first_line(e)}") from None
    if not statements:
        raise QueryError("empty query")
    for st in statements:
        kind = str(st.type).rsplit(".", 1)[-1].upper()
        if kind not in READ_STATEMENTS:
            raise QueryError(f"only read queries are allowed here (got a {kind} statement)")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def query(layout: Layout, sql: str) -> pa.Table:
    """Run a read-only query against the catalog and return the result of its last statement."""
    if not layout.catalog_db.exists():
        raise QueryError(f"no catalog at {layout.catalog_db}: run `labse demo` (or a stage) first, "
                         f"or set LABSE_HOME to the folder that holds one")
    try:
        con = duckdb.connect(str(layout.catalog_db), read_only=True)
    except duckdb.Error as e:
        raise QueryError(f"cannot open the catalog {layout.catalog_db}: {_first_line(e)}") from None
    with con:
        _check_read_only(con, sql)
        try:
            rel = con.sql(sql)
            return rel.to_arrow_table() if rel is not None else pa.table({})
        except duckdb.CatalogException as e:
            views = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
            hint = f" Datasets in the catalog: {', '.join(sorted(views)) or 'none yet'} (and the table 'datasets')."
            raise QueryError(f"{_first_line(e)}.{hint}") from None
        except duckdb.IOException as e:
            raise QueryError(f"cannot read a dataset's files: {_first_line(e)}; run `labse catalog refresh`") from None
        except duckdb.Error as e:
            raise QueryError(f"SQL error: {_first_line(e)}") from None
