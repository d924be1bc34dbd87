"""The lake of record on an object store (``s3://``, ``gs://``, any fsspec URL), through fsspec.

Settings (environment only, so that no secret is ever in code, parameters, logs or artifacts):

- ``LABSE_LAKE_URL``: the remote lake, e.g. ``s3://bucket/labse/lake``. Unset: the lake is only the
  local one under ``LABSE_HOME`` (the embedded default).
- credentials and endpoint: the object store's own variables, read by its fsspec driver, never by
  us (S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, and ``AWS_ENDPOINT_URL``
  for MinIO or any S3-protocol server; GCS: ``GOOGLE_APPLICATION_CREDENTIALS``).

How a dataset lives there: an object store has no rename, so a version is uploaded under
``<dataset>/_versions/<version>/`` (data files, then its manifest) and published by one PUT of
``<dataset>/_current.json`` (which version, and its manifest): a single-object write is atomic, so a
reader sees the old version or the new one, never a mix. Older versions are deleted after the switch.

The Beam stages and trainers work on a local (or shared-filesystem) lake; ``push`` publishes its
datasets to the remote lake and ``pull`` brings the current remote version into a local lake, so
``ingest -> push``, ``pull -> prepare -> push`` runs each stage on any machine against the same
remote lake. ``query`` runs ``labse sql`` on the remote lake: the pinned DuckDB (2.0.0) has no
``httpfs`` extension installed, and extensions are never downloaded at run time, so the files are
read through fsspec + pyarrow and handed to DuckDB as Arrow datasets, under the same read-only
checks and sandbox as the local catalog.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads

from storage.datasets import current_manifest
from storage.layout import Layout
from storage.manifest import MANIFEST_NAME, Manifest
from storage.schemas import DATASETS, DatasetSpec

LAKE_URL_ENV = "LABSE_LAKE_URL"
CURRENT = "_current.json"
VERSIONS = "_versions"


class RemoteLakeError(RuntimeError):
    """A remote-lake setting or object is wrong; the message names it (never a credential)."""


def lake_url() -> str | None:
    """``$LABSE_LAKE_URL``, or None when the lake is only local."""
    return os.environ.get(LAKE_URL_ENV) or None


@dataclass(frozen=True)
class RemoteLake:
    """A lake at an fsspec URL. ``repr`` shows the URL only: credentials stay in the environment."""

    url: str

    @classmethod
    def from_env(cls) -> RemoteLake:
        url = lake_url()
        if not url:
            raise RemoteLakeError(f"{LAKE_URL_ENV} is not set (e.g. s3://bucket/labse/lake)")
        return cls(url)

    @property
    def fs(self):
        import fsspec

        try:
            fs, _ = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as e:
            raise RemoteLakeError(f"{LAKE_URL_ENV}={self.url}: {e}") from None
        return fs

    @property
    def root(self) -> str:
        import fsspec

        return fsspec.core.url_to_fs(self.url)[1].rstrip("/")

    def dataset_root(self, spec: DatasetSpec) -> str:
        return f"{self.root}/{spec.relpath}"

    # -- publishing -----------------------------------------------------------------------------
    def current(self, spec: DatasetSpec) -> tuple[str, Manifest] | None:
        """(version, manifest) of the dataset's published version, or None."""
        path = f"{self.dataset_root(spec)}/{CURRENT}"
        fs = self.fs
        if not fs.exists(path):
            return None
        doc = json.loads(fs.cat_file(path))
        return doc["version"], Manifest.model_validate(doc["manifest"])

    def push(self, layout: Layout, spec: DatasetSpec) -> Manifest:
        """Publish the local lake's current version of ``spec`` as the remote's current version."""
        manifest = current_manifest(layout, spec)
        if manifest is None:
            raise RemoteLakeError(f"dataset {spec.name!r} is not published in {layout.lake}: nothing to push")
        fs = self.fs
        version = f"{manifest.created_at.replace(':', '').replace('-', '')}-{uuid.uuid4().hex[:8]}"
        base = f"{self.dataset_root(spec)}/{VERSIONS}/{version}"
        local = layout.dataset_dir(spec.relpath)
        for f in manifest.files:  # data first ...
            fs.put_file(str(local / f.path), f"{base}/{f.path}")
        fs.pipe_file(f"{base}/{MANIFEST_NAME}", _manifest_bytes(manifest))
        old = self.current(spec)
        # ... then the one atomic write that makes the version current.
        doc = {"version": version, "manifest": manifest.model_dump(mode="json")}
        fs.pipe_file(f"{self.dataset_root(spec)}/{CURRENT}", json.dumps(doc, indent=2, sort_keys=True).encode())
        if old is not None and old[0] != version:
            fs.rm(f"{self.dataset_root(spec)}/{VERSIONS}/{old[0]}", recursive=True)
        return manifest

    def pull(self, layout: Layout, spec: DatasetSpec) -> Manifest:
        """Make the remote's current version of ``spec`` the local lake's (published atomically there)."""
        from storage.datasets import DatasetWriter

        cur = self.current(spec)
        if cur is None:
            raise RemoteLakeError(f"dataset {spec.name!r} is not in the remote lake {self.url}")
        version, manifest = cur
        fs = self.fs
        with DatasetWriter(layout, spec, run_id=f"pull-{version}") as writer:
            base = f"{self.dataset_root(spec)}/{VERSIONS}/{version}"
            for f in manifest.files:
                dest = writer.staging / f.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(f"{base}/{f.path}", str(dest))
            # The remote manifest (producer, stats) is kept; stage checks the files against it.
            writer.stage(producer=manifest.producer, stats=manifest.stats, expected_rows=manifest.rows,
                         replace_empty=True)
        return writer.manifest

    # -- reading --------------------------------------------------------------------------------
    def dataset(self, spec: DatasetSpec) -> pads.Dataset | None:
        """The current version as a pyarrow dataset read through fsspec (partition columns included)."""
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        cur = self.current(spec)
        if cur is None:
            return None
        version, manifest = cur
        base = f"{self.dataset_root(spec)}/{VERSIONS}/{version}"
        files = [f"{base}/{f.path}" for f in manifest.files]
        if not files:
            return pads.dataset(pa.table({f.name: pa.array([], f.type) for f in spec.schema}))
        return pads.dataset(files, schema=spec.schema, filesystem=PyFileSystem(FSSpecHandler(self.fs)),
                            format="parquet", partitioning=pads.partitioning(
                                pa.schema([spec.schema.field(c) for c in spec.partition_by]), flavor="hive")
                            if spec.partition_by else None, partition_base_dir=base)

    def query(self, sql: str) -> pa.Table:
        """``labse sql`` on the remote lake: the same read-only checks and DuckDB sandbox (no file, no
        URL, no extension; locked) as the local catalog, over Arrow datasets read through fsspec."""
        import duckdb

        from storage.catalog import QueryError, _check_read_only, _first_line

        con = duckdb.connect()
        with con:
            rows = []
            for spec in DATASETS.values():
                ds = self.dataset(spec)
                if ds is None:
                    continue
                con.register(f"_arrow_{spec.name}", ds)
                con.execute(f'CREATE VIEW "{spec.name}" AS SELECT * FROM "_arrow_{spec.name}"')
                rows.append((spec.name, self.current(spec)[1].rows))
            con.execute("CREATE TABLE datasets (name VARCHAR, rows BIGINT)")
            if rows:
                con.executemany("INSERT INTO datasets VALUES (?, ?)", rows)
            for stmt in ("SET enable_external_access=false", "SET autoinstall_known_extensions=false",
                         "SET autoload_known_extensions=false", "SET lock_configuration=true"):
                con.execute(stmt)
            _check_read_only(con, sql)
            try:
                rel = con.sql(sql)
                return rel.to_arrow_table() if rel is not None else pa.table({})
            except duckdb.Error as e:
                raise QueryError(f"SQL error: {_first_line(e)}") from None


def _manifest_bytes(manifest: Manifest) -> bytes:
    return (json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True, default=str) + "\n").encode()

