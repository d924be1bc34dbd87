"""DuckDB catalog: one view per published dataset, and sandboxed read-only querying for `labse sql`.

The catalog file (``LABSE_HOME/catalog.duckdb``) holds only views over the lake's Parquet files and
a ``datasets`` table listing each dataset's manifest summary, so it is tiny and can be rebuilt at
any time with ``refresh``. A dataset published with no rows still gets a view, over an empty
relation with the dataset's declared columns, so queries on it return nothing instead of failing.

``query`` is read-only by construction, in three layers (each one alone stops some attacks the
others would not):

1. the catalog file is opened ``read_only``: no table, view or setting in it can change;
2. DuckDB's own sandbox, set before the user's SQL runs and then locked: file access only inside
   the lake folder (``allowed_directories``), no other file, no URL (``enable_external_access``),
   no extension installed or loaded on the fly (``autoinstall/autoload_known_extensions``), and
   ``lock_configuration`` so no ``SET`` can undo it;
3. the statements, as DuckDB's parser sees them: only SELECT-type statements (SELECT, WITH, FROM,
   DESCRIBE, SHOW, SUMMARIZE) and EXPLAIN of one; every query node inside them (CTEs, subqueries)
   must be a SELECT too, because DuckDB accepts ``WITH t AS (COPY ... TO '<lake>/...') SELECT 1``
   as a SELECT statement and the sandbox allows writes inside the lake. ``EXPLAIN ANALYZE`` runs
   its statement, so the explained statement is checked the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from storage.layout import Layout
from storage.manifest import Manifest, read_manifest
from storage.schemas import DATASETS, DatasetSpec


class QueryError(Exception):
    """A query the catalog refuses or cannot run; the message is meant for the user as is."""


READ_STATEMENTS = {"SELECT", "EXPLAIN"}
# Query nodes a read may contain (json_serialize_sql's node types); COPY/INSERT/UPDATE/DELETE nodes
# inside a CTE are what this excludes.
READ_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}
# EXPLAIN [ANALYZE|ANALYSE] [(options)] <statement>
_EXPLAIN = re.compile(r"\s*EXPLAIN\s+(?:ANALY[SZ]E\s+)?(?:\((?:[^()']|'[^']*')*\)\s*)?(?P<inner>.*)\Z", re.I | re.S)


# ------------------------------------------------------------------------------------------------
# views


@dataclass(frozen=True)
class DatasetState:
    """What the catalog knows of one dataset: its manifest, or why it cannot be read."""

    spec: DatasetSpec
    manifest: Manifest | None
    problem: str | None = None


def inspect(layout: Layout, spec: DatasetSpec) -> DatasetState:
    """The dataset's manifest, checked against the files on disk (a file deleted by hand is reported,
    not turned into a view that fails or silently returns fewer rows)."""
    root = layout.dataset_dir(spec.relpath)
    try:
        manifest = read_manifest(root)
    except (ValueError, OSError) as e:  # json.JSONDecodeError and pydantic's ValidationError are ValueErrors
        return DatasetState(spec, None, f"its manifest {root / '_manifest.json'} cannot be read ({_first_line(e)})")
    if manifest is None:
        return DatasetState(spec, None)
    missing = [f.path for f in manifest.files if not (root / f.path).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        return DatasetState(spec, manifest, f"{root / missing[0]}{more} listed in its manifest is missing")
    return DatasetState(spec, manifest)


def problems(layout: Layout) -> dict[str, str]:
    """Datasets that have a manifest but cannot be read, with the reason (one line each)."""
    out = {}
    for spec in DATASETS.values():
        state = inspect(layout, spec)
        if state.problem:
            out[spec.name] = state.problem
    return out


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _empty_view_sql(spec: DatasetSpec) -> str:
    """A typed relation with no rows, columns in the order a hive-partitioned read gives them."""
    file_cols = [f.name for f in spec.file_schema]
    with duckdb.connect() as con:
        rel = con.from_arrow(spec.schema.empty_table())
        types = dict(zip(rel.columns, map(str, rel.types), strict=True))
    cols = ", ".join(f'CAST(NULL AS {types[c]}) AS "{c}"' for c in [*file_cols, *spec.partition_by])
    return f"CREATE OR REPLACE VIEW {spec.name} AS SELECT {cols} WHERE false"


def _view_sql(layout: Layout, spec: DatasetSpec, manifest: Manifest) -> str:
    # The manifest's files, not a glob: a file removed by hand then fails the query (IOException)
    # instead of silently returning fewer rows, and a stray file in the folder is never read.
    root = layout.dataset_dir(spec.relpath)
    files = ", ".join(_quote(str(root / f.path)) for f in manifest.files)
    hive = "true" if spec.partition_by else "false"
    # union_by_name: files written before a nullable column was added (eval_results.precision) read as null there
    return (f"CREATE OR REPLACE VIEW {spec.name} AS SELECT * FROM read_parquet([{files}], hive_partitioning={hive}, "
            "union_by_name=true)")


def refresh(layout: Layout) -> list[str]:
    """(Re)create a view for every dataset that has a manifest; drop views of datasets that are gone
    or damaged (``problems`` says why). Returns the names of the views."""
    layout.home.mkdir(parents=True, exist_ok=True)
    published = []
    try:
        con = duckdb.connect(str(layout.catalog_db))
    except duckdb.Error as e:
        raise QueryError(f"cannot open the catalog {layout.catalog_db}: {_first_line(e)}") from None
    with con:
        con.execute(
            "CREATE OR REPLACE TABLE datasets (name VARCHAR, path VARCHAR, rows BIGINT, files INTEGER, "
            "partitions INTEGER, created_at VARCHAR, description VARCHAR)"
        )
        for spec in DATASETS.values():
            state = inspect(layout, spec)
            manifest = state.manifest
            if manifest is None or state.problem:
                con.execute(f"DROP VIEW IF EXISTS {spec.name}")
                continue
            con.execute(_view_sql(layout, spec, manifest) if manifest.files else _empty_view_sql(spec))
            con.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?)",
                [spec.name, str(layout.dataset_dir(spec.relpath)), manifest.rows, len(manifest.files),
                 len(manifest.partitions), manifest.created_at, spec.description],
            )
            published.append(spec.name)
    return published


# ------------------------------------------------------------------------------------------------
# read-only queries


def _query_node_types(tree: Any) -> Iterator[str]:
    """Types of every query node in a json_serialize_sql tree (a query node is a dict with a ``cte_map``)."""
    if isinstance(tree, dict):
        if "cte_map" in tree:
            yield str(tree.get("type"))
        for value in tree.values():
            yield from _query_node_types(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _query_node_types(value)


def _check_select(con: duckdb.DuckDBPyConnection, text: str) -> None:
    """``text`` is one SELECT-type statement whose every query node (CTEs, subqueries) is a read."""
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchall()[0][0])
    except duckdb.Error as e:
        raise QueryError(f"SQL error: {_first_line(e)}") from None
    if tree.get("error"):
        message = str(tree.get("error_message") or "the statement cannot be checked").strip().splitlines()[0]
        raise QueryError(f"SQL error: {message}")
    bad = sorted({k for k in _query_node_types(tree) if k not in READ_NODES})  # an allowlist: unknown is refused
    if bad:
        kinds = ", ".join(k.removesuffix("_NODE").removesuffix("_QUERY") for k in bad)
        raise QueryError(f"only read queries are allowed here (the query contains a {kinds} statement)")


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
        if kind == "EXPLAIN":
            # EXPLAIN ANALYZE executes the statement it explains: check that one as a read too.
            m = _EXPLAIN.match(st.query)
            try:
                inner = con.extract_statements(m.group("inner")) if m and m.group("inner").strip() else []
            except duckdb.Error as e:
                raise QueryError(f"SQL error: {_first_line(e)}") from None
            if len(inner) != 1 or str(inner[0].type).rsplit(".", 1)[-1].upper() != "SELECT":
                raise QueryError("only read queries are allowed here (EXPLAIN of a statement that is not a SELECT)")
            _check_select(con, inner[0].query)
        else:
            _check_select(con, st.query)


def _sandbox(con: duckdb.DuckDBPyConnection, layout: Layout) -> None:
    """DuckDB's own sandbox: files only inside the lake, no network, no extension loading; locked."""
    # The views name the lake as the layout spells it; a symlinked lake is also allowed as resolved.
    lakes = sorted({str(p).rstrip("/") + "/" for p in (layout.lake, layout.lake.resolve())})
    for stmt in (
        f"SET allowed_directories=[{', '.join(map(_quote, lakes))}]",
        "SET enable_external_access=false",
        "SET autoinstall_known_extensions=false",
        "SET autoload_known_extensions=false",
        "SET lock_configuration=true",
    ):
        con.execute(stmt)


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
        _sandbox(con, layout)
        _check_read_only(con, sql)
        try:
            rel = con.sql(sql)
            return rel.to_arrow_table() if rel is not None else pa.table({})
        except duckdb.CatalogException as e:
            views = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
            hint = f" Datasets in the catalog: {', '.join(sorted(views)) or 'none yet'} (and the table 'datasets')."
            raise QueryError(f"{_first_line(e)}.{hint}") from None
        except duckdb.PermissionException as e:
            raise QueryError(f"refused: labse sql reads only the datasets in {layout.lake} "
                             f"({_first_line(e).removeprefix('Permission Error: ')})") from None
        except duckdb.IOException as e:
            raise QueryError(f"cannot read a dataset's files: {_first_line(e)}; a file was removed or changed "
                             "outside labse: `labse catalog-refresh` lists the damaged datasets") from None
        except duckdb.Error as e:
            raise QueryError(f"SQL error: {_first_line(e)}") from None
