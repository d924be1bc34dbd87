"""Streaming Parquet shards: split across ranks and DataLoader workers, shuffled per epoch, resumable.

The pretraining data is a folder of `part-NNNNN.parquet` files (storage.schemas SHARD_MLM /
SHARD_TLM). Nothing here loads a whole dataset: the stream reads one Parquet *row group* at a time.

Units. The files' row groups, in sorted-file order, are the units of work. A row group is
Parquet's unit of I/O, so a unit is read with one `read_row_group` call. When there are fewer row
groups than consumers (small demo data), each row group is cut into row ranges so that every
consumer gets at least one unit (a consumer that owns two ranges of one row group reads it twice).

Split. A consumer is one DataLoader worker of one data shard (data shard = one data-parallel rank,
or one gradient-accumulation slot of it; see labse_core.pretrain.train). With S = num_shards x
num_workers consumers, consumer c = shard_index * num_workers + worker takes the units
`order[c::S]` of the epoch's unit order. Every unit goes to exactly one consumer: no overlap, no
loss. Consumers may get a different number of units (and rows); a training stream loops over
epochs forever (`epochs=None`), so no consumer ever runs dry before the others.

Shuffle. Per epoch e the unit order is a permutation drawn from (seed, e). A consumer then reads its
units in windows: whole units until the window holds at least `buffer_rows` rows (the bounded
shuffle buffer). The rows of a window are permuted by an RNG seeded from (seed, e, consumer, first
unit of the window), then cut into batches (below). Every random choice is a function of those
numbers and of nothing that happened before, which is what makes the position cheap to restore.

Position. A consumer's position is (epoch, unit, offset): `unit` is the index, in the consumer's
own unit list for that epoch, of the first unit of the current window, and `offset` the number of
batches of that window already handed out. Restoring it re-reads one window and skips `offset`
batches: the stream continues with exactly the batch that would have come next.

Length bucketing. Within a window, examples are sorted by length and cut into batches (by a sentence
count and/or a padded-token budget); the batch order is then shuffled. Batches of similar lengths
waste little padding; the larger the window, the less padding (`padding_ratio` measures it).

Use:

    stream = ShardStream(files, columns=("input_ids",), shard_index=rank, num_shards=world,
                         cfg=StreamConfig(batch_size=32, max_len=128), collate=my_collate)
    loader = ShardLoader(stream, num_workers=2)       # DataLoader + exact position tracking
    it = iter(loader); batch = next(it)
    state = loader.state_dict()                       # -> checkpoint; loader.load_state_dict(state)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from storage.io import write_parquet
from storage.schemas import DatasetSpec

Row = dict[str, Any]
Collate = Callable[[list[Row], int], Any]
"""`collate(rows, seed) -> batch`: `seed` is a per-batch seed fixed by the batch's position in the
stream (use it for masking), so a restored stream reproduces the same batch bit for bit."""


# ---------------------------------------------------------------------------------------------------
# Files and units


def shard_files(path: str | Path | Sequence[str | Path]) -> list[Path]:
    """The Parquet files of a shard folder (`*.parquet`, sorted; hidden temp files skipped), or the
    given list, sorted. Sorting makes the unit numbering the same on every rank."""
    if isinstance(path, str | Path):
        root = Path(path)
        files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))
    else:
        files = sorted(Path(p) for p in path)
    return files


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of row group `row_group` of file number `file`."""

    file: int
    row_group: int
    start: int
    stop: int

    @property
    def num_rows(self) -> int:
        return self.stop - self.start


