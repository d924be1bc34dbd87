"""A mining run: two monolingual inputs in, scored sentence pairs out.

    inputs  (text file | Parquet | lake dataset | precomputed .npy / `labse embed` Parquet)
      -> embed_to_shards (chunks; duplicates of a sentence embedded once)   shards.py
      -> kNN both directions (flat / IVF / IVF-PQ by size)                  knn.py
      -> margin scores, retrieval mode, threshold                           margin.py
      -> the data pipeline's rules on each pair: normalize, the filters of labse_core.text.filters
         (language ID, copy, length ratio, ...), dedupe by labse_core.prepare.pair_key (the best-scored
         pair of a duplicate group stays, by labse_core.prepare.resolve_duplicates)
      -> rows for the ``mined`` dataset (``MinedRow``), counts of every pair dropped and why

Inputs are streamed: the embedding pass holds one chunk; the pass that collects texts for the output keeps
only the rows that were mined. A run killed while embedding resumes on its rerun: the chunks already
written are not embedded again (shards.py, resume.py). ``mine_embeddings`` is the part that only needs vectors (tests, benchmark).

Run (CPU)::

    labse mine --src news.de.txt --tgt news.en.txt --src-lang de --tgt-lang en --model models:/labse@champion
    labse mine --src de.npy --src-text de.txt --tgt en.npy --tgt-text en.txt --src-lang de --tgt-lang en --model DIR
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from labse_core import langcodes
from labse_core.mining.calibrate import Method as CalibrationMethod
from labse_core.mining.calibrate import ThresholdChoice, calibrate
from labse_core.mining.knn import IndexConfig, IndexKind, MiningInputError, choose_kind, knn
from labse_core.mining.margin import MarginKind, Mode, Pairs, select_pairs
from labse_core.mining.shards import ShardedArray, embed_to_shards
from labse_core.prepare import PrepareRules, pair_key, resolve_duplicates
from labse_core.readers.documents import DocumentSet, read_documents
from labse_core.text import filters as flt
from labse_core.text.normalize import normalize_text
from storage.faults import maybe_die

DEFAULT_THRESHOLDS: dict[str, float] = {"ratio": 1.06, "distance": 0.0, "absolute": 0.0}
"""The fallback threshold, used when no threshold is given and the run's margins show no two
populations to calibrate on (``labse_core.mining.calibrate``): stopes' ratio-margin value (1.04-1.06
with LASER), a positive distance margin, any cosine."""


class MineConfig(BaseModel):
    """Settings of one mining run (the CLI's options)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: int = Field(4, ge=1, description="Neighbours per sentence for the margin (LASER: 4); clamped to the other side's size.")
    mode: Mode = Field("max", description="forward, backward, intersection or max (one-to-one, LASER's BUCC mode).")
    margin: MarginKind = Field("ratio", description="ratio (cos / mean neighbour cos), distance (cos - mean) or absolute (cos).")
    threshold: float | None = Field(None, description="Keep pairs with score >= this; None: calibrated from the run's "
                                    "own margins (`calibration`), DEFAULT_THRESHOLDS[margin] when they show no two populations.")
    calibration: CalibrationMethod | Literal["none"] = Field(
        "otsu", description="How a threshold is chosen when none is given: otsu (the best two-class split of the "
                            "candidates' margins; measured the most robust across domains and models, "
                            "labse_core.mining.calibrate), mixture (two-component Gaussian mixture), valley, or none "
                            "(DEFAULT_THRESHOLDS[margin]).")
    document_calibration: CalibrationMethod | Literal["none"] = Field(
        "none", description="As `calibration`, for two folders mined within their document pairs. none (the fallback, "
                            "1.06 for ratio): there most candidates are translations, and a two-class split of their "
                            "margins cuts the translations in two (measured on man pages: Otsu kept 34% of the "
                            "candidates, ~97% of those it dropped sat at the same place in both pages; docs/data.md).")
    index: IndexKind = Field("auto", description="flat (exact), ivf, ivfpq, or auto (flat up to flat_max rows).")
    flat_max: int = Field(50_000, ge=1, description="auto: largest side searched with the exact flat index.")
    nprobe: int = Field(32, ge=1, description="IVF lists probed per query.")
    nlist: int | None = Field(None, ge=1, description="IVF lists (None: 4*sqrt(n), a power of two).")
    chunk_size: int = Field(50_000, ge=1, description="Sentences embedded at once (bounds memory).")
    shard_dtype: Literal["float16", "float32"] = Field("float32", description="Embeddings spilled to disk as.")
    unique: bool = Field(True, description="Embed and mine each distinct sentence of an input once (its first row).")
    filter: bool = Field(True, description="Apply the data pipeline's filters and dedupe to the mined pairs.")
    rules: PrepareRules = Field(default_factory=PrepareRules, description="Normalization and filter thresholds.")
    pair_docs: str = Field("name", description="Two folders of documents: mine within the document pairs that share "
                           "a name (and canonical URL), `name`; across all documents, `all`; or within the pairs listed "
                           "in a TSV file (source<TAB>target document ids or URLs), its path.")

    def threshold_value(self) -> float:
        """The given threshold, else the fallback; the threshold a run used is ``choose_threshold``'s."""
        return DEFAULT_THRESHOLDS[self.margin] if self.threshold is None else self.threshold

    def index_config(self) -> IndexConfig:
        return IndexConfig(kind=self.index, flat_max=self.flat_max, nprobe=self.nprobe, nlist=self.nlist)


DOCUMENT_FALLBACK_WHY = "document pairs: document_calibration none"
"""Why a run within document pairs used the fallback threshold: by design (``MineConfig.document_calibration``),
not because calibration failed."""


def choose_threshold(scores: np.ndarray, cfg: MineConfig, within_documents: bool = False) -> ThresholdChoice:
    """The threshold of a run whose candidate pairs (every pair of the mode, before any threshold)
    scored ``scores``: ``cfg.threshold`` when given, else calibrated from the scores
    (``labse_core.mining.calibrate``; ``cfg.document_calibration`` for candidates of document pairs),
    falling back to ``DEFAULT_THRESHOLDS[cfg.margin]``."""
    if cfg.threshold is not None:
        return ThresholdChoice(float(cfg.threshold), "given")
    fallback = DEFAULT_THRESHOLDS[cfg.margin]
    method = cfg.document_calibration if within_documents else cfg.calibration
    if method == "none":
        return ThresholdChoice(fallback, "fallback", {"why": DOCUMENT_FALLBACK_WHY if within_documents
                                                      else "calibration none"})
    return calibrate(scores, method, fallback)


def mine_scored(
    x: np.ndarray | ShardedArray, y: np.ndarray | ShardedArray, cfg: MineConfig = MineConfig()
) -> tuple[Pairs, ThresholdChoice]:
    """Margin-mined pairs of source rows ``x`` and target rows ``y`` (any scale; never modified) at the
    run's threshold (``choose_threshold``), and that threshold with how it was chosen."""
    cand = mine_embeddings(x, y, cfg, threshold=-np.inf)
    choice = choose_threshold(cand.score, cfg)
    return cand.above(choice.value), choice


def mine_embeddings(
    x: np.ndarray | ShardedArray, y: np.ndarray | ShardedArray, cfg: MineConfig = MineConfig(), threshold: float | None = None
) -> Pairs:
    """Margin-mined pairs of source rows ``x`` and target rows ``y`` (any scale; never modified) with score
    >= ``threshold`` (None: ``cfg``'s rule, ``choose_threshold``; ``-np.inf``: every candidate)."""
    if len(x) == 0:
        raise MiningInputError("the source side is empty: nothing to mine")
    if len(y) == 0:
        raise MiningInputError("the target side is empty: nothing to mine")
    icfg = cfg.index_config()
    fwd = knn(x, y, cfg.k, icfg)  # (n, k) sources -> targets
    bwd = knn(y, x, cfg.k, icfg)  # (m, k) targets -> sources
    cand = select_pairs(fwd, bwd, cfg.mode, cfg.margin, -np.inf)
    return cand.above(choose_threshold(cand.score, cfg).value if threshold is None else threshold)


# ---------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class MiningInput:
    """One side: where its sentences (and maybe precomputed embeddings) come from."""

    spec: str
    """As the user gave it (file path or ``dataset:column[:lang]``)."""
    kind: Literal["text", "parquet", "dataset", "npy", "docs"]
    path: Path | None = None
    column: str = "text"
    partition: dict[str, str] = field(default_factory=dict)
    text_path: Path | None = None
    """npy: the sentences, one per line (row i of the array = line i)."""
    embeddings: ShardedArray | None = None
    dataset_root: Path | None = None
    documents: DocumentSet | None = None
    """docs: the folder's documents, read once (labse_core.readers.documents)."""

    def texts(self) -> Iterator[str]:
        """Every sentence in input order."""
        if self.documents is not None:
            yield from self.documents.sentences
        elif self.kind == "text" or (self.kind == "npy" and self.text_path is not None):
            yield from read_text_lines(self.path if self.kind == "text" else self.text_path)
        elif self.kind == "parquet":
            pf = pq.ParquetFile(self.path)
            if self.column not in pf.schema_arrow.names:
                raise MiningInputError(f"{self.path}: no column {self.column!r} (columns: {', '.join(pf.schema_arrow.names)})")
            for rb in pf.iter_batches(columns=[self.column], batch_size=65_536):
                yield from _strings(rb.column(0).to_pylist(), self.path)
        elif self.kind == "dataset":
            yield from self._dataset_texts()
        else:
            raise MiningInputError(f"{self.spec}: precomputed embeddings need their sentences (a text file)")

    def _dataset_texts(self) -> Iterator[str]:
        import pyarrow.dataset as ds

        assert self.dataset_root is not None
        data = ds.dataset(str(self.dataset_root), format="parquet", partitioning="hive",
                          exclude_invalid_files=True, ignore_prefixes=[".", "_"])
        if self.column not in data.schema.names:
            raise MiningInputError(f"{self.spec}: dataset has no column {self.column!r}")
        flt_expr = None
        for k, v in self.partition.items():
            e = ds.field(k) == v
            flt_expr = e if flt_expr is None else flt_expr & e
        for rb in data.to_batches(columns=[self.column], filter=flt_expr, use_threads=False):
            yield from _strings(rb.column(0).to_pylist(), self.dataset_root)


def _strings(values: list, origin) -> Iterator[str]:
    for v in values:
        if not isinstance(v, str):
            raise MiningInputError(f"{origin}: a null or non-text value in the sentence column")
        yield v


def read_text_lines(path: str | os.PathLike[str]) -> Iterator[str]:
    """UTF-8 lines, streamed; only "\\n" (with an optional "\\r" before it) ends a line, as in
    ``labse_core.embed.read_lines``. A line that is not UTF-8 is an error naming the file and line."""
    with open(path, "rb") as fh:
        for no, raw in enumerate(fh, start=1):
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MiningInputError(f"{path}:{no}: not UTF-8 ({e.reason} at byte {e.start})") from None


def open_input(spec: str, *, dataset_dirs: dict[str, Path] | None = None, column: str | None = None,
               text_path: str | os.PathLike[str] | None = None, lang: str = "und") -> MiningInput:
    """Resolve ``--src``/``--tgt``: an existing file (``.npy``: precomputed embeddings, its sentences in
    ``text_path`` or ``<stem>.txt``; ``.parquet``: a ``text`` column, with an ``embedding`` column as
    written by ``labse embed`` used as precomputed; anything else: text, one sentence per line), a folder
    of documents in language ``lang`` (``labse_core.readers.documents``: HTML, text, man pages, cut into
    sentences), or ``DATASET:COLUMN[:LANG]`` for a published lake dataset (``corpus_clean:tgt_text:de``)."""
    p = Path(spec)
    if p.is_dir():
        return MiningInput(spec, "docs", path=p, documents=read_documents(p, lang))
    if p.is_file():
        if p.suffix.lower() == ".npy":
            txt = Path(text_path) if text_path else p.with_suffix(".txt")
            if not txt.is_file():
                raise MiningInputError(f"{spec}: precomputed embeddings need their sentences: {txt} does not exist "
                                       "(pass the text file, row i = line i)")
            return MiningInput(spec, "npy", path=p, text_path=txt, embeddings=ShardedArray.of_npy(p))
        if p.suffix.lower() == ".parquet":
            names = pq.ParquetFile(p).schema_arrow.names
            return MiningInput(spec, "parquet", path=p, column=column or "text",
                               embeddings=_parquet_embeddings(p) if "embedding" in names else None)
        return MiningInput(spec, "text", path=p)
    parts = spec.split(":")
    if dataset_dirs is not None and parts[0] in dataset_dirs:
        if len(parts) not in (2, 3):
            raise MiningInputError(f"{spec}: a dataset input is DATASET:COLUMN[:LANG], e.g. corpus_clean:tgt_text:de")
        root = dataset_dirs[parts[0]]
        if not root.is_dir():
            raise MiningInputError(f"{spec}: dataset {parts[0]} is not published in this lake ({root})")
        part = {"lang": parts[2]} if len(parts) == 3 else {}
        return MiningInput(spec, "dataset", column=parts[1], partition=part, dataset_root=root)
    known = f"; datasets: {', '.join(sorted(dataset_dirs))}" if dataset_dirs else ""
    raise MiningInputError(f"{spec}: no such file, and not DATASET:COLUMN[:LANG]{known}")


def _parquet_embeddings(path: Path) -> ShardedArray:
    """The ``embedding`` list column of a ``labse embed`` Parquet file, as a (N, D) array in a sibling .npy."""
    table = pq.read_table(path, columns=["embedding"])
    col = table.column("embedding").combine_chunks()
    d = len(col[0]) if len(col) else 0
    arr = np.asarray(col.flatten(), dtype=np.float32).reshape(len(col), d)
    out = path.with_suffix(".embedding.npy")
    np.save(out, arr)
    return ShardedArray.of_npy(out)


# ---------------------------------------------------------------------------------------------------
# Embedding with duplicates folded


@dataclass
class Embedded:
    vectors: ShardedArray | np.ndarray
    """(u, D): one row per distinct sentence (or per row, with unique=False)."""
    rows: np.ndarray
    """(u,) int64: the input row each vector stands for (its first occurrence)."""
    total: int
    """Rows in the input."""
    chunks: dict[str, int] = field(default_factory=dict)
    """Embedding chunks "embedded" by this run and "reused" from an interrupted earlier one."""


def _digest(s: str) -> bytes:
    return hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=12).digest()


