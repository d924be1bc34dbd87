"""Mining within known document pairs: candidates come only from a document and its counterpart (the
same man page in two languages, the same URL), the margin's denominators from the whole side.

Why the denominators stay global: a ratio margin divides a pair's cosine by the mean cosine of each
sentence's k nearest neighbours. Within one short document those neighbours are few and often unrelated
(a 12-sentence page), so a local mean would put every document's pairs on a different scale and one
threshold (calibrated over the run, ``labse_core.mining.calibrate``) would no longer fit them all. Taking
the neighbours over the whole other side keeps the scale of ``labse mine`` across all documents; only the
candidate lists (a sentence's k nearest *within the paired document*) and the retrieval mode's
one-to-one rule (``max``) are per document pair. This is how document-level mining is usually run at
scale (candidates from aligned documents, scores from the global index).

Rows here are sentence rows of the two ``DocumentSet``s (a sentence that occurs in two documents is two
rows), so every mined pair names its documents and positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labse_core.mining.knn import IndexConfig, Neighbours, knn
from labse_core.mining.margin import MarginKind, Mode, Pairs, neighbour_means, select_pairs


def unit_rows(a: np.ndarray) -> np.ndarray:
    """float32 unit rows (a new array); a zero row stays zero."""
    out = np.array(a, dtype=np.float32, copy=True)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def global_means(x: np.ndarray, y: np.ndarray, k: int, icfg: IndexConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each source's and each target's mean cosine to its k nearest rows of the other side (the margin's
    denominators, ``labse_core.mining.margin``)."""
    return neighbour_means(knn(x, y, k, icfg)), neighbour_means(knn(y, x, k, icfg))


def _local(sims: np.ndarray, k: int) -> Neighbours:
    """The ``min(k, columns)`` most similar columns of every row of a dense similarity block."""
    k = min(k, sims.shape[1])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.tile(np.arange(sims.shape[1]), (len(sims), 1))
    top = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return Neighbours(np.take_along_axis(top, order, axis=1).astype(np.float32),
                      np.take_along_axis(part, order, axis=1).astype(np.int64), "flat")


def mine_document_pairs(
    x: np.ndarray, y: np.ndarray, src_rows: Sequence[np.ndarray], tgt_rows: Sequence[np.ndarray],
    mean_x: np.ndarray, mean_y: np.ndarray, k: int = 4, mode: Mode = "max", kind: MarginKind = "ratio",
) -> Pairs:
    """Every candidate pair (no threshold) of every document pair, best score first.

    ``x``/``y``: unit sentence vectors of the two sides (one per row); ``src_rows[i]``/``tgt_rows[i]``: the
    rows of document pair i; ``mean_x``/``mean_y``: the global margin denominators (``global_means``). A
    row pair found in two document pairs (a page paired by name and by URL) is kept once, with its score.
    """
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for ra, rb in zip(src_rows, tgt_rows, strict=True):
        if len(ra) == 0 or len(rb) == 0:
            continue
        sims = x[ra] @ y[rb].T
        fwd, bwd = _local(sims, k), _local(sims.T, k)
        p = select_pairs(fwd, bwd, mode, kind, -np.inf, means=(mean_x[ra], mean_y[rb]))
        parts.append((ra[p.src], rb[p.tgt], p.cosine, p.score))
    if not parts:
        return Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32))
    src, tgt, cos, score = (np.concatenate(c) for c in zip(*parts, strict=True))
    order = np.lexsort((tgt, src, -score.astype(np.float64)))
    src, tgt, cos, score = src[order], tgt[order], cos[order], score[order]
    _, first = np.unique(src.astype(np.int64) * (int(tgt.max()) + 1) + tgt, return_index=True)
    keep = np.sort(first)  # the best-scored copy of each row pair, in score order
    return Pairs(src[keep].astype(np.int64), tgt[keep].astype(np.int64), cos[keep].astype(np.float32),
                 score[keep].astype(np.float32))
