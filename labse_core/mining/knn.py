"""k nearest neighbours by cosine with faiss, exact or approximate, memory bounded by one index.

``knn(queries, base, k)`` returns, for every query row, the ``k`` base rows with the highest cosine
(``sims`` (n, k) float32, descending; ``ids`` (n, k) int64). Rows are L2-normalized on *copies*, one
chunk at a time (``faiss.normalize_L2`` works in place, and LASER's script normalizes the caller's
arrays that way), so neither the caller's arrays nor a read-only memory map are touched.

The index over ``base``:

- ``flat``: ``IndexFlatIP``, exact; cost n*m*d per direction.
- ``ivf``: ``IndexIVFFlat`` with ``nlist`` inverted lists (k-means on a sample of ``train_size`` rows),
  searching ``nprobe`` lists per query: about nprobe/nlist of the flat cost, memory n*d floats.
- ``ivfpq``: ``IndexIVFPQ`` (``pq_m`` sub-quantizers of 8 bits): d*4/pq_m times smaller than ``ivf``,
  lossy scores (the margin is then computed on approximate cosines).
- ``auto``: ``flat`` up to ``flat_max`` base rows, ``ivf`` above (stopes: flat up to ~10k rows,
  ``OPQ64,IVF1024,PQ64`` above; our flat limit is higher because its answers are exact and IVF's
  recall costs margin pairs).

``k`` is clamped to the base size (faiss pads a short list with id -1, which LASER's script then reads
as the last row). IVF can still return fewer than ``k`` hits for a query whose probed lists hold
fewer rows; those slots carry id -1 and ``valid`` is False there, and callers average only valid slots.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

IndexKind = Literal["auto", "flat", "ivf", "ivfpq"]


class MiningInputError(ValueError):
    """Inputs that cannot be mined (an empty side, mismatched dimensions); the message says which."""


@dataclass(frozen=True)
class IndexConfig:
    """How the kNN search is done."""

    kind: IndexKind = "auto"
    """flat (exact), ivf, ivfpq, or auto (flat up to ``flat_max`` base rows, ivf above)."""
    flat_max: int = 50_000
    """Largest base side ``auto`` searches exactly."""
    nlist: int | None = None
    """IVF lists; None: 4*sqrt(n) rounded to a power of two, at most n/39 (faiss wants 39 training
    points per centroid) and at least 1."""
    nprobe: int = 32
    """IVF lists probed per query: the recall/speed knob."""
    pq_m: int = 32
    """ivfpq: sub-quantizers (must divide the dimension)."""
    train_size: int = 131_072
    """Rows sampled (evenly spaced) to train the IVF centroids (at least 40 per list)."""
    query_chunk: int = 8192
    """Queries normalized and searched at once (bounds the temporary copies)."""
    add_chunk: int = 65_536
    """Base rows normalized and added at once."""
    threads: int | None = None
    """faiss OpenMP threads (None: faiss's default)."""


def _unit_copy(a: np.ndarray) -> np.ndarray:
    """float32 unit rows, always a new array (never the caller's memory)."""
    out = np.array(a, dtype=np.float32, copy=True, order="C")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.maximum(norms, 1e-12)  # an all-zero row stays zero instead of becoming NaN
    return out


def _chunks(a: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray]]:
    for s in range(0, len(a), size):
        yield s, a[s : s + size]


def choose_kind(n_base: int, cfg: IndexConfig) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    return "flat" if n_base <= cfg.flat_max else "ivf"


def default_nlist(n: int) -> int:
    guess = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return int(max(1, min(guess, n // 39)))


def build_index(base: np.ndarray, cfg: IndexConfig = IndexConfig()):
    """A faiss inner-product index over the unit-normalized rows of ``base`` (chunked copies)."""
    import faiss

    if cfg.threads:
        faiss.omp_set_num_threads(cfg.threads)
    n, d = base.shape
    kind = choose_kind(n, cfg)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind in ("ivf", "ivfpq"):
        nlist = min(cfg.nlist or default_nlist(n), n)  # k-means cannot make more centroids than rows
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if d % cfg.pq_m:
                raise MiningInputError(f"ivfpq: pq_m={cfg.pq_m} does not divide the dimension {d}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, cfg.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        # Evenly spaced rows: deterministic, and spread over the whole input (which may be sorted).
        # faiss wants >= 39 training points per centroid; fewer gives poorly placed lists (lower recall).
        take = np.unique(np.linspace(0, n - 1, num=min(n, max(cfg.train_size, 40 * nlist))).astype(np.int64))
        index.train(_unit_copy(base[take]))
        index.nprobe = min(cfg.nprobe, nlist)  # faiss's wrapper keeps `quantizer` alive with the index
    else:
        raise MiningInputError(f"unknown index kind {cfg.kind!r}; use flat, ivf, ivfpq or auto")
    for _, part in _chunks(base, cfg.add_chunk):
        index.add(_unit_copy(part))
    return index


@dataclass
class Neighbours:
    sims: np.ndarray
    """(n, k) float32 cosines, descending per row."""
    ids: np.ndarray
    """(n, k) int64 base rows; -1 where the index found fewer than k."""
    kind: str
    """The index used (flat, ivf, ivfpq)."""

    @property
    def valid(self) -> np.ndarray:
        return self.ids >= 0


def knn(queries: np.ndarray, base: np.ndarray, k: int, cfg: IndexConfig = IndexConfig()) -> Neighbours:
    """The ``min(k, len(base))`` nearest base rows of every query row (module docstring)."""
    if k < 1:
        raise MiningInputError(f"k must be >= 1, got {k}")
    if len(queries) == 0 or len(base) == 0:
        raise MiningInputError(f"cannot search with {len(queries)} queries over {len(base)} rows: a side is empty")
    if queries.ndim != 2 or base.ndim != 2 or queries.shape[1] != base.shape[1]:
        raise MiningInputError(f"embedding shapes do not match: {queries.shape} vs {base.shape}")
    k = min(k, len(base))
    index = build_index(base, cfg)
    sims = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for s, part in _chunks(queries, cfg.query_chunk):
        d, i = index.search(_unit_copy(part), k)
        sims[s : s + len(part)], ids[s : s + len(part)] = d, i
    sims[ids < 0] = np.nan  # never a usable similarity
    return Neighbours(sims, ids, choose_kind(len(base), cfg))