def embed_input(inp: MiningInput, embed: Callable[[list[str]], np.ndarray] | None, work_dir: Path,
                cfg: MineConfig) -> Embedded:
    """Embed one side into ``work_dir``, reusing the chunks an interrupted run already wrote there
    (``labse_core.mining.shards``; precomputed embeddings are used as they are, folded to distinct
    sentences when ``cfg.unique``). Memory: one chunk plus a 12-byte digest per distinct sentence."""
    seen: set[bytes] = set()
    rows: list[int] = []
    total = 0

    def distinct() -> Iterator[str]:
        nonlocal total
        for i, s in enumerate(inp.texts()):
            total = i + 1
            if cfg.unique:
                h = _digest(s)
                if h in seen:
                    continue
                seen.add(h)
            rows.append(i)
            yield s

    if inp.embeddings is not None:
        for _ in distinct():
            pass
        if total != len(inp.embeddings):
            raise MiningInputError(f"{inp.spec}: {len(inp.embeddings)} embeddings but {total} sentences")
        idx = np.asarray(rows, dtype=np.int64)
        vectors = inp.embeddings if len(idx) == total else inp.embeddings[idx]
        return Embedded(vectors, idx, total)
    if embed is None:
        raise MiningInputError(f"{inp.spec}: sentences need a model to embed them (--model)")
    counts: dict[str, int] = {}
    shards = embed_to_shards(distinct(), embed, work_dir, cfg.chunk_size, cfg.shard_dtype, counts)
    return Embedded(shards, np.asarray(rows, dtype=np.int64), total, counts)


