"""BUCC-style mining F1 and xSIM, on sets built from held-out real pairs hidden among distractors.

**The task** (Zweigenbaum et al. 2017, as LaBSE Table 4 and LASER use it): two monolingual sets, X in
language xx and Y in English; a gold set G of (x, y) translations is hidden among sentences that have
no translation on the other side. A miner returns scored candidate pairs (here: the margin miner of
``labse_core.mining`` in ``max`` mode, LASER's BUCC setting); pairs scoring >= t are its answer::

    P = |answer ∩ G| / |answer|     R = |answer ∩ G| / |G|     F1 = 2PR / (P + R)

t is chosen where F1 is best on a **dev** split and applied unchanged to a disjoint **test** split
(LASER's ``bucc.py``: optimise on the training gold, apply to test).

**The sets** (``build_sets``), from pairs the model was never trained on: the fine-tuning held-out
split of the clean corpus (``labse_core.data.held_out.is_held_out``). The pairs are made one-to-one
(each English text and each xx text in one pair), ordered by a hash, and cut into four disjoint pieces:
gold pairs for dev and test, and two pools of distractor pairs of which only the xx side (X distractors)
or only the English side (Y distractors) is used, so no distractor has its translation in the set.

**xSIM** (LASER's ``xsim.py``): on the aligned gold pairs alone, every source retrieves the target
with the best margin score among its k nearest (ratio margin, k = 4); the error rate is the share of
sources whose pick is not their own translation. Reported in both directions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from labse_core.mining.knn import IndexConfig, knn
from labse_core.mining.margin import Pairs, select_pairs
from labse_core.mining.miner import MineConfig, MinedRow, mine_embeddings

EVAL_SET = "bucc-gettext"

Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class BuccSplit:
    """One split: X (xx sentences), Y (English), and the gold alignment (row in X, row in Y)."""

    src: tuple[str, ...]
    tgt: tuple[str, ...]
    gold: frozenset[tuple[int, int]]


def _order_key(pair: tuple[str, str], seed: int) -> bytes:
    return hashlib.blake2b(f"{seed}\x00{pair[0]}\t{pair[1]}".encode(), digest_size=8).digest()


def one_to_one(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Keep a pair only if neither its source nor its target text was seen in an earlier pair."""
    seen_s: set[str] = set()
    seen_t: set[str] = set()
    out = []
    for s, t in pairs:
        if s in seen_s or t in seen_t:
            continue
        seen_s.add(s)
        seen_t.add(t)
        out.append((s, t))
    return out


def build_sets(
    pairs: Sequence[tuple[str, str]], gold_per_split: int, distractors_per_split: int, seed: int = 0
) -> dict[str, BuccSplit]:
    """``{"dev": ..., "test": ...}`` from held-out (xx text, English text) pairs (module docstring).
    Raises ``ValueError`` when the pairs cannot fill both splits."""
    pool = sorted(one_to_one(pairs), key=lambda p: _order_key(p, seed))
    need = 2 * gold_per_split + 4 * distractors_per_split
    if gold_per_split < 1 or len(pool) < need:
        raise ValueError(f"a BUCC-style set needs {need} one-to-one held-out pairs "
                         f"({gold_per_split} gold and 2 x {distractors_per_split} distractors per split), got {len(pool)}")
    out = {}
    g, d = gold_per_split, distractors_per_split
    for k, split in enumerate(("dev", "test")):
        gold = pool[k * g : (k + 1) * g]
        rest = pool[2 * g + k * 2 * d : 2 * g + (k + 1) * 2 * d]
        src_items = [(s, i) for i, (s, _) in enumerate(gold)] + [(s, -1) for s, _ in rest[:d]]
        tgt_items = [(t, i) for i, (_, t) in enumerate(gold)] + [(t, -1) for _, t in rest[d:]]
        # Shuffle each side by a hash of its text: the gold is not at the top of the lists.
        src_items.sort(key=lambda it: _order_key((it[0], "x"), seed))
        tgt_items.sort(key=lambda it: _order_key((it[0], "y"), seed))
        src_row = {gi: r for r, (_, gi) in enumerate(src_items) if gi >= 0}
        tgt_row = {gi: r for r, (_, gi) in enumerate(tgt_items) if gi >= 0}
        out[split] = BuccSplit(tuple(s for s, _ in src_items), tuple(t for t, _ in tgt_items),
                               frozenset((src_row[i], tgt_row[i]) for i in range(len(gold))))
    return out


