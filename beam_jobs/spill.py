"""A shuffle through files: rows grouped by a hash bucket on disk, only file names through the runner.

Beam's ``GroupByKey`` on the direct runner keeps every grouped element in the runner's memory until
the next stage has read it (the Dask runner keeps whole partitions); grouping the kept corpus that
way made ``prepare`` grow ~0.9 GiB per million pairs. ``SpillGroup`` does the same grouping with a
bounded footprint at any input size:

1. ``_SpillWriteFn`` (fused into the producing stage) splits each Arrow table by bucket (a prefix
   of a hex digest column: ``16**digits`` buckets, every row of one key in one bucket) and appends
   it to that bucket's file of the bundle, an Arrow IPC stream (LZ4) in ``folder``; at most
   ``flush_rows`` rows per bucket are held before they are written. At the end of the bundle it
   emits ``(bucket, file name)``, one per bucket it wrote;
2. ``GroupByKey`` groups those names (a few per bucket: the runner's memory holds names only);
3. the consumer reads one bucket's files at a time (``read_bucket``): what one worker holds is one
   bucket, ``1/16**digits`` of the data.

File names carry a random token per bundle attempt: a bundle that fails and runs again writes new
files, and only the names a committed bundle emitted are read. The caller owns ``folder`` and
removes it when the pipeline has finished or failed (``spill_folder``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindows

IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


class SpillSpaceError(OSError):
    """The disk filled while spilling: names the folder and the space the run needs."""


def bucket_ids(table: pa.Table, column: str, digits: int | None) -> np.ndarray:
    """The bucket of every row: the first ``digits`` hex digits of ``column`` after its last ``:``
    (``de:3fa9...`` -> ``0x3f`` with two digits); all rows in bucket 0 when ``digits`` is 0; the
    column's own integers when ``digits`` is None (a shard number)."""
    if digits is None:
        return table.column(column).to_numpy().astype(np.int64, copy=False)
    if digits == 0:
        return np.zeros(table.num_rows, dtype=np.int64)
    values = table.column(column).to_pylist()
    return np.fromiter((int(v[v.rfind(":") + 1:][:digits], 16) for v in values), dtype=np.int64, count=len(values))