def collect_texts(inp: MiningInput, wanted: np.ndarray) -> dict[int, str]:
    """The sentences at the input rows ``wanted`` (a second streaming pass)."""
    need = set(wanted.tolist())
    out: dict[int, str] = {}
    for i, s in enumerate(inp.texts()):
        if i in need:
            out[i] = s
            if len(out) == len(need):
                break
    return out


# ---------------------------------------------------------------------------------------------------
# The rules of the data pipeline on mined pairs


@dataclass
class MinedRow:
    src_index: int
    tgt_index: int
    src_text: str
    tgt_text: str
    cosine: float
    margin: float
    pair_key: str
    src_doc: str | None = None
    """Documents on the source side: the sentence's document id and its place in it."""
    src_pos: int | None = None
    tgt_doc: str | None = None
    tgt_pos: int | None = None


def apply_rules(
    pairs: Pairs, src_rows: np.ndarray, tgt_rows: np.ndarray, src_texts: dict[int, str], tgt_texts: dict[int, str],
    src_lang: str, tgt_lang: str, rules: PrepareRules, apply_filters: bool = True,
) -> tuple[list[MinedRow], Counter]:
    """Normalize both sides, run the pair filters (``check_pairs``: empty, length, copy, script,
    language ID, ...) and drop duplicate pairs (same ``pair_key``; the best-scored one stays). ``pairs``
    index the vectors; ``src_rows``/``tgt_rows`` map them to input rows. Returns the kept rows (best
    score first) and the count of dropped pairs per reason."""
    dropped: Counter = Counter()
    si, ti = src_rows[pairs.src], tgt_rows[pairs.tgt]
    src = [normalize_text(src_texts[i], rules.normalize) for i in si.tolist()]
    tgt = [normalize_text(tgt_texts[i], rules.normalize) for i in ti.tolist()]
    if apply_filters:
        reasons = flt.check_pairs(src, tgt, [src_lang] * len(src), [tgt_lang] * len(tgt), rules.filters)
    else:
        reasons = [None] * len(src)
    lang = f"{src_lang}-{tgt_lang}"  # the pair's key carries both languages (prepare keys by one)
    groups: dict[str, list[dict]] = {}
    key_of: dict[int, str] = {}
    for rank, (reason, s, t) in enumerate(zip(reasons, src, tgt, strict=True)):
        if reason is not None:
            dropped[reason] += 1
            continue
        row = {"pair_key": pair_key(lang, s, t), "source": "mined", "origin": "", "line": rank, "rank": rank}
        key_of[rank] = row["pair_key"]
        groups.setdefault(row["pair_key"], []).append(row)
    keep_ranks = []
    for rows in groups.values():
        if not apply_filters or len(rows) == 1:
            keep_ranks += [r["rank"] for r in rows]
            continue
        winner, rejects = resolve_duplicates(rows)  # order_key: line = rank, so the best score wins
        keep_ranks.append(winner["rank"])
        dropped["duplicate"] += len(rejects)
    out = []
    for rank in sorted(keep_ranks):
        out.append(MinedRow(int(si[rank]), int(ti[rank]), src[rank], tgt[rank], float(pairs.cosine[rank]),
                            float(pairs.score[rank]), key_of[rank]))
    return out, dropped


