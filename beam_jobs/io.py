"""Beam transforms between the lake's Parquet datasets and PCollections of row dicts (or Arrow tables),
and ``WriteValue``, the sink for a stage's small driver-side results (error lists, counts).

``WritePartitionedRows`` is a hive-partitioned Parquet sink built like Beam's own file sinks:

1. each bundle buffers rows per partition and writes them (schema-checked) to an *attempt* file
   named after its content (``storage.datasets.attempt_name``: a bundle that runs again rewrites the
   same file), emitting that file's name; a buffer is flushed at ``rows_per_file`` rows, and the
   largest one whenever all buffers together hold ``max_buffered_rows``, which bounds a worker's memory;
2. only the names emitted by *committed* bundles reach the single commit step, which records them
   (``_attempts/_commit.json``, atomically; running it again rewrites the list);
3. the caller stages the folder with ``storage.datasets.DatasetWriter.stage`` (then publishes it), which
   on the driver moves the recorded files into ``<staging>/<col>=<value>/part-NNNNN.parquet`` and deletes
   the rest (attempts of bundles that failed and ran again). Rows are therefore published exactly once,
   on runners that retry bundles or re-execute branches (the Dask runner) as on the direct runner.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.transforms.window import GlobalWindows

from storage.datasets import ATTEMPTS, apply_commit, attempt_name, partition_path, record_commit
from storage.faults import maybe_die
from storage.io import write_bytes_atomic, write_parquet
from storage.schemas import DatasetSpec


def partition_values(path: str) -> dict[str, str]:
    """``.../lang=de/part-00000.parquet`` -> ``{"lang": "de"}``."""
    out = {}
    for piece in Path(path).parts[:-1]:
        if "=" in piece:
            k, v = piece.split("=", 1)
            out[k] = v
    return out


class _BufferedWriteFn(beam.DoFn):
    def __init__(self, spec: DatasetSpec, staging: str, rows_per_file: int, max_buffered_rows: int,
                 fault_point: str | None = None):
        self.spec = spec
        self.staging = staging
        self.rows_per_file = rows_per_file
        self.max_buffered_rows = max_buffered_rows
        self.fault_point = fault_point  # storage.faults point hit after each attempt file is written

    def start_bundle(self):
        self.buffers: dict[tuple, list[dict]] = defaultdict(list)
        self.buffered = 0

    def process(self, row: dict):
        key = tuple(row[c] for c in self.spec.partition_by)
        buf = self.buffers[key]
        buf.append(row)
        self.buffered += 1
        if len(buf) >= self.rows_per_file:
            yield self._flush(key)
        elif self.buffered >= self.max_buffered_rows:
            # Bound the worker's memory over all partitions: write out the largest buffer.
            yield self._flush(max(self.buffers, key=lambda k: len(self.buffers[k])))

    def finish_bundle(self):
        for key in list(self.buffers):
            if self.buffers[key]:
                yield GlobalWindows.windowed_value(self._flush(key))

    def _flush(self, key: tuple) -> dict:
        rows = self.buffers.pop(key)
        self.buffered -= len(rows)
        table = pa.Table.from_pylist(rows, schema=self.spec.file_schema)  # extra keys ignored, types checked
        rel = partition_path(self.spec, dict(zip(self.spec.partition_by, key, strict=True)))
        attempt = os.path.join(self.staging, ATTEMPTS, attempt_name(table))
        n = write_parquet(self.spec, table, attempt)
        if self.fault_point:
            maybe_die(self.fault_point)
        return {"attempt": attempt, "partition": rel, "rows": n}


def commit_attempts(infos: list[dict], staging: str) -> int:
    """Record the committed attempts and move them into their partitions now (the two halves of
    ``record_commit`` + ``DatasetWriter.stage``, for callers outside a pipeline). Returns rows committed."""
    record_commit(infos, staging)
    return apply_commit(Path(staging))


class WritePartitionedRows(beam.PTransform):
    """Row dicts (full logical schema of ``spec``, partition columns included) -> Parquet files in
    ``staging``. Output: one element, the number of rows committed."""

    def __init__(
        self,
        spec: DatasetSpec,
        staging: str | os.PathLike[str],
        rows_per_file: int = 250_000,
        max_buffered_rows: int = 100_000,
        fault_point: str | None = None,
    ):
        super().__init__()
        self.spec = spec
        self.staging = str(staging)
        self.rows_per_file = rows_per_file
        self.max_buffered_rows = max_buffered_rows
        self.fault_point = fault_point

    def expand(self, rows):
        staging = self.staging
        return (
            rows
            | "WriteAttempts"
            >> beam.ParDo(_BufferedWriteFn(self.spec, staging, self.rows_per_file, self.max_buffered_rows,
                                           self.fault_point))
            | "CollectFileNames" >> beam.combiners.ToList()  # names and counts only
            | "Commit" >> beam.Map(record_commit, staging=staging)  # applied on the driver by DatasetWriter.stage()
        )


# ---------------------------------------------------------------------------------------------------
# The same, with Arrow tables as elements (one element per batch of rows, not one per row)


class ReadParquetTables(beam.DoFn):
    """File path -> Arrow tables of ``batch_size`` rows, with the partition columns from the path
    and any ``extra`` columns (e.g. ``existing=True``) added as constant columns."""

    def __init__(self, batch_size: int = 5000, extra: dict | None = None):
        self.batch_size = batch_size
        self.extra = extra or {}

    def process(self, path: str):
        fixed = partition_values(path) | self.extra
        for batch in pq.ParquetFile(path).iter_batches(batch_size=self.batch_size):
            table = pa.Table.from_batches([batch])
            for k, v in fixed.items():
                table = table.append_column(k, pa.repeat(pa.scalar(v), table.num_rows))
            yield table


class ReadParquetBatches(ReadParquetTables):
    """File path -> lists of row dicts (``batch_size`` rows each): ``ReadParquetTables``' tables as rows."""

    def process(self, path: str):
        for table in super().process(path):
            yield table.to_pylist()


