"""The margin criterion and the retrieval modes, on kNN lists (Artetxe & Schwenk 2019; LASER's
``mine_bitexts.py``).

With x the source rows, y the target rows (unit vectors), NN_k(x) the k targets nearest to x and
NN_k(y) the k sources nearest to y::

    mean_x(x) = sum_{z in NN_k(x)} cos(x, z) / k                            # (n,)
    mean_y(y) = sum_{z in NN_k(y)} cos(y, z) / k                            # (m,)
    score(x, y) = margin(cos(x, y), (mean_x(x) + mean_y(y)) / 2)
    margin(a, b) = a / b   (ratio, the default)   |   a - b   (distance)   |   a   (absolute: plain cosine)

The candidates of a source x are its k nearest targets (and symmetrically); each side's best candidate
is the one with the highest score:

- ``forward``: every source with its best target;
- ``backward``: every target with its best source;
- ``intersection``: the pairs both directions agree on;
- ``max``: both lists together, best score first, a pair kept only if neither sentence was used
  by a better pair (one-to-one), as LASER's ``max`` mode.

A pair is kept when ``score >= threshold``. Scores are symmetric (the same formula from either side),
so a pair found by both directions has one score. k is whatever the kNN lists hold (clamped to the
other side's size there); slots without a neighbour (faiss id -1) are left out of the means and are
never candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from labse_core.mining.knn import Neighbours

MarginKind = Literal["ratio", "distance", "absolute"]
Mode = Literal["forward", "backward", "intersection", "max"]
MODES: tuple[str, ...] = ("forward", "backward", "intersection", "max")


def margin(a: np.ndarray, b: np.ndarray, kind: MarginKind = "ratio") -> np.ndarray:
    if kind == "ratio":
        return a / b
    if kind == "distance":
        return a - b
    if kind == "absolute":
        return a
    raise ValueError(f"unknown margin {kind!r}; use ratio, distance or absolute")


def neighbour_means(nb: Neighbours) -> np.ndarray:
    """Mean cosine of each row's valid neighbours, (n,) float32; NaN for a row with none."""
    valid = nb.valid
    total = np.where(valid, nb.sims, 0.0).sum(axis=1, dtype=np.float64)
    count = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).astype(np.float32)


@dataclass
class Best:
    """Each query row's best candidate."""

    other: np.ndarray
    """(n,) int64 index on the other side; -1 when the row had no candidate."""
    score: np.ndarray
    """(n,) float32 margin score (-inf without a candidate)."""
    cosine: np.ndarray
    """(n,) float32 cosine of the pair."""


def best_candidates(nb: Neighbours, mean_self: np.ndarray, mean_other: np.ndarray, kind: MarginKind) -> Best:
    """score(q, c) for every query q and candidate c in its kNN list, and the argmax per row (the
    first of equal scores, i.e. the nearer neighbour, as faiss orders the list)."""
    ids = np.where(nb.valid, nb.ids, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = margin(nb.sims, (mean_self[:, None] + mean_other[ids]) / 2, kind)  # (n, k)
    scores = np.where(nb.valid & ~np.isnan(scores), scores, -np.inf).astype(np.float32)
    j = scores.argmax(axis=1)  # (n,)
    rows = np.arange(len(ids))
    score = scores[rows, j]
    other = np.where(np.isfinite(score), nb.ids[rows, j], -1)
    return Best(other.astype(np.int64), score, nb.sims[rows, j].astype(np.float32))


@dataclass
class Pairs:
    """Mined pairs, best score first."""

    src: np.ndarray
    """(p,) int64 source rows."""
    tgt: np.ndarray
    """(p,) int64 target rows."""
    cosine: np.ndarray
    """(p,) float32."""
    score: np.ndarray
    """(p,) float32 margin scores."""

    def __len__(self) -> int:
        return len(self.src)

    def as_set(self) -> set[tuple[int, int]]:
        return set(zip(self.src.tolist(), self.tgt.tolist(), strict=True))

    def above(self, threshold: float) -> Pairs:
        """The pairs with score >= ``threshold`` (still best first)."""
        keep = self.score >= threshold
        return Pairs(self.src[keep], self.tgt[keep], self.cosine[keep], self.score[keep])


def _sorted(src, tgt, cos, score) -> Pairs:
    order = np.lexsort((tgt, src, -score.astype(np.float64)))  # best score first; ties by position
    return Pairs(src[order].astype(np.int64), tgt[order].astype(np.int64), cos[order].astype(np.float32),
                 score[order].astype(np.float32))


def select_pairs(
    fwd: Neighbours,
    bwd: Neighbours,
    mode: Mode = "max",
    kind: MarginKind = "ratio",
    threshold: float = -np.inf,
    means: tuple[np.ndarray, np.ndarray] | None = None,
) -> Pairs:
    """Mined pairs from the kNN lists of both directions (module docstring).

    ``fwd``: for every source row its nearest targets; ``bwd``: for every target row its nearest sources.
    ``means``: the margin's denominators (mean_x, mean_y) when they come from other lists than the
    candidates' (document mining: candidates within a document pair, neighbours over the whole side).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    mean_x, mean_y = means if means is not None else (neighbour_means(fwd), neighbour_means(bwd))
    f = best_candidates(fwd, mean_x, mean_y, kind)
    b = best_candidates(bwd, mean_y, mean_x, kind)
    xs, ys = np.arange(len(f.other)), np.arange(len(b.other))
    if mode == "forward":
        keep = f.other >= 0
        src, tgt, cos, score = xs[keep], f.other[keep], f.cosine[keep], f.score[keep]
    elif mode == "backward":
        keep = b.other >= 0
        src, tgt, cos, score = b.other[keep], ys[keep], b.cosine[keep], b.score[keep]
    elif mode == "intersection":
        keep = f.other >= 0
        keep[keep] = b.other[f.other[keep]] == xs[keep]
        src, tgt, cos, score = xs[keep], f.other[keep], f.cosine[keep], f.score[keep]
    else:  # max: greedy one-to-one over both lists, best score first
        fk, bk = f.other >= 0, b.other >= 0
        src_all = np.concatenate([xs[fk], b.other[bk]])
        tgt_all = np.concatenate([f.other[fk], ys[bk]])
        cos_all = np.concatenate([f.cosine[fk], b.cosine[bk]])
        score_all = np.concatenate([f.score[fk], b.score[bk]])
        order = np.argsort(-score_all.astype(np.float64), kind="stable")
        used_src = np.zeros(len(xs), dtype=bool)
        used_tgt = np.zeros(len(ys), dtype=bool)
        take = []
        for i in order.tolist():  # O(p): one pass, two lookups per candidate
            s, t = src_all[i], tgt_all[i]
            if not used_src[s] and not used_tgt[t]:
                used_src[s] = used_tgt[t] = True
                take.append(i)
        take_a = np.asarray(take, dtype=np.int64)
        src, tgt, cos, score = src_all[take_a], tgt_all[take_a], cos_all[take_a], score_all[take_a]
    keep = score >= threshold
    return _sorted(src[keep], tgt[keep], cos[keep], score[keep])