def plan_units(files: Sequence[Path], min_units: int = 1, unit_rows: int | None = None) -> list[Unit]:
    """Cut the files' row groups into units: at most `unit_rows` rows each (None: whole row groups),
    and at least `min_units` units in all when there are that many rows (pieces as even as possible)."""
    sizes = []
    for f, path in enumerate(files):
        meta = pq.ParquetFile(path).metadata
        sizes += [(f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    sizes = [s for s in sizes if s[2] > 0]
    per_group = math.ceil(min_units / len(sizes)) if sizes else 1
    units = []
    for f, g, n in sizes:
        pieces = max(per_group, math.ceil(n / unit_rows) if unit_rows else 1)
        pieces = min(pieces, n)
        bounds = np.linspace(0, n, pieces + 1).round().astype(int)
        units += [Unit(f, g, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return units


# ---------------------------------------------------------------------------------------------------
# The stream


@dataclass(frozen=True)
class StreamConfig:
    """How a shard stream shuffles and batches."""

    seed: int = 0
    """Seed of the epoch unit orders, the window permutations and the per-batch collate seeds."""
    shuffle: bool = True
    """Shuffle unit order per epoch and rows within each window; False keeps file order."""
    buffer_rows: int = 10_000
    """Rows held at once: whole units are read until a window has at least this many. Shuffling and
    length bucketing happen within a window; memory is bounded by it (plus one unit)."""
    batch_size: int = 32
    """Most sentences in a batch."""
    max_tokens: int | None = None
    """Most padded tokens in a batch (B x longest); None: batches are `batch_size` sentences."""
    bucket: bool = True
    """Sort each window by length before cutting batches (then shuffle batch order)."""
    length_column: str = "input_ids"
    """Column whose list length is an example's length."""
    extra_tokens: int = 0
    """Tokens the collator adds to each example (2 for [CLS] ... [SEP]); counted for `max_tokens`."""
    max_len: int | None = None
    """Length after the collator's truncation; caps the length used for bucketing and budgets."""
    epochs: int | None = None
    """Epochs to stream; None: forever (training)."""
    unit_rows: int | None = None
    """Cut row groups into units of at most this many rows (None: whole row groups)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.buffer_rows < 1:
            raise ValueError("batch_size and buffer_rows must be >= 1")


@dataclass(frozen=True)
class Position:
    """Where a consumer is: epoch, first unit of the current window (index into the consumer's unit
    list of that epoch), batches of that window already handed out."""

    epoch: int = 0
    unit: int = 0
    offset: int = 0

    def as_list(self) -> list[int]:
        return [self.epoch, self.unit, self.offset]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _rows(table: pa.Table) -> list[Row]:
    """Arrow rows as dicts; list columns become numpy views (no per-element Python objects)."""
    cols: dict[str, list] = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_list(col.type):
            offsets = col.offsets.to_numpy()
            values = col.values.to_numpy(zero_copy_only=False)
            cols[name] = [values[offsets[i] : offsets[i + 1]] for i in range(len(col))]
        else:
            cols[name] = col.to_pylist()
    return [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]


def _identity(x):
    return x


class ShardStream(IterableDataset):
    """Batches from Parquet shard files for one data shard; see the module docstring.

    Yields `{"batch": collate(rows, seed) or rows, "worker": logical worker, "position": [e, u, o]}`
    where position is the consumer's position *after* this batch. Iterated in-process (no
    DataLoader workers) the stream tracks its own position (`state_dict`); under a DataLoader use
    `ShardLoader`, which tracks every worker's position from the yielded items.
    """

    def __init__(
        self,
        files: str | Path | Sequence[str | Path],
        *,
        columns: Sequence[str] | None = None,
        shard_index: int = 0,
        num_shards: int = 1,
        cfg: StreamConfig | None = None,
        collate: Collate | None = None,
        row_filter: Callable[[Row], bool] | None = None,
    ):
        super().__init__()
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
        self.files = shard_files(files)
        if not self.files:
            raise FileNotFoundError(f"no Parquet files in {files}")
        self.columns = list(columns) if columns is not None else None
        self.shard_index, self.num_shards = shard_index, num_shards
        self.cfg = cfg or StreamConfig()
        self.collate = collate
        # Rows it returns False for are skipped as they are read; a pure function of the row (and
        # picklable, for DataLoader workers), so positions and resumption stay exact.
        self.row_filter = row_filter
        self._units_cache: dict[int, list[Unit]] = {}
        # Restore state: start position per logical worker and which logical worker the first
        # physical worker plays (so the round-robin order of a DataLoader resumes where it was).
        self._num_workers: int | None = None
        self._positions: dict[int, Position] = {}
        self._first_logical = 0

    # -- units -----------------------------------------------------------------------------------
    def units(self, num_workers: int) -> list[Unit]:
        if num_workers not in self._units_cache:
            consumers = self.num_shards * num_workers
            self._units_cache[num_workers] = plan_units(self.files, consumers, self.cfg.unit_rows)
        return self._units_cache[num_workers]

    def consumer_units(self, epoch: int, worker: int, num_workers: int) -> list[Unit]:
        """The units consumer (this shard, worker) reads in `epoch`, in reading order."""
        units = self.units(num_workers)
        n = len(units)
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(n) if self.cfg.shuffle else range(n)
        consumers = self.num_shards * num_workers
        c = self.shard_index * num_workers + worker
        return [units[int(i)] for i in list(order)[c::consumers]]

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Positions of the logical workers (in-process iteration updates them)."""
        return {
            "num_workers": self._num_workers,
            "positions": {str(w): p.as_list() for w, p in sorted(self._positions.items())},
            "next_worker": self._first_logical,
        }

    def load_state_dict(self, state: dict) -> None:
        self._num_workers = state.get("num_workers")
        self._positions = {int(w): Position(*p) for w, p in state.get("positions", {}).items()}
        self._first_logical = int(state.get("next_worker", 0))

    # -- iteration -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        num_workers, physical = (info.num_workers, info.id) if info is not None else (1, 0)
        if self._num_workers is not None and self._num_workers != num_workers:
            raise ValueError(
                f"stream state was saved with {self._num_workers} DataLoader workers, now {num_workers}: "
                "the split into consumers depends on it"
            )
        self._num_workers = num_workers
        worker = (physical + self._first_logical) % num_workers
        pos = self._positions.get(worker, Position())
        files: dict[int, pq.ParquetFile] = {}
        while self.cfg.epochs is None or pos.epoch < self.cfg.epochs:
            units = self.consumer_units(pos.epoch, worker, num_workers)
            if not units and self.cfg.epochs is None:
                raise ValueError(
                    f"consumer (shard {self.shard_index}, worker {worker}) has no data: "
                    f"{len(self.units(num_workers))} units for {self.num_shards * num_workers} consumers"
                )
            u = pos.unit
            while u < len(units):
                end = self._window_end(units, u)
                batches = self._window_batches(units[u:end], files, pos.epoch, worker, num_workers, u)
                for k in range(pos.offset if u == pos.unit else 0, len(batches)):
                    rows, seed = batches[k]
                    after = Position(pos.epoch, u, k + 1)
                    if info is None:
                        self._positions[worker] = after
                    payload = self.collate(rows, seed) if self.collate is not None else rows
                    yield {"batch": payload, "worker": worker, "position": after.as_list()}
                u = end
            pos = Position(pos.epoch + 1, 0, 0)
            if info is None:
                self._positions[worker] = pos

    def _window_end(self, units: list[Unit], start: int) -> int:
        rows, end = 0, start
        while end < len(units) and (rows < self.cfg.buffer_rows or end == start):
            rows += units[end].num_rows
            end += 1
        return end

    def _read(self, unit: Unit, files: dict[int, pq.ParquetFile]) -> list[Row]:
        if unit.file not in files:
            files[unit.file] = pq.ParquetFile(self.files[unit.file])
        table = files[unit.file].read_row_group(unit.row_group, columns=self.columns)
        rows = _rows(table.slice(unit.start, unit.num_rows))
        return rows if self.row_filter is None else [r for r in rows if self.row_filter(r)]

    def _length(self, row: Row) -> int:
        n = len(row[self.cfg.length_column]) + self.cfg.extra_tokens
        return min(n, self.cfg.max_len) if self.cfg.max_len else n

    def _window_batches(
        self, window, files, epoch, worker, num_workers, first_unit
    ) -> list[tuple[list[Row], int]]:
        """The batches of one window, in hand-out order, each with its collate seed."""
        rows = [r for unit in window for r in self._read(unit, files)]
        consumer = self.shard_index * num_workers + worker
        rng = np.random.default_rng([self.cfg.seed, epoch, consumer, first_unit])
        if self.cfg.shuffle:
            rows = [rows[i] for i in rng.permutation(len(rows))]
        lengths = [self._length(r) for r in rows]
        order = sorted(range(len(rows)), key=lengths.__getitem__) if self.cfg.bucket else range(len(rows))
        batches, current, longest = [], [], 0
        for i in order:
            n = lengths[i]
            over_tokens = (
                self.cfg.max_tokens is not None and (len(current) + 1) * max(longest, n) > self.cfg.max_tokens
            )
            if current and (len(current) >= self.cfg.batch_size or over_tokens):
                batches.append(current)
                current, longest = [], 0
            current.append(rows[i])
            longest = max(longest, n)
        if current:
            batches.append(current)
        if self.cfg.shuffle and self.cfg.bucket:  # else length order would be a curriculum
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return [(b, _seed(self.cfg.seed, epoch, consumer, first_unit, k)) for k, b in enumerate(batches)]


class ShardLoader:
    """A DataLoader over a `ShardStream` that knows the exact position of every worker.

    The DataLoader hands out the workers' batches round-robin; each item carries its worker's
    position after that batch, recorded here when the batch is *consumed* (not when prefetched).
    `state_dict()` is therefore the position of the training loop, and `load_state_dict()` +
    `iter()` continue with the batch that would have come next, the round-robin turn included.
    """

    def __init__(
        self, stream: ShardStream, num_workers: int = 0, pin_memory: bool = False, prefetch_factor: int = 2
    ):
        self.stream = stream
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self._positions: dict[int, list[int]] = {}
        self._next = 0

    def __iter__(self) -> Iterator[Any]:
        n = max(self.num_workers, 1)
        self.stream.load_state_dict(
            {
                "num_workers": n,
                "positions": {str(w): p for w, p in self._positions.items()},
                "next_worker": self._next,
            }
        )
        if self.num_workers == 0:
            items: Iterator[dict] = iter(self.stream)
        else:
            items = iter(
                DataLoader(
                    self.stream,
                    batch_size=None,
                    num_workers=self.num_workers,
                    collate_fn=_identity,
                    pin_memory=self.pin_memory,
                    prefetch_factor=self.prefetch_factor,
                    # Workers fork from a clean server process, not from this one: a training process
                    # often runs threads (MLflow, Prefect, gRPC) that a plain fork copies mid-flight.
                    multiprocessing_context="forkserver" if self.num_workers else None,
                )
            )
        for item in items:
            self._positions[item["worker"]] = item["position"]
            self._next = (item["worker"] + 1) % n
            yield item["batch"]

    def state_dict(self) -> dict:
        return {
            "num_workers": max(self.num_workers, 1),
            "positions": {str(w): list(p) for w, p in sorted(self._positions.items())},
            "next_worker": self._next,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["num_workers"] != max(self.num_workers, 1):
            raise ValueError(
                f"loader state has {state['num_workers']} workers, this loader {max(self.num_workers, 1)}: "
                "the data split depends on it"
            )
        self._positions = {int(w): list(p) for w, p in state["positions"].items()}
        self._next = int(state["next_worker"])


# ---------------------------------------------------------------------------------------------------
# Dynamic padding


def pad_sequences(seqs: Sequence[Sequence[int] | np.ndarray], pad_value: int, dtype=np.int64) -> torch.Tensor:
    """Right-pad 1-D sequences to the longest of the batch: (B,) ragged -> (B, T_max)."""
    out = np.full((len(seqs), max((len(s) for s in seqs), default=0)), pad_value, dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.from_numpy(out)


def padding_ratio(attention_mask: torch.Tensor) -> float:
    """Fraction of a padded batch that is padding: 1 - real tokens / (B x T)."""
    return 1.0 - float(attention_mask.sum()) / max(attention_mask.numel(), 1)


# ---------------------------------------------------------------------------------------------------
# Writing shards


def write_shards(spec: DatasetSpec, table: pa.Table, out_dir: str | Path, rows_per_file: int) -> list[Path]:
    """Write `table` as `out_dir/part-NNNNN.parquet` files of at most `rows_per_file` rows, each
    schema-checked and atomic (storage.io.write_parquet). Returns the files written."""
    out = Path(out_dir)
    paths = []
    for i, start in enumerate(range(0, table.num_rows, rows_per_file)):
        path = out / f"part-{i:05d}.parquet"
        write_parquet(spec, table.slice(start, rows_per_file), path)
        paths.append(path)
    return paths