@dataclass
class MineResult:
    rows: list[MinedRow]
    pairs: Pairs
    """Before the rules (vector indices)."""
    dropped: Counter
    src_total: int
    tgt_total: int
    src_distinct: int
    tgt_distinct: int
    index_kind: str
    chunks: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per side ("src", "tgt"): embedding chunks embedded by this run and reused from an interrupted one."""
    threshold: ThresholdChoice | None = None
    """The threshold the pairs were cut at and how it was chosen (``choose_threshold``)."""
    candidates: Pairs | None = None
    """Every candidate before the threshold (row indices of the inputs when ``documents`` is set, else vector
    indices as ``pairs``): what ``labse nmt-check`` trains its unfiltered arm on."""
    documents: dict = field(default_factory=dict)
    """Document inputs: documents read and rejected per side, document pairs mined within."""
    inputs: tuple[MiningInput, MiningInput] | None = None
    """The two sides as mined (folders of documents cut to the documents in a pair): ``candidates``' rows."""


def mine_inputs(
    src: MiningInput, tgt: MiningInput, src_lang: str, tgt_lang: str,
    embed: Callable[[list[str]], np.ndarray] | None, work_dir: str | os.PathLike[str], cfg: MineConfig = MineConfig(),
) -> MineResult:
    """Embed both inputs, mine, and apply the rules (module docstring). Two folders of documents are mined
    within their document pairs unless ``cfg.pair_docs`` is ``all`` (``labse_core.mining.documents``)."""
    src_lang, tgt_lang = langcodes.normalize(src_lang), langcodes.normalize(tgt_lang)
    work = Path(work_dir)
    doc_pairs = document_pairs(src, tgt, cfg)
    xs = embed_input(src, embed, work / "src", cfg)
    if xs.total == 0:
        raise MiningInputError(f"{src.spec}: the source input has no sentences")
    ys = embed_input(tgt, embed, work / "tgt", cfg)
    if ys.total == 0:
        raise MiningInputError(f"{tgt.spec}: the target input has no sentences")
    docs = {side: {"documents": len(inp.documents.doc_ids), "rejected": dict(inp.documents.rejects),
                   "examples": inp.documents.examples}
            for side, inp in (("src", src), ("tgt", tgt)) if inp.documents is not None}
    if doc_pairs is not None:
        cand = _mine_within_documents(src, tgt, xs, ys, doc_pairs, cfg)
        docs["document_pairs"] = len(doc_pairs)
        src_rows, tgt_rows = np.arange(xs.total), np.arange(ys.total)  # pairs index rows here
    else:
        cand = mine_embeddings(xs.vectors, ys.vectors, cfg, threshold=-np.inf)
        src_rows, tgt_rows = xs.rows, ys.rows
    choice = choose_threshold(cand.score, cfg, within_documents=doc_pairs is not None)
    pairs = cand.above(choice.value)
    maybe_die("mine.scored")
    src_texts = collect_texts(src, src_rows[pairs.src])
    tgt_texts = collect_texts(tgt, tgt_rows[pairs.tgt])
    rows, dropped = apply_rules(pairs, src_rows, tgt_rows, src_texts, tgt_texts, src_lang, tgt_lang, cfg.rules, cfg.filter)
    if not rows:
        raise MiningInputError(f"{src.spec} x {tgt.spec}: no {src_lang}-{tgt_lang} pair scored above the threshold "
                               f"{choice.value:.4f} and passed the filters ({len(cand):,} candidates, {len(pairs):,} above "
                               f"the threshold, dropped: {dict(dropped) or 'none'}): nothing published")
    for r in rows:
        if src.documents is not None:
            r.src_doc, r.src_pos = src.documents.doc_ids[src.documents.doc_of[r.src_index]], int(src.documents.position[r.src_index])
        if tgt.documents is not None:
            r.tgt_doc, r.tgt_pos = tgt.documents.doc_ids[tgt.documents.doc_of[r.tgt_index]], int(tgt.documents.position[r.tgt_index])
    return MineResult(rows, pairs, dropped, xs.total, ys.total, len(xs.rows), len(ys.rows),
                      choose_kind(max(len(xs.rows), len(ys.rows)), cfg.index_config()),
                      {"src": xs.chunks, "tgt": ys.chunks}, choice, cand, docs, (src, tgt))