@dataclass(frozen=True)
class Prf:
    threshold: float
    precision: float
    recall: float
    f1: float
    found: int
    """Pairs at or above the threshold."""
    correct: int


def prf(pairs: Pairs, gold: frozenset[tuple[int, int]], threshold: float) -> Prf:
    """Precision/recall/F1 of the pairs scoring >= ``threshold``."""
    keep = pairs.score >= threshold
    found = int(keep.sum())
    correct = sum((s, t) in gold for s, t in zip(pairs.src[keep].tolist(), pairs.tgt[keep].tolist(), strict=True))
    p = correct / found if found else 0.0
    r = correct / len(gold) if gold else 0.0
    return Prf(float(threshold), p, r, 2 * p * r / (p + r) if p + r else 0.0, found, correct)


def mined_prf(rows: Sequence[MinedRow], gold: frozenset[tuple[int, int]], threshold: float) -> Prf:
    """``prf`` of a mining run's answer: the rows ``labse mine`` kept (after its filters and dedupe; row
    indices of the two inputs), scored by their margin, against the gold at the run's ``threshold``."""
    pairs = Pairs(np.array([r.src_index for r in rows], dtype=np.int64), np.array([r.tgt_index for r in rows], dtype=np.int64),
                  np.array([r.cosine for r in rows], dtype=np.float32), np.array([r.margin for r in rows], dtype=np.float32))
    return prf(pairs, gold, threshold)


