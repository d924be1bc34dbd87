"""Append a run's rows to a published dataset without dropping what earlier runs wrote.

``DatasetWriter.publish`` replaces a dataset as a whole, which is right for a stage that rebuilds
its output (the clean corpus) and wrong for results that accumulate (``eval_results``, ``mined``):
every evaluation run adds rows next to the earlier runs' rows. ``append_tables`` builds the next
version in the staging area from hard links to the current version's files (they are immutable:
written once, atomically, never modified) plus the new run's files, and swaps it into place like any
other publish, so readers see the old version or the new one, never a mix, and the manifest counts
old + new rows. A lock file serialises appenders: two runs appending at once both land.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from storage.datasets import DatasetWriter, current_manifest, is_run_file
from storage.io import write_parquet
from storage.layout import Layout
from storage.manifest import Manifest
from storage.schemas import DatasetSpec


@contextlib.contextmanager
def dataset_lock(layout: Layout, spec: DatasetSpec) -> Iterator[None]:
    """Exclusive lock on one dataset for the length of an append (POSIX advisory lock)."""
    layout.staging.mkdir(parents=True, exist_ok=True)
    with open(layout.staging / f".{spec.name}.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links: a copy costs space, not correctness
        shutil.copy2(src, dst)


def append_tables(
    layout: Layout,
    spec: DatasetSpec,
    parts: Sequence[tuple[Mapping[str, str], pa.Table]],
    run_id: str,
    *,
    producer: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
) -> Manifest:
    """Publish the dataset's current files plus one new file per ``(partition values, table)``.

    New files are named ``part-<run_id>-NNNNN.parquet`` inside their partition folder; a ``run_id`` that
    already wrote a file there is refused (appending the same run twice would double its rows).
    Tables are checked against the spec's file schema (partition columns excluded) by ``write_parquet``.
    """
    if not run_id or "/" in run_id:
        raise ValueError(f"run_id must be a non-empty name without '/', got {run_id!r}")
    with dataset_lock(layout, spec):
        old = current_manifest(layout, spec)
        with DatasetWriter(layout, spec, run_id=f"append-{run_id}") as writer:
            old_rows = 0
            if old is not None:
                for f in old.files:
                    _link_or_copy(writer.final / f.path, writer.staging / f.path)
                old_rows = old.rows
            new_rows = 0
            for i, (values, table) in enumerate(parts):
                path = writer.file_path(dict(values), i, tag=run_id)
                if path.exists():
                    raise ValueError(f"dataset {spec.name!r}: run {run_id} already wrote {path.name}")
                new_rows += write_parquet(spec, table, path)
            writer.stage(producer=producer, stats=stats, expected_rows=old_rows + new_rows)
        return writer.manifest


def _holds_run(manifest: Manifest | None, run_id: str) -> bool:
    return manifest is not None and any(is_run_file(f.path, run_id) for f in manifest.files)


def run_files_published(layout: Layout, spec: DatasetSpec, run_id: str) -> bool:
    """Whether the published version of ``spec`` holds files that ``append_tables`` wrote for run ``run_id``."""
    return _holds_run(current_manifest(layout, spec), run_id)


def rewrite_run_files(
    layout: Layout,
    spec: DatasetSpec,
    run_id: str,
    transform: Callable[[pa.Table], pa.Table],
    *,
    producer: dict[str, Any] | None = None,
) -> int:
    """Publish the dataset's current files with run ``run_id``'s files (``part-<run_id>-*``, written by
    ``append_tables``) replaced by ``transform`` of their rows; the other runs' files are linked as they
    are. ``transform`` must keep the row count (a correction of columns, not of rows: the manifest counts
    are checked). Returns the rows rewritten; 0 (nothing published) when the run has no file there."""
    import pyarrow.parquet as pq

    with dataset_lock(layout, spec):
        old = current_manifest(layout, spec)
        if not _holds_run(old, run_id):
            return 0
        with DatasetWriter(layout, spec, run_id=f"rewrite-{run_id}") as writer:
            rewritten = 0
            for f in old.files:
                if is_run_file(f.path, run_id):
                    # ParquetFile, not read_table: the file alone, without columns from its hive folder names
                    table = pq.ParquetFile(writer.final / f.path).read()
                    out = transform(table)
                    if out.num_rows != table.num_rows:
                        raise ValueError(f"dataset {spec.name!r}: rewriting {f.path} changed its rows "
                                         f"({table.num_rows} -> {out.num_rows})")
                    rewritten += write_parquet(spec, out, writer.staging / f.path)
                else:
                    _link_or_copy(writer.final / f.path, writer.staging / f.path)
            writer.stage(producer=producer, expected_rows=old.rows)
        return rewritten