def _vector_of_row(inp: MiningInput, emb: Embedded) -> np.ndarray:
    """(rows,) the vector standing for each input row (``embed_input`` folds repeated sentences)."""
    if len(emb.rows) == emb.total:
        return np.arange(emb.total)
    first: dict[bytes, int] = {}
    out = np.empty(emb.total, dtype=np.int64)
    for i, s in enumerate(inp.texts()):
        out[i] = first.setdefault(_digest(s), len(first))
    return out


def document_pairs(src: MiningInput, tgt: MiningInput, cfg: MineConfig) -> list[tuple[int, int]] | None:
    """Two folders mined within document pairs: the pairs (``cfg.pair_docs``), after both sides were cut to
    the documents in a pair (nothing else is embedded); None when the run mines across everything. Calling
    it again gives the same pairs (a caller checks them before loading a model)."""
    from labse_core.readers.documents import pair_by_name, pair_from_file

    if src.documents is None or tgt.documents is None or cfg.pair_docs == "all":
        return None
    doc_pairs = (pair_by_name(src.documents, tgt.documents) if cfg.pair_docs == "name"
                 else pair_from_file(src.documents, tgt.documents, cfg.pair_docs))
    if not doc_pairs:
        raise MiningInputError(f"{src.spec} x {tgt.spec}: no document pairs to mine within (no document name or URL "
                               "in both folders): list the pairs in a TSV file, or mine across all documents")
    a_docs, b_docs = sorted({a for a, _ in doc_pairs}), sorted({b for _, b in doc_pairs})
    a_new, b_new = {d: i for i, d in enumerate(a_docs)}, {d: i for i, d in enumerate(b_docs)}
    unpaired = {"src": len(src.documents.doc_ids) - len(a_docs), "tgt": len(tgt.documents.doc_ids) - len(b_docs)}
    src.documents, tgt.documents = src.documents.subset(a_docs), tgt.documents.subset(b_docs)
    for side, inp in (("src", src), ("tgt", tgt)):
        if unpaired[side]:
            inp.documents.rejects["unpaired"] += unpaired[side]
    return [(a_new[a], b_new[b]) for a, b in doc_pairs]


def _mine_within_documents(src: MiningInput, tgt: MiningInput, xs: Embedded, ys: Embedded,
                           doc_pairs: list[tuple[int, int]], cfg: MineConfig) -> Pairs:
    """Every candidate of the two folders' document pairs (row indices)."""
    from labse_core.mining import documents as dm

    assert src.documents is not None and tgt.documents is not None
    xv = dm.unit_rows(np.asarray(xs.vectors[np.arange(len(xs.vectors))]))
    yv = dm.unit_rows(np.asarray(ys.vectors[np.arange(len(ys.vectors))]))
    mean_x, mean_y = dm.global_means(xv, yv, cfg.k, cfg.index_config())
    vx, vy = _vector_of_row(src, xs), _vector_of_row(tgt, ys)
    cand = dm.mine_document_pairs(xv[vx], yv[vy], [src.documents.rows_of(a) for a, _ in doc_pairs],
                                  [tgt.documents.rows_of(b) for _, b in doc_pairs], mean_x[vx], mean_y[vy],
                                  cfg.k, cfg.mode, cfg.margin)
    return cand