class _BufferedTableWriteFn(_BufferedWriteFn):
    """``_BufferedWriteFn`` for Arrow tables with the columns of ``spec.schema`` (partition columns
    included; other columns are dropped): a table is split by partition value with Arrow, and a file
    gets exactly ``rows_per_file`` rows when a partition's buffer reaches that."""

    def start_bundle(self):
        self.buffers: dict[tuple, list[pa.Table]] = defaultdict(list)
        self.rows: dict[tuple, int] = defaultdict(int)
        self.buffered = 0
        self.columns = [f.name for f in self.spec.schema]

    def process(self, table: pa.Table):
        if not table.num_rows:
            return
        table = table.select(self.columns)
        for key, part in _split_by(table, self.spec.partition_by):
            self.buffers[key].append(part)
            self.rows[key] += part.num_rows
            self.buffered += part.num_rows
            while self.rows[key] >= self.rows_per_file:
                yield self._flush(key, self.rows_per_file)
        while self.buffered >= self.max_buffered_rows:
            # Bound the worker's memory over all partitions: write out the largest buffer.
            yield self._flush(max(self.rows, key=lambda k: self.rows[k]))

    def _flush(self, key: tuple, n: int | None = None) -> dict:
        table = pa.concat_tables(self.buffers.pop(key))
        total = self.rows.pop(key)
        if n is not None and n < total:  # keep the rest in the buffer
            self.buffers[key] = [table.slice(n)]
            self.rows[key] = total - n
            table = table.slice(0, n)
        self.buffered -= table.num_rows
        rel = partition_path(self.spec, dict(zip(self.spec.partition_by, key, strict=True)))
        table = table.drop_columns(list(self.spec.partition_by))
        attempt = os.path.join(self.staging, ATTEMPTS, attempt_name(table))
        rows = write_parquet(self.spec, table, attempt)  # checks names, types and nulls
        if self.fault_point:
            maybe_die(self.fault_point)
        return {"attempt": attempt, "partition": rel, "rows": rows}


def _split_by(table: pa.Table, columns: tuple[str, ...]):
    """(partition values, rows of ``table`` with those values) for each distinct value."""
    if not columns:
        yield (), table
        return
    keys = table.select(list(columns)).group_by(list(columns), use_threads=False).aggregate([])
    if keys.num_rows == 1:
        yield tuple(keys.column(c)[0].as_py() for c in columns), table
        return
    for values in keys.to_pylist():
        mask = None
        for c in columns:
            m = pc.equal(table.column(c), values[c])
            mask = m if mask is None else pc.and_(mask, m)
        yield tuple(values[c] for c in columns), table.filter(mask)


class WritePartitionedTables(WritePartitionedRows):
    """``WritePartitionedRows`` for a PCollection of Arrow tables (columns of ``spec.schema``), or a
    tuple of them: each is written in the stage that makes it (a flatten of tables from several stages
    would be held in the runner's memory), and only the file names meet, in one commit."""

    def expand(self, tables):
        staging = self.staging
        parts = list(tables) if isinstance(tables, tuple | list) else [tables]
        names = [pc | f"WriteAttempts{i or ''}" >> beam.ParDo(_BufferedTableWriteFn(
                     self.spec, staging, self.rows_per_file, self.max_buffered_rows, self.fault_point))
                 for i, pc in enumerate(parts)]
        return (
            (names[0] if len(names) == 1 else tuple(names) | "AllFileNames" >> beam.Flatten())
            | "CollectFileNames" >> beam.combiners.ToList()
            | "Commit" >> beam.Map(record_commit, staging=staging)  # applied on the driver by DatasetWriter.stage()
        )


# ---------------------------------------------------------------------------------------------------
# One small value for the driver


def sorted_lines(values: list[str]) -> str:
    """``WriteValue`` rendering of a list of messages: sorted, one per line."""
    return "\n".join(sorted(values))


class _WriteValueFn(beam.DoFn):
    def __init__(self, path: str, render):
        self.path, self.render = path, render

    def process(self, value):
        # atomic: a task that runs twice (the Dask runner) rewrites the file whole
        write_bytes_atomic(self.path, self.render(value).encode())


class WriteValue(beam.PTransform):
    """A PCollection of exactly one element (a ``ToList``/``ToDict`` result) -> ``render(element)``
    written to ``path``, for the driver to read after the pipeline: how a stage gets its unreadable
    inputs or per-language counts back. ``render`` must be a module-level function (pickled)."""

    def __init__(self, path: str | os.PathLike[str], render=str):
        super().__init__()
        self.path, self.render = str(path), render

    def expand(self, value):
        return value | "Write" >> beam.ParDo(_WriteValueFn(self.path, self.render))
