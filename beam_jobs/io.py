"""Beam transforms between the lake's Parquet datasets and PCollections of row dicts.

``WritePartitionedRows`` is a hive-partitioned Parquet sink built like Beam's own file sinks:

1. each bundle buffers rows per partition and writes them (schema-checked) to a uniquely named
   *attempt* file, emitting that file's name; a buffer is flushed at ``rows_per_file`` rows, and the
   largest one whenever all buffers together hold ``max_buffered_rows``, which bounds a worker's memory;
2. only the names emitted by *committed* bundles reach the single commit step, which moves those
   files into ``<staging>/<col>=<value>/part-NNNNN.parquet`` and deletes the rest (attempts of
   bundles that failed and were retried). Rows are therefore written exactly once.

The caller then publishes the staging folder with ``storage.datasets.DatasetWriter.publish``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import defaultdict
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.transforms.window import GlobalWindows

from storage.datasets import part_file_name, partition_path
from storage.io import write_parquet
from storage.schemas import DatasetSpec

ATTEMPTS = "_attempts"


def partition_values(path: str) -> dict[str, str]:
    """``.../lang=de/part-00000.parquet`` -> ``{"lang": "de"}``."""
    out = {}
    for piece in Path(path).parts[:-1]:
        if "=" in piece:
            k, v = piece.split("=", 1)
            out[k] = v
    return out


class ReadParquetBatches(beam.DoFn):
    """File path -> lists of row dicts (``batch_size`` rows each), with the partition columns from the
    path and any ``extra`` fields (e.g. ``existing=True``) added to every row."""

    def __init__(self, batch_size: int = 5000, extra: dict | None = None):
        self.batch_size = batch_size
        self.extra = extra or {}

    def process(self, path: str):
        fixed = partition_values(path) | self.extra
        for batch in pq.ParquetFile(path).iter_batches(batch_size=self.batch_size):
            rows = batch.to_pylist()
            for r in rows:
                r.update(fixed)
            yield rows


class _BufferedWriteFn(beam.DoFn):
    def __init__(self, spec: DatasetSpec, staging: str, rows_per_file: int, max_buffered_rows: int):
        self.spec = spec
        self.staging = staging
        self.rows_per_file = rows_per_file
        self.max_buffered_rows = max_buffered_rows

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
        attempt = os.path.join(self.staging, ATTEMPTS, f"{uuid.uuid4().hex}.parquet")
        n = write_parquet(self.spec, table, attempt)
        return {"attempt": attempt, "partition": rel, "rows": n}


def commit_attempts(infos: list[dict], staging: str) -> int:
    """Move the committed attempt files into their partitions; drop the others. Returns rows committed."""
    counters: dict[str, int] = defaultdict(int)
    rows = 0
    for info in sorted(infos, key=lambda i: (i["partition"], i["attempt"])):
        index = counters[info["partition"]]
        counters[info["partition"]] += 1
        dest = Path(staging) / info["partition"] / part_file_name(index)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(info["attempt"], dest)
        rows += info["rows"]
    shutil.rmtree(Path(staging) / ATTEMPTS, ignore_errors=True)
    return rows


class WritePartitionedRows(beam.PTransform):
    """Row dicts (full logical schema of ``spec``, partition columns included) -> Parquet files in
    ``staging``. Output: one element, the number of rows committed."""

    def __init__(
        self,
        spec: DatasetSpec,
        staging: str | os.PathLike[str],
        rows_per_file: int = 250_000,
        max_buffered_rows: int = 100_000,
    ):
        super().__init__()
        self.spec = spec
        self.staging = str(staging)
        self.rows_per_file = rows_per_file
        self.max_buffered_rows = max_buffered_rows

    def expand(self, rows):
        staging = self.staging
        return (
            rows
            | "WriteAttempts"
            >> beam.ParDo(_BufferedWriteFn(self.spec, staging, self.rows_per_file, self.max_buffered_rows))
            | "CollectFileNames" >> beam.combiners.ToList()  # names and counts only
            | "Commit" >> beam.Map(commit_attempts, staging=staging)
        )