def split_by_bucket(table: pa.Table, ids: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
    """``(bucket, rows of table in it)`` for each bucket present, rows in their input order."""
    if not len(ids):
        return
    if (ids == ids[0]).all():
        yield int(ids[0]), table
        return
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    for s, e in zip(starts, ends, strict=True):
        yield int(sorted_ids[s]), table.take(pa.array(order[s:e]))


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{round(n / 2**20)} MiB"


def _space_error(folder: str, needed: int) -> SpillSpaceError:
    used = folder_bytes(Path(folder))
    return SpillSpaceError(
        errno.ENOSPC,
        f"no space left on device while spilling to {folder} ({_size(used)} written): the spill needs about "
        f"{_size(max(needed, used))} free (LABSE_SPILL_DIR picks another folder)")


def _is_full(e: OSError) -> bool:
    return e.errno == errno.ENOSPC or "No space left" in str(e)


class _SpillWriteFn(beam.DoFn):
    """Arrow tables -> one IPC file per bucket of the bundle; emits ``(bucket, file name)``. A bucket
    is written when it holds ``flush_rows`` rows, every bucket when all hold ``max_buffered`` together.
    ``needed``: the bytes the whole spill is expected to take (for the message of a full disk)."""

    def __init__(self, folder: str, column: str, digits: int | None, needed: int = 0, flush_rows: int = 8192,
                 max_buffered: int = 131_072):
        self.folder, self.column, self.digits, self.needed = folder, column, digits, needed
        self.flush_rows, self.max_buffered = flush_rows, max_buffered

    def start_bundle(self):
        os.makedirs(self.folder, exist_ok=True)
        self.token = uuid.uuid4().hex[:12]
        self.buffers: dict[int, list[pa.Table]] = {}
        self.rows: dict[int, int] = {}
        self.buffered = 0
        self.writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self.files: dict[int, object] = {}

    def process(self, table: pa.Table):
        if not table.num_rows:
            return
        for bucket, part in split_by_bucket(table, bucket_ids(table, self.column, self.digits)):
            self.buffers.setdefault(bucket, []).append(part)
            self.rows[bucket] = self.rows.get(bucket, 0) + part.num_rows
            self.buffered += part.num_rows
            if self.rows[bucket] >= self.flush_rows:
                self._flush(bucket)
        if self.buffered >= self.max_buffered:
            for bucket in list(self.buffers):
                self._flush(bucket)

    def _name(self, bucket: int) -> str:
        return os.path.join(self.folder, f"b{bucket:05d}-{self.token}.arrow")

    def _flush(self, bucket: int) -> None:
        tables = self.buffers.pop(bucket, [])
        self.buffered -= self.rows.pop(bucket, 0)
        if not tables:
            return
        table = pa.concat_tables(tables).combine_chunks()
        try:
            writer = self.writers.get(bucket)
            if writer is None:
                f = self.files[bucket] = pa.OSFile(self._name(bucket), "wb")
                writer = self.writers[bucket] = pa.ipc.new_stream(f, table.schema, options=IPC_OPTIONS)
            writer.write_table(table)
        except OSError as e:
            if _is_full(e):
                raise _space_error(self.folder, self.needed) from None
            raise

    def finish_bundle(self):
        for bucket in list(self.buffers):
            self._flush(bucket)
        for bucket, writer in self.writers.items():
            try:
                writer.close()
                self.files[bucket].close()
            except OSError as e:
                if _is_full(e):
                    raise _space_error(self.folder, self.needed) from None
                raise
            yield GlobalWindows.windowed_value((bucket, self._name(bucket)))
        self.writers, self.files = {}, {}

    def teardown(self):
        for f in getattr(self, "files", {}).values():
            with contextlib.suppress(Exception):
                f.close()


def read_bucket(files: list[str], schema: pa.Schema) -> pa.Table:
    """The rows of one bucket: its files (in name order: the same table on every run) concatenated."""
    tables = []
    for name in sorted(files):
        with pa.OSFile(name, "rb") as f:
            tables.append(pa.ipc.open_stream(f).read_all())
    return pa.concat_tables(tables) if tables else schema.empty_table()


class SpillGroup(beam.PTransform):
    """Arrow tables (one, or a tuple of PCollections: each spills in its own stage, nothing is
    flattened in memory) -> ``(bucket, [file names])``, one element per bucket; read a bucket with
    ``read_bucket``. ``column`` holds a hex digest (after an optional ``lang:`` prefix), bucketed by
    its first ``digits`` digits, or (``digits=None``) the bucket number itself."""

    def __init__(self, folder: str | os.PathLike[str], column: str, digits: int | None, needed: int = 0):
        super().__init__()
        self.folder, self.column, self.digits, self.needed = str(folder), column, digits, needed

    def expand(self, tables):
        parts = list(tables) if isinstance(tables, tuple | list) else [tables]
        named = [pc | f"Spill{i}" >> beam.ParDo(_SpillWriteFn(self.folder, self.column, self.digits, self.needed))
                 for i, pc in enumerate(parts)]
        names = named[0] if len(named) == 1 else tuple(named) | "AllSpills" >> beam.Flatten()
        return names | "GroupFiles" >> beam.GroupByKey() | "Files" >> beam.MapTuple(lambda b, fs: (b, list(fs)))


class _SentenceTablesFn(beam.DoFn):
    """``(lang, text)`` sentences -> Arrow tables of up to ``rows`` of them, with ``bucket``:
    ``bucket_of(lang, text)`` (equal sentences, equal buckets)."""

    def __init__(self, bucket_of, rows: int = 8192):
        self.bucket_of, self.rows = bucket_of, rows

    def start_bundle(self):
        self.buffer: list[tuple[str, str]] = []

    def process(self, sentence):
        self.buffer.append(sentence)
        if len(self.buffer) >= self.rows:
            yield self._table()

    def finish_bundle(self):
        if self.buffer:
            yield GlobalWindows.windowed_value(self._table())

    def _table(self) -> pa.Table:
        langs, texts = zip(*self.buffer, strict=True)
        self.buffer = []
        return pa.table({"lang": pa.array(langs, pa.string()), "text": pa.array(texts, pa.string()),
                         "bucket": pa.array([self.bucket_of(a, b) for a, b in zip(langs, texts, strict=True)],
                                            pa.int64())})


SENTENCES = pa.schema([("lang", pa.string()), ("text", pa.string()), ("bucket", pa.int64())])


def distinct_sentences(element) -> list[tuple[str, str]]:
    """One bucket of ``SpillSentences`` -> its distinct ``(lang, text)`` sentences, sorted."""
    _, files = element
    t = read_bucket(files, SENTENCES)
    return sorted(set(zip(t.column("lang").to_pylist(), t.column("text").to_pylist(), strict=True)))


class SpillSentences(beam.PTransform):
    """``(lang, text)`` sentences (one PCollection or a tuple) -> ``(bucket, [file names])`` grouped on
    disk by ``bucket_of(lang, text)`` (a module-level function), for ``distinct_sentences`` or a
    writer of one shard per bucket: ``Distinct`` and ``GroupByKey`` without the runner holding them."""

    def __init__(self, folder: str | os.PathLike[str], bucket_of):
        super().__init__()
        self.folder, self.bucket_of = str(folder), bucket_of

    def expand(self, sentences):
        parts = list(sentences) if isinstance(sentences, tuple | list) else [sentences]
        tables = tuple(pc | f"Tables{i or ''}" >> beam.ParDo(_SentenceTablesFn(self.bucket_of))
                       for i, pc in enumerate(parts))
        return tables | "Spill" >> SpillGroup(self.folder, "bucket", None)


@contextlib.contextmanager
def spill_folder(parent: Path, name: str) -> Iterator[Path]:
    """A fresh folder ``spill-<name>`` for one run's spill files under ``$LABSE_SPILL_DIR`` or ``parent``
    (the lake's staging area), removed when the run ends, however it ends. It is a locked staging folder
    (``storage.publish.StagingDir``): the folder of a run killed outright (SIGKILL, no ``finally``) is
    removed by the next command's ``recover`` (in the lake) or by the next spill in the same folder."""
    from storage.publish import StagingDir, sweep_dead

    setting = os.environ.get("LABSE_SPILL_DIR")
    root = Path(setting or parent)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as e:
        where = f"LABSE_SPILL_DIR={setting}" if setting else str(root)
        raise OSError(e.errno, f"{where}: cannot write the spill files there ({e.strerror})") from None
    sweep_dead(root, "spill-*")  # runs that died: their lock is free
    held = StagingDir(root / f"spill-{name}")
    try:
        yield held.create()
    finally:
        held.remove()


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` now (the spill's size on disk)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total