def best_threshold(pairs: Pairs, gold: frozenset[tuple[int, int]]) -> Prf:
    """The threshold (one of the candidates' scores) with the best F1 for "score >= t"; on equal F1 the
    higher threshold (fewer pairs). Candidates with equal scores are kept or dropped together."""
    if len(pairs) == 0:
        return Prf(float("inf"), 0.0, 0.0, 0.0, 0, 0)
    order = np.argsort(-pairs.score.astype(np.float64), kind="stable")
    scores = pairs.score[order]
    hit = np.fromiter(((s, t) in gold for s, t in zip(pairs.src[order].tolist(), pairs.tgt[order].tolist(), strict=True)),
                      dtype=np.int64, count=len(order))
    correct = np.cumsum(hit)
    n = np.arange(1, len(order) + 1)
    last_of_tie = np.append(scores[1:] < scores[:-1], True)  # a cut only where the score changes
    p = correct / n
    r = correct / max(len(gold), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    f1 = np.where(last_of_tie, f1, -1.0)
    i = int(np.argmax(f1))  # first (highest threshold) of the best
    return Prf(float(scores[i]), float(p[i]), float(r[i]), float(f1[i]), int(n[i]), int(correct[i]))


def xsim_error(x: np.ndarray, y: np.ndarray, k: int = 4, margin: str = "ratio") -> float:
    """LASER's xSIM: share of rows i of ``x`` whose best-margin candidate in ``y`` is not row i."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"xSIM needs two aligned, non-empty sides, got {len(x)} and {len(y)} rows")
    cfg = IndexConfig(kind="flat")
    fwd, bwd = knn(x, y, k, cfg), knn(y, x, k, cfg)
    pairs = select_pairs(fwd, bwd, mode="forward", kind=margin)
    right = int((pairs.tgt == pairs.src).sum())
    return 1.0 - right / len(x)


@dataclass
class BuccLanguageResult:
    lang: str
    dev: Prf
    test: Prf
    """The test split at the dev split's best threshold."""
    test_oracle: Prf
    """The test split at its own best threshold (an upper bound; not the reported number)."""
    xsim_xx_en: float
    xsim_en_xx: float
    sizes: dict[str, int]


def evaluate_language(lang: str, sets: dict[str, BuccSplit], embed: Embed, cfg: MineConfig | None = None) -> BuccLanguageResult:
    """Mine both splits with ``cfg`` (default: max mode, ratio margin, k = 4, exact index), tune the
    threshold on dev, apply it to test; xSIM on the test split's gold pairs."""
    cfg = cfg or MineConfig(mode="max", index="flat")
    mined = {}
    vec = {}
    for split, s in sets.items():
        x, y = embed(list(s.src)), embed(list(s.tgt))
        vec[split] = (x, y)
        mined[split] = mine_embeddings(x, y, cfg, threshold=-np.inf)
    dev = best_threshold(mined["dev"], sets["dev"].gold)
    test = prf(mined["test"], sets["test"].gold, dev.threshold)
    oracle = best_threshold(mined["test"], sets["test"].gold)
    t = sets["test"]
    gold = sorted(t.gold)
    x, y = vec["test"]
    gx, gy = x[[i for i, _ in gold]], y[[j for _, j in gold]]
    sizes = {f"{split}_{side}": len(getattr(s, side)) for split, s in sets.items() for side in ("src", "tgt")}
    sizes |= {f"{split}_gold": len(s.gold) for split, s in sets.items()}
    return BuccLanguageResult(lang, dev, test, oracle, xsim_error(gx, gy, cfg.k, cfg.margin),
                              xsim_error(gy, gx, cfg.k, cfg.margin), sizes)


def result_rows(results: Sequence[BuccLanguageResult]) -> list[dict]:
    """``eval_results`` rows: per language P/R/F1/threshold on dev and test, xSIM both ways; and the
    mean over languages (scope group, language 'evaluated')."""
    rows = []
    for r in results:
        for split, m in (("dev", r.dev), ("test", r.test)):
            n = r.sizes[f"{split}_gold"]
            for metric in ("precision", "recall", "f1", "threshold"):
                rows.append({"split": split, "scope": "language", "language": r.lang, "direction": "both",
                             "metric": metric, "value": getattr(m, metric), "n": n})
        for d, v in (("xx->en", r.xsim_xx_en), ("en->xx", r.xsim_en_xx)):
            rows.append({"split": "test", "scope": "language", "language": r.lang, "direction": d,
                         "metric": "xsim_error", "value": v, "n": r.sizes["test_gold"]})
    if results:
        for metric, get in (("f1", lambda r: r.test.f1), ("precision", lambda r: r.test.precision),
                            ("recall", lambda r: r.test.recall),
                            ("xsim_error", lambda r: (r.xsim_xx_en + r.xsim_en_xx) / 2)):
            rows.append({"split": "test", "scope": "group", "language": "evaluated", "direction": "both",
                         "metric": metric, "value": float(np.mean([get(r) for r in results])), "n": len(results)})
    return rows


def held_out_pairs(clean_dir, lang: str, fraction: float) -> list[tuple[str, str]]:
    """(xx text, English text) of the clean corpus's ``lang=xx`` partition that the fine-tuning held-out
    split keeps out of training (``is_held_out`` on the stored (src, tgt) texts, the same coin the
    trainer tosses), in file order."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from labse_core.data.held_out import is_held_out

    part = Path(clean_dir) / f"lang={lang}"
    if not part.is_dir():
        raise ValueError(f"the clean corpus has no language {lang!r} ({part} does not exist)")
    out = []
    for f in sorted(part.glob("*.parquet")):
        for rb in pq.ParquetFile(f).iter_batches(columns=["src_text", "tgt_text"], batch_size=65_536):
            d = rb.to_pydict()
            out += [(t, s) for s, t in zip(d["src_text"], d["tgt_text"], strict=True) if is_held_out(s, t, fraction)]
    return out
