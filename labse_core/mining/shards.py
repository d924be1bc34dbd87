"""Embeddings of a large input, computed a chunk at a time and spilled to ``.npy`` shards.

``embed_to_shards`` reads sentences from any iterable, embeds ``chunk_size`` of them at a time and writes
each chunk to ``shard-NNNNN-<digest>.npy`` (float16 halves the disk and page cache; float32 keeps the encoder's
values exactly). Memory is one chunk's sentences and vectors, whatever the input size.

Resuming: a shard's name carries a digest of its chunk's sentences (``shard-NNNNN-<digest>.npy``) and is
written atomically, so a shard on disk is always complete and always the embedding of exactly those
sentences. A rerun into the same folder (same model and settings: ``labse_core.mining.resume`` keys the
folder on them) embeds only the chunks whose shard is missing.

``ShardedArray`` reads the shards back as one (N, D) float32 array without loading it: slices and sorted
row lists are read shard by shard through short-lived memory maps (so the pages are not pinned in the
process once the copy is made). The kNN code only slices it, which is all it needs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.faults import maybe_die
from storage.io import atomic_path, write_json_atomic

SHARD_META = "shards.json"


@dataclass
class ShardedArray:
    """Row-concatenation of ``.npy`` files, read lazily as float32."""

    files: list[Path]
    rows_per_file: list[int]
    dim: int

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> ShardedArray:
        meta = json.loads((Path(folder) / SHARD_META).read_text())
        return cls([Path(folder) / f for f in meta["files"]], meta["rows"], meta["dim"])

    @classmethod
    def of_npy(cls, path: str | os.PathLike[str]) -> ShardedArray:
        """One precomputed (N, D) ``.npy`` file, read in place."""
        m = np.load(path, mmap_mode="r")
        if m.ndim != 2:
            raise ValueError(f"{path}: expected a 2-d (sentences x dim) array, got shape {m.shape}")
        return cls([Path(path)], [int(m.shape[0])], int(m.shape[1]))

    @property
    def shape(self) -> tuple[int, int]:
        return (sum(self.rows_per_file), self.dim)

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.shape[0]

    def _offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.rows_per_file)]).astype(np.int64)

    def _read(self, f: int, rows: slice | np.ndarray) -> np.ndarray:
        m = np.load(self.files[f], mmap_mode="r")
        try:
            return np.asarray(m[rows], dtype=np.float32)  # a copy: the map is released below
        finally:
            del m

    def __getitem__(self, key) -> np.ndarray:
        n = len(self)
        off = self._offsets()
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise IndexError("ShardedArray slices need step 1")
            parts = []
            for f in range(len(self.files)):
                a, b = max(start, off[f]), min(stop, off[f + 1])
                if a < b:
                    parts.append(self._read(f, slice(int(a - off[f]), int(b - off[f]))))
            return np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32)
        idx = np.asarray(key, dtype=np.int64)
        if idx.ndim != 1:
            raise IndexError("ShardedArray takes a slice or a 1-d row list")
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        out = np.empty((len(idx), self.dim), np.float32)
        which = np.searchsorted(off, idx, side="right") - 1
        for f in np.unique(which).tolist():
            sel = which == f
            out[sel] = self._read(f, idx[sel] - off[f])
        return out

    def to_array(self) -> np.ndarray:
        return self[0 : len(self)]


def chunk_digest(sentences: list[str]) -> str:
    """Hex digest of a chunk's sentences, in order (a shard's name carries it)."""
    h = hashlib.blake2b(digest_size=10)
    for s in sentences:
        b = s.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def embed_to_shards(
    sentences: Iterable[str],
    embed: Callable[[list[str]], np.ndarray],
    out_dir: str | os.PathLike[str],
    chunk_size: int = 50_000,
    dtype: str = "float32",
    counts: dict[str, int] | None = None,
) -> ShardedArray:
    """Embed ``sentences`` ``chunk_size`` at a time into ``out_dir/shard-NNNNN-<digest>.npy`` (+
    ``shards.json``). A chunk whose shard is already there (an interrupted earlier run into this folder)
    is not embedded again; ``counts`` (if given) gets the chunks "embedded" and "reused"."""
    if dtype not in ("float16", "float32"):
        raise ValueError(f"shard dtype must be float16 or float32, got {dtype!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    rows: list[int] = []
    dim = 0
    buf: list[str] = []

    counts = {} if counts is None else counts
    for k in ("embedded", "reused"):
        counts.setdefault(k, 0)

    def flush() -> None:
        nonlocal dim
        name = f"shard-{len(files):05d}-{chunk_digest(buf)}.npy"
        done = _complete_shard(out / name, len(buf), dtype)
        if done is not None:
            dim = done
            counts["reused"] += 1
        else:
            emb = np.asarray(embed(buf), dtype=np.float32)
            if emb.shape[0] != len(buf):
                raise ValueError(f"the encoder returned {emb.shape[0]} rows for {len(buf)} sentences")
            dim = emb.shape[1]
            with atomic_path(out / name) as tmp, open(tmp, "wb") as fh:
                np.save(fh, emb.astype(dtype))
            counts["embedded"] += 1
            maybe_die("mine.chunk_embedded")
        files.append(name)
        rows.append(len(buf))
        buf.clear()

    for s in sentences:
        buf.append(s)
        if len(buf) >= chunk_size:
            flush()
    if buf:
        flush()
    write_json_atomic(out / SHARD_META, {"files": files, "rows": rows, "dim": dim, "dtype": dtype})
    return ShardedArray([out / f for f in files], rows, dim)


def _complete_shard(path: Path, rows: int, dtype: str) -> int | None:
    """The vector size of the shard at ``path`` if it holds ``rows`` rows of ``dtype``, else None (absent;
    anything else there is a leftover of other settings and gets overwritten)."""
    if not path.is_file():
        return None
    try:
        m = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    ok = m.ndim == 2 and m.shape[0] == rows and m.dtype == np.dtype(dtype)
    dim = int(m.shape[1]) if ok else None
    del m
    return dim
